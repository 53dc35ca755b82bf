"""One attempt of an export job, run in a child process of the worker (or, with `export.isolate` off,
in the worker itself).

In a child, the attempt's memory goes back to the system when it ends (a long-lived worker otherwise
keeps what its allocators once held: 201 MB before 7 exports of 5M events, 303 MB after), the worker
stays at its own size, and a crash or an out-of-memory kill costs this attempt, not the worker with
its scheduler and streams. The worker works out from its job store what the attempt needs (privacy
rules, destination secrets, partitions' files) and sends it pickled over a socket pair; the child,
which imports the export path only (as the CLI does), sends back the export's expected size, its
progress and its outcome. A stop (cancel, lost lease) goes the other way; a worker that dies closes
the socket, which the child takes as a stop too. The worker starts each child ahead of the job it will
run (`Child`), forked from a server process that imported the export path once (`FORKS`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable

from ..config import Settings
from ..destinations import Placement, destination_for
from ..errors import Cancelled, ExportError, Storage, Upload
from ..pipeline import run_export
from ..pipeline.batches import Progress
from ..privacy.policy import Privacy
from ..sources import EventQuery, EventSource
from ..sources.duckdb import DuckDBEventStore
from ..sources.stores import open_store
from ..store.records import Job

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 0.1
"""Least time between two progress messages of a child (the worker's heartbeat reads them twice a second)."""
STOP_GRACE_SECONDS = 30.0
"""How long a child that was told to stop may take to clean up (abort an upload) before it is killed."""

FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload([__name__])
"""Children are forked from a server process, started by the worker's first child, that imported the
export path once (this module). Each child started as a new interpreter took 0.25-0.5 s of CPU for its
imports: in a queue of jobs back to back, the next spare's imports competed with each export's first
half second (5M to snappy Parquet through a worker 3.2-3.6 s, 2.7-2.9 s with a pause between jobs)."""


@dataclass
class Attempt:
    """All one attempt of `job` needs, worked out by the worker from its job store."""

    settings: Settings
    job: Job
    privacy: Privacy
    placement: Placement
    parts: list[list[dict]] | None = None
    """A partitioned export's partitions' manifest entries, in order, when it is to be assembled."""


@dataclass
class Outcome:
    """What an attempt came to: its value (an export's result, a partition's manifest entries), or its
    error and whether another attempt may succeed; or it stopped when told to."""

    value: Any = None
    error: str | None = None
    retryable: bool = False
    cancelled: bool = False


def expected(store: EventSource, job: Job, privacy: Privacy) -> int | None:
    """How many events `job` will export, for its progress bar: counted on the embedded store (a
    columnar scan, a fraction of the export's own; suppressed users left out), else the engine's
    estimate of the window before filters (its index or statistics: instant, an upper bound). None
    if the store cannot say."""
    try:
        query = privacy.query(EventQuery.from_request(job.request, job.project))
        return store.count(query) if isinstance(store, DuckDBEventStore) else store.estimate(query)
    except ExportError as exc:  # the export's own run meets and reports the same problem
        log.warning("export %s: no estimate of its size (%s)", job.id, exc)
        return None


def perform(attempt: Attempt, *, on_progress: Callable[[Progress], None],
            on_expected: Callable[[int | None], None], should_stop: Callable[[], bool]) -> Outcome:
    """Run `attempt` here: a partition, the assembly of a partitioned export, or a whole export."""
    job, settings, privacy = attempt.job, attempt.settings, attempt.privacy

    def work() -> Any:
        destination = destination_for(attempt.placement)
        try:
            if attempt.parts is not None:
                from .partitions import assemble  # here: partitions load pyarrow, which Parquet does without

                return assemble(job, destination, settings, attempt.parts, privacy, should_stop=should_stop)
            with closing(open_store(settings)) as store:
                if job.partition is not None:
                    from .partitions import run_partition

                    return run_partition(job, store, destination, settings, privacy, on_progress=on_progress,
                                         should_stop=should_stop)
                on_expected(expected(store, job, privacy))
                return run_export(job.request, store, destination, project=job.project,
                                  batch_size=settings.export.batch_size, on_progress=on_progress,
                                  should_stop=should_stop, privacy=privacy, engine=settings.export.engine_writes)
        finally:
            destination.close()

    return outcome_of(job.id, work)


def outcome_of(export_id: str, work: Callable[[], Any]) -> Outcome:
    """`work()` as an outcome: its value, or its error and whether it is worth another attempt (a store
    or upload failure may pass; bad input or an encoding error will not), or that it stopped."""
    try:
        return Outcome(work())
    except Cancelled:
        return Outcome(cancelled=True)
    except ExportError as exc:
        return Outcome(error=str(exc), retryable=isinstance(exc, (Storage, Upload)))
    except Exception as exc:  # a bug: record it, log the traceback
        log.exception("export %s failed unexpectedly", export_id)
        return Outcome(error=f"internal error ({type(exc).__name__}); see the worker log")


class Child:
    """A child process (`main`, forked by `FORKS`) started ahead of its attempt, so a job does not wait
    for it. One that is never given an attempt exits when closed."""

    def __init__(self) -> None:
        self.conn, theirs = FORKS.Pipe()
        self.process = FORKS.Process(target=main, args=(theirs,), name="export", daemon=True)
        try:
            self.process.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
            theirs.close()

    def running(self) -> bool:
        return self.process.exitcode is None

    def wait(self, seconds: float) -> int:
        """Its exit code, once it ends; killed if it takes more than `seconds`."""
        self.process.join(seconds)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
        return self.process.exitcode  # type: ignore[return-value]

    def close(self) -> None:
        self.conn.close()  # the end of file it waits on
        self.wait(STOP_GRACE_SECONDS)


def run_isolated(attempt: Attempt, *, on_progress: Callable[[Progress], None],
                 on_expected: Callable[[int | None], None], should_stop: Callable[[], bool],
                 child: Child | None = None) -> Outcome:
    """Run `attempt` in `child` (a new one if it is None or gone), passing on what it reports; tell it to
    stop once `should_stop()`. A child that ends without an outcome (killed, crashed) fails the attempt,
    which may be tried again."""
    if child is None or not child.running():
        try:
            child = Child()
        except OSError as exc:  # out of memory or processes, say: worth another attempt later
            return Outcome(error=f"could not start the export's process ({exc})", retryable=True)
    ours = child.conn
    told = 0.0
    try:
        ours.send(attempt)
        while True:
            if not told and should_stop():
                told = time.monotonic()
                ours.send("stop")
            if told and time.monotonic() - told > STOP_GRACE_SECONDS and child.running():
                child.process.kill()
            if not ours.poll(0.1):
                continue
            message = ours.recv()
            if isinstance(message, Progress):
                on_progress(message)
            elif isinstance(message, Outcome):
                return message
            else:
                on_expected(message)
    except (EOFError, OSError):  # the child is gone: the socket closed under a send or a read
        code = child.wait(STOP_GRACE_SECONDS)
        if told:
            return Outcome(cancelled=True)
        return Outcome(error=f"the export's process ended without finishing it ({ended(code)})", retryable=True)
    except Exception as exc:  # a bug (a message that does not unpickle, say): record it, log the traceback
        log.exception("export %s: its process could not be followed", attempt.job.id)
        return Outcome(error=f"internal error ({type(exc).__name__}); see the worker log")
    finally:
        ours.close()  # a child still running (this worker stopping mid-run) takes the end of file as a stop
        child.wait(STOP_GRACE_SECONDS)


def ended(code: int) -> str:
    """How a child's exit `code` reads in an attempt's error."""
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
    return f"{name}, the system may have run out of memory" if name == "SIGKILL" else name


def main(conn: Connection) -> None:
    """A child's side: run the attempt sent on `conn`, reporting as it goes. A stop message, or the
    worker's end of the socket closing, stops it."""
    from .. import logs

    # A process group of its own: Ctrl-C in a terminal stops the worker, which stops the child in turn.
    # Not a session of its own: Linux schedules each session as one group (autogroup), so a child there
    # took a fair share of the CPU against the API whatever its niceness (4 exports through 2 workers:
    # status polls' p99 110 ms, 13 ms in the worker's session).
    os.setpgid(0, 0)
    logs.configure()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # stop as on a stop message: nothing left half-done
    try:
        attempt: Attempt = conn.recv()
    except EOFError:  # a spare child closed unused: its worker is stopping
        return
    sending = threading.Lock()
    sent = 0.0

    def send(message: Any) -> None:
        with sending:
            try:
                conn.send(message)
            except OSError:  # the worker is gone: stop; whoever takes the job over runs it again
                stop.set()

    def progress(p: Progress) -> None:
        nonlocal sent
        if time.monotonic() - sent >= PROGRESS_SECONDS:
            sent = time.monotonic()
            send(Progress(p.events, p.bytes))

    def should_stop() -> bool:
        if not stop.is_set() and conn.poll():  # a stop message, or the worker gone (end of file)
            stop.set()
        return stop.is_set()

    send(perform(attempt, on_progress=progress, on_expected=send, should_stop=should_stop))
