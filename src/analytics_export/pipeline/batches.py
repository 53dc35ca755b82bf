"""The batches an export reads: from the source through privacy, scanned ahead in a thread, counted,
and stopped when the caller cancels. Files and tables both take them from here."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from ..errors import Cancelled
from ..privacy.policy import Privacy
from ..sources import EventQuery, EventSource

if TYPE_CHECKING:
    import pyarrow as pa

# Threads: the source scans PREFETCH batches ahead of the caller, which encodes and writes, and
# BackgroundUpload does the I/O. A pool of two encoders measured no faster on 2 cores, 30 MB larger.
PREFETCH = 1


@dataclass
class Progress:
    events: int = 0
    bytes: int = 0


def scanned(source: EventSource, query: EventQuery, batch_size: int, privacy: Privacy | None,
            should_stop: Callable[[], bool] | None, export_id: str) -> Iterator[pa.RecordBatch]:
    """`query`'s batches from `source` with `privacy` applied, both in the read-ahead thread beside the
    caller's encoding; Cancelled before a batch once `should_stop()` says so. Closing the iterator
    stops the thread at once."""
    batches = source.batches(query, batch_size)
    if privacy is not None:
        batches = privacy.apply(batches, query)
    ahead = read_ahead(batches, PREFETCH)
    try:
        yield from stopping(ahead, should_stop, export_id)
    finally:
        ahead.close()


def stopping(batches: Iterable[pa.RecordBatch], should_stop: Callable[[], bool] | None,
             export_id: str) -> Iterator[pa.RecordBatch]:
    """`batches`, with Cancelled raised before a batch once `should_stop()` says so."""
    for batch in batches:
        if should_stop is not None and should_stop():
            raise Cancelled(f"export {export_id} was cancelled")
        yield batch


def privacy_fields(privacy: Privacy | None) -> dict:
    """What an export records of the privacy it applied: the policy version and dropped properties."""
    if privacy is None:
        return {"privacy_policy_version": None, "dropped_properties": []}
    return {"privacy_policy_version": privacy.version, "dropped_properties": privacy.dropped}


def read_ahead(batches: Iterable[pa.RecordBatch], depth: int) -> Iterator[pa.RecordBatch]:
    """Yield `batches`, produced by a background thread at most `depth` ahead of the consumer."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item: object) -> bool:
        """Hand `item` over unless the consumer has gone; False once it has."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(done)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)

    thread = threading.Thread(target=produce, name="export-source", daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
