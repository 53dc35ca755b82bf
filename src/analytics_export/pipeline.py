"""Runs one export: source -> writer -> compressor -> destination, one bounded batch at a time."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from .compression import CompressedSink
from .destinations import BackgroundUpload, Destination
from .errors import ExportError
from .formats import writer_class
from .models import ExportRequest, ExportResult, ExportStatus
from .sources import EventQuery, EventSource
from .streams import ForwardingSink

# Threads: the source scans PREFETCH batches ahead of the caller, which encodes and writes, and
# BackgroundUpload does the I/O. A pool of two encoders measured no faster on 2 cores, 30 MB larger.
PREFETCH = 1


class Cancelled(ExportError):
    """The export was stopped on request; its output was discarded."""


@dataclass
class Progress:
    events: int = 0
    bytes: int = 0


def run_export(
    request: ExportRequest,
    source: EventSource,
    destination: Destination,
    *,
    project: str,
    batch_size: int = 16_384,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExportResult:
    """Export `request` from `source` to `destination`; nothing is visible there unless it completes."""
    started = datetime.now(timezone.utc)
    writer_cls = writer_class(request.format)
    query = EventQuery.from_request(request, project, property_columns=not writer_cls.nested_properties,
                                    text_timestamps=writer_cls.text_timestamps)
    upload = BackgroundUpload(destination.open(request.file_name))
    counted = ForwardingSink(upload)
    progress = Progress()
    writer = batches = None
    try:
        wraps_stream = request.compression is not None and not writer_cls.internal_compression
        sink = CompressedSink(counted, request.compression) if wraps_stream else counted
        writer = writer_cls(sink, query.schema, request.compression)
        batches = read_ahead(source.batches(query, batch_size), PREFETCH)
        for batch in batches:
            if should_stop is not None and should_stop():
                raise Cancelled(f"export {request.id} was cancelled")
            writer.write(writer.encode(batch))
            progress.events += batch.num_rows
            progress.bytes = counted.position
            if on_progress is not None:
                on_progress(progress)
        writer.close()
        sink.finish()
        path = upload.commit()
    except BaseException:
        counted.discard()
        upload.abort()
        raise
    finally:
        if batches is not None:
            batches.close()  # stops the source thread now, not whenever a traceback holding it is freed
        if writer is not None:
            writer.release()
    progress.bytes = counted.position
    if on_progress is not None:
        on_progress(progress)
    return ExportResult(
        export_id=request.id,
        status=ExportStatus.COMPLETED,
        total_events=progress.events,
        file_size=progress.bytes,
        destination_path=path,
        started_at=started,
        completed_at=datetime.now(timezone.utc),
    )


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
