"""Partitioned exports: a long range cut into time windows that any free workers run at once.

Each partition writes its own output. An export asked as one file stages each partition's
fragment (a text writer leaves out the header and brackets), and the worker that finishes the last
partition joins them in order with the format's `merge`, without reading the source again; a
compressed text file is compressed there, once, so it is one stream whatever the partitioning. A
split export delivers each partition's numbered parts straight to the destination, and the last
worker writes the manifest that lists them all.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ..bytesinks import ForwardingSink
from ..config import Settings
from ..destinations import BackgroundUpload, Destination, layout_values, registry
from ..destinations.local import LocalDestination
from ..errors import Cancelled
from ..formats import writer_for
from ..enums import ExportModel
from ..models import ExportConfig, ExportRequest, ExportResult
from ..pipeline.batches import Progress
from ..pipeline.files import completed, deliver, export_query, write_files
from ..pipeline.layout import write_laid_out
from ..privacy.policy import Privacy
from ..sources import EventSource
from ..store.records import Job

MICROSECOND = timedelta(microseconds=1)


def plan(request: ExportRequest, config: ExportConfig, events: int | None = None) -> list[tuple[datetime, datetime]]:
    """The windows of `request` when it spans more than one partition, else none; given the `events`
    in its range, windows are widened to hold `min_partition_events` or more each (on average).
    Webhook exports are never partitioned: their batches are numbered in one sequence as sent; nor are
    table loads, which replace their whole window in one load; nor persons and sessions, each derived
    from the whole window (a person active in two partitions would be two rows)."""
    if (not config.partition_hours or request.model is not ExportModel.EVENTS
            or registry.get(request.destination.type).kind in ("webhook", "table")):
        return []
    span = (request.end_date - request.start_date) // MICROSECOND
    pieces = config.max_partitions if events is None else min(config.max_partitions,
                                                              events // config.min_partition_events)
    width = max(int(config.partition_hours * 3600e6), -(-span // max(pieces, 1)))  # ceil: at most `pieces`
    if span <= width:
        return []
    width = timedelta(microseconds=width)
    windows, start = [], request.start_date
    while start < request.end_date:
        windows.append((start, min(start + width, request.end_date)))
        start += width
    return windows


def staged(request: ExportRequest) -> bool:
    """Whether partitions are staged and joined (one file asked), not delivered as split parts (or as
    files laid out by each event's values)."""
    return request.destination.split_limits() == (None, None) and not request.laid_out


def staging(settings: Settings, export_id: str) -> Path:
    return settings.staging_dir / export_id


def run_partition(job: Job, source: EventSource, destination: Destination, settings: Settings, privacy: Privacy, *,
                  on_progress: Callable[[Progress], None], should_stop: Callable[[], bool]) -> list[dict]:
    """Write the claimed partition of `job`; returns its files' manifest entries."""
    request, part = job.request, job.partition
    window = request.model_copy(update={"start_date": part.start, "end_date": part.end})
    options: dict[str, Any] = {"project": job.project, "batch_size": settings.export.batch_size,
                               "on_progress": on_progress, "should_stop": should_stop, "privacy": privacy,
                               "engine": settings.export.engine_writes}
    if staged(request):
        # The attempt is in the name, so a run that lost its lease cannot delete its successor's file.
        name = f"part-{part.number:05d}-{part.attempts}"
        files, _ = write_files(window, source, LocalDestination(staging(settings, job.id)),
                               name=lambda _: name, fragment=True, **options)
        return files
    if destination.manifest:  # a re-run: the old manifest must not vouch for parts being rewritten
        destination.remove(request.manifest_name)
    if request.laid_out:
        return write_laid_out(window, source, destination, project=job.project,
                              values=layout_values(request, job.project),
                              name=lambda n: request.part_name(n, part.number), batch_size=settings.export.batch_size,
                              on_progress=on_progress, should_stop=should_stop, privacy=privacy)
    files, _ = write_files(window, source, destination, name=lambda n: request.part_name(n, part.number),
                           split=True, digest=destination.manifest, empty_file=False, **options)
    return files


def assemble(job: Job, destination: Destination, settings: Settings, parts: list[list[dict]], privacy: Privacy,
             should_stop: Callable[[], bool]) -> ExportResult:
    """Deliver a partitioned export whose partitions (their manifest entries, in order) have all completed.
    Its staged fragments stay until the result is recorded (a lost lease means another assembles)."""
    request = job.request
    files = [entry for part in parts for entry in part]
    schema = export_query(request, job.project, privacy).schema  # also notes the properties privacy drops
    if not staged(request):
        path = deliver(request, job.project, destination, files, manifest=destination.manifest, privacy=privacy,
                       should_stop=should_stop)
        return completed(request, files, path, job.started_at, privacy)
    folder = staging(settings, job.id)
    writer_cls = writer_for(request)
    upload = BackgroundUpload(destination.open(request.file_name))
    counted = StoppableSink(upload, should_stop, job.id)
    try:
        writer_cls.merge([(folder / entry["name"], entry["events"]) for entry in files], counted, schema,
                         request.compression)
        uri = upload.commit()
    except BaseException:
        upload.abort()
        raise
    return completed(request, [{"events": sum(e["events"] for e in files), "bytes": counted.position}],
                     destination.finish([uri], should_stop), job.started_at, privacy)


class StoppableSink(ForwardingSink):
    """Counts what it forwards, and stops a merge whose export was cancelled (or lease lost)."""

    def __init__(self, target, should_stop: Callable[[], bool], export_id: str) -> None:
        super().__init__(target)
        self.should_stop = should_stop
        self.export_id = export_id

    def forward(self, data: bytes | memoryview) -> None:
        self.check()
        self.target.write(data)

    def copy_from(self, file: BinaryIO, size: int | None) -> int | None:
        """Copy from `file` in the kernel if the target can (see `LocalUpload.copy_from`)."""
        self.check()
        copied = self.target.copy_from(file, size) if hasattr(self.target, "copy_from") else None
        self.position += copied or 0
        return copied

    def check(self) -> None:
        if self.should_stop():
            raise Cancelled(f"export {self.export_id} was cancelled")


def discard(job: Job, rows: list[Any], settings: Settings, destination: Callable[[], Destination]) -> None:
    """Remove what the partitions of a failed or cancelled export delivered or staged."""
    if staged(job.request):
        shutil.rmtree(staging(settings, job.id), ignore_errors=True)
        return
    names = [entry["name"] for row in rows for entry in row.files or ()]
    if names:
        target = destination()
        try:
            for name in names:
                target.remove(name)
        finally:
            target.close()
