"""What every command shares: one-line errors with exit codes, and the migrated job store."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterator

import typer

from ..errors import ExportError, Invalid, Storage

if TYPE_CHECKING:
    from rich.console import Console

    from ..config import Settings
    from ..store.jobs import JobStore


class Stderr:
    """rich's Console on stderr, made when first used: rich takes 20 ms to load, and a command off a
    terminal that succeeds (an export into a pipe, a script) prints nothing through it."""

    FORCING = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
    """What makes rich take a stream for a terminal when it is not one."""

    @cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(stderr=True)

    @property
    def is_terminal(self) -> bool:
        if not sys.stderr.isatty() and not any(os.environ.get(name) for name in self.FORCING):
            return False
        return self.console.is_terminal

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


err = Stderr()


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Our errors as a one-line reason: exit 2 for bad input, 1 for a store or disk failure."""
    try:
        yield
    except Invalid as exc:
        fail(str(exc))
    except ExportError as exc:
        fail(str(exc), 1)


def job_store(settings: Settings) -> JobStore:
    """The migrated job store; Storage, saying which and why, when it cannot be opened (a corrupt
    jobs.sqlite, a database that cannot be reached)."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..store.jobs import JobStore  # the service's imports stay out of `export` and `ingest`

    where = ("the job store at ANALYTICS_EXPORT_DATABASE_URL" if settings.database_url
             else f"the job store {settings.data_dir / 'jobs.sqlite'}")
    try:
        jobs = JobStore.for_data_dir(settings.data_dir, settings.database_url)
        jobs.migrate()
    except SQLAlchemyError as exc:  # the URL stays out: it may hold a password
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise Storage(f"cannot open {where}: {reason} (a damaged file: move it aside, or restore a backup)"
                      if not settings.database_url and "not a database" in reason
                      else f"cannot open {where}: {reason}") from exc
    except OSError as exc:
        raise Storage(f"cannot open {where}: {exc.strerror}") from exc
    return jobs
