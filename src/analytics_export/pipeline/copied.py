"""An export file that the store's engine writes itself (DuckDB's `COPY ... TO`), when no Python stage
has to touch the rows: the engine writes into a pipe, and its bytes go on through the same chain as the
batch path's (codec, counting and hashing, upload), so naming, atomic delivery, progress, cancel and
manifests stay as they are. Measured at 5M events: see bench/export_bench.py."""

from __future__ import annotations

import fcntl
import os
import select
import sys
import threading
from typing import Callable, Iterator, Protocol

from ..errors import Cancelled, Format
from ..formats import Copied, writer_for
from ..models import ExportRequest
from ..privacy.policy import Privacy
from ..sources import EventQuery, EventSource

PIPE_BYTES = 1 << 20
"""The pipe's buffer: the engine's writes of a row group or a CSV chunk pass in a few reads."""
POLL_SECONDS = 0.2
"""How often the reader looks at `should_stop` while the engine is busy and has written nothing."""


class CopyingSource(Protocol):
    """A store whose engine can write an export itself (`sources.duckdb.DuckDBEventStore`)."""

    finite: bool

    def copy(self, query: EventQuery, select: str, options: str, path: str) -> int: ...

    def progress(self) -> float | None: ...

    def interrupt(self) -> None: ...


def copied_plan(request: ExportRequest, source: EventSource, query: EventQuery,
                privacy: Privacy | None) -> Copied | None:
    """How the engine writes `request`'s file, or None when the batch path must: the store cannot copy
    (another engine, or NaN left to scrub in Python), privacy scans values in Python (detectors,
    patterns), or the writer has no engine form (Avro, CSV)."""
    if not sys.platform.startswith("linux") or not getattr(source, "finite", False) or not hasattr(source, "copy"):
        return None
    if privacy is not None and privacy.scans:
        return None
    return writer_for(request).copied(query.names, request.compression)


class EngineCopy:
    """The bytes of the engine's COPY of `query` as `plan` says (`plan.opening` first, `plan.trim` cut
    off the end), read from a pipe while the COPY runs in a thread. Iterating yields them, and an empty
    chunk each time the engine has been quiet for POLL_SECONDS; `rows` is set at the end. Cancelled once
    `should_stop()` says so; a failure on either side stops the other before it is raised."""

    def __init__(self, source: CopyingSource, query: EventQuery, plan: Copied,
                 should_stop: Callable[[], bool] | None, export_id: str) -> None:
        self.source, self.query, self.plan = source, query, plan
        self.should_stop = should_stop or (lambda: False)
        self.export_id = export_id
        self.rows = 0

    def fraction(self) -> float | None:
        """How far the engine is through its scan, 0 to 1 (None when it cannot tell)."""
        return self.source.progress()

    def __iter__(self) -> Iterator[bytes]:
        read, write = os.pipe()
        fcntl.fcntl(read, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        outcome: list = []

        def run() -> None:
            try:
                outcome.append(self.source.copy(self.query, self.plan.select, self.plan.options,
                                                f"/proc/self/fd/{write}"))
            except BaseException as exc:  # raised by the reader once the pipe has ended
                outcome.append(exc)
            finally:
                os.close(write)

        thread = threading.Thread(target=run, name="export-copy", daemon=True)
        thread.start()
        ready = select.poll()  # not select(): a process holding over 1024 files gets descriptors it cannot take
        ready.register(read, select.POLLIN)
        held, started, stopped, trim = b"", False, False, len(self.plan.trim)
        try:
            while True:
                if self.should_stop():
                    stopped = True
                    self.source.interrupt()
                    break
                if not ready.poll(POLL_SECONDS * 1000):
                    yield b""
                    continue
                chunk = os.read(read, PIPE_BYTES)
                if not chunk:
                    break
                if not started and self.plan.opening:
                    yield self.plan.opening
                started = True
                if trim:
                    chunk, held = (held + chunk)[:-trim], (held + chunk)[-trim:]
                yield chunk
        except BaseException:
            self.source.interrupt()
            raise
        finally:
            os.close(read)  # the engine's next write fails, and it stops
            thread.join()
        if stopped:
            raise Cancelled(f"export {self.export_id} was cancelled")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        self.rows = outcome[0]
        if held != (self.plan.trim if self.rows else b""):
            raise Format(f"the event store's {self.rows:,} rows ended in {held!r}, not in {self.plan.trim!r}")
