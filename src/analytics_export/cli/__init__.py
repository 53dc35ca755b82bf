"""The `analytics-export` command: ingest, demo data, and exports with a live progress bar."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from ..checks import describe_errors
from ..errors import ExportError, Invalid
from . import destinations, exports, server
from .alerts import app as alerts_app
from .common import err, fail
from .keys import keys_app
from .privacy import privacy_app, retention_app
from .schedules import app as schedules_app
from .streams import app as streams_app


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
for command in (exports.export, exports.ingest, exports.demo, server.worker, server.serve):
    app.command()(command)
app.add_typer(keys_app, name="keys")
app.add_typer(schedules_app, name="schedules")
app.add_typer(privacy_app, name="privacy")
app.add_typer(retention_app, name="retention")
app.add_typer(streams_app, name="streams")
app.add_typer(destinations.app, name="destinations")
app.add_typer(alerts_app, name="alerts")


@app.callback()
def main(
    ctx: typer.Context,
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data dir [env ANALYTICS_EXPORT_DATA_DIR; default ./.analytics-export]"),
    project: Optional[str] = typer.Option(None, "--project", help="Project (tenant) [env ANALYTICS_EXPORT_PROJECT; default 'default']"),
) -> None:
    """Export product-analytics events to JSON, JSON Lines, CSV, Parquet or Avro, compressed or not."""
    from ..config import Settings  # here: pydantic-settings is a fifth of a second `--help` does without

    overrides = {k: v for k, v in {"data_dir": data_dir, "project": project}.items() if v is not None}
    try:
        ctx.obj = Settings(**overrides)
    except ValidationError as exc:  # --project, or a setting from the environment
        fail(describe_errors(exc.errors()))
    if ctx.obj.data_dir.exists() and not ctx.obj.data_dir.is_dir():
        fail(f"the data dir {ctx.obj.data_dir} is a file, not a folder: give --data-dir (or "
             "ANALYTICS_EXPORT_DATA_DIR) a folder", 1)


def run() -> None:
    """The command: `app`, with every failure it can expect as a one-line reason on stderr, exit 2
    for bad input and 1 for the environment (a store, a disk, a file system); only a bug leaves a
    traceback."""
    try:
        app()
    except Invalid as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (ExportError, OSError) as exc:
        where = f"{exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        err.print(f"[red]error:[/red] {where}{reason}", highlight=False, soft_wrap=True)
        sys.exit(1)
