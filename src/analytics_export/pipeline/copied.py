"""An export file that the store's engine writes itself, when no Python stage has to touch the rows:
DuckDB's `COPY ... TO` into a pipe (Parquet), or the engine's lines of text as Arrow buffers (JSON,
JSON Lines). Its bytes go on through the same chain as the batch path's (codec, counting and hashing,
upload), so naming, atomic delivery, progress, cancel and manifests stay as they are. Measured at 5M
events: see bench/export_bench.py."""

from __future__ import annotations

import fcntl
import os
import select
import sys
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from ..errors import Cancelled, Format
from ..formats import Copied, string_bytes, writer_for
from ..models import ExportRequest
from ..privacy.policy import Privacy
from ..sources import EventQuery, EventSource
from .batches import read_ahead

if TYPE_CHECKING:
    import pyarrow as pa

LINE_ROWS = 8_192
"""Rows of each Arrow batch of lines (3 MB of demo JSON): 16,384 measured no faster and 45 MB larger."""
PIPE_BYTES = 1 << 20
"""The pipe's buffer: the engine's writes of a row group or a CSV chunk pass in a few reads."""
POLL_SECONDS = 0.2
"""How often the reader looks at `should_stop` while the engine is busy and has written nothing."""


class CopyingSource(Protocol):
    """A store whose engine can write an export itself (`sources.duckdb.DuckDBEventStore`)."""

    finite: bool

    def copy(self, query: EventQuery, select: str, options: str, path: str) -> int: ...

    def lines(self, query: EventQuery, select: str, batch_rows: int, threads: int | None) -> pa.RecordBatchReader: ...

    def estimate(self, query: EventQuery) -> int: ...

    def progress(self) -> float | None: ...

    def interrupt(self) -> None: ...


def can_copy(source: EventSource, privacy: Privacy | None) -> bool:
    """Whether the store's engine may write an export's file: it can copy (DuckDB, with no NaN left to
    scrub in Python), and privacy scans no value in Python (detectors, patterns)."""
    if not sys.platform.startswith("linux") or not getattr(source, "finite", False) or not hasattr(source, "copy"):
        return False
    return privacy is None or not privacy.scans


def copied_plan(request: ExportRequest, query: EventQuery, total: int, fragment: bool) -> Copied | None:
    """How the engine writes `request`'s file from a store that `can_copy`, `total` being the store's
    count of the query's window; None when the batch path must: the writer has no engine form (Avro,
    CSV), unless the window is empty, where the writer's file of no rows needs no engine (`Writer.empty`;
    not in a fragment, whose head the assembly writes). A writer's cap on the engine's threads is for
    light SQL: privacy's (HMAC, JSON patches) runs on all of them (5M JSON lines under the bench's
    policy: 14.3-14.4 s on one thread, 12.1-12.7 s on two)."""
    writer = writer_for(request)
    plan = writer.copied(query.names, request.compression)
    if plan is not None and query.protection is not None:
        plan = replace(plan, threads=None)
    if plan is None and not total and not fragment:
        head = writer.empty(query.columns, request.compression)
        plan = None if head is None else Copied("", None, head=head)
    return plan


class EngineCopy:
    """The bytes of the engine's rows as `plan` says (`plan.opening` first, `plan.trim` cut off the end):
    a COPY's, read from a pipe while it runs in a thread, or (`plan.options` None) the text column of
    the engine's Arrow batches, read a batch ahead. Iterating yields them, and an empty chunk each time
    a COPY has been quiet for POLL_SECONDS; `rows` counts the rows so far (a COPY's once it ends).
    Cancelled once `should_stop()` says so; a failure on either side stops the other before it is raised.
    `total` is the store's count of the query's window (`estimate`), taken before: when it is 0 there
    are no lines to read, and the engine's Arrow stream (which loads pyarrow, 50 MB) is not opened."""

    def __init__(self, source: CopyingSource, query: EventQuery, plan: Copied, total: int,
                 should_stop: Callable[[], bool] | None, export_id: str) -> None:
        self.source, self.query, self.plan, self.total = source, query, plan, total
        self.should_stop = should_stop or (lambda: False)
        self.export_id = export_id
        self.rows = 0

    def events(self) -> int:
        """About how many of the export's events are written so far."""
        if self.plan.options is None:
            return self.rows
        return int((self.source.progress() or 0) * self.total)

    def __iter__(self) -> Iterator[bytes | memoryview]:
        held, started, trim = b"", False, len(self.plan.trim)
        for chunk in self._piped() if self.plan.options is not None else self._lines():
            if not chunk:
                yield b""
                continue
            if not started and self.plan.opening:
                yield self.plan.opening
            started = True
            if trim:  # the last `trim` bytes wait until more come; a memoryview stays one
                if len(chunk) < trim:
                    chunk = held + bytes(chunk)
                elif held:
                    yield held
                chunk, held = chunk[:-trim], bytes(chunk[-trim:])
            yield chunk
        if held != (self.plan.trim if self.rows else b""):
            raise Format(f"the event store's {self.rows:,} rows ended in {held!r}, not in {self.plan.trim!r}")

    def _lines(self) -> Iterator[memoryview]:
        if not self.total:
            return
        lines = self.source.lines(self.query, self.plan.select, LINE_ROWS, self.plan.threads)
        ahead = read_ahead(lines, 1)
        try:
            for batch in ahead:
                if self.should_stop():
                    self.source.interrupt()
                    raise Cancelled(f"export {self.export_id} was cancelled")
                text = batch.column(0)
                if text.null_count:
                    raise Format(f"the event store made {text.null_count:,} rows without text")
                self.rows += batch.num_rows
                yield string_bytes(text)
        except BaseException:
            self.source.interrupt()
            raise
        finally:
            ahead.close()
            lines.close()  # the connection's result freed now, whether or not it was read to its end

    def _piped(self) -> Iterator[bytes]:
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
        stopped = False
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
