"""Runs one export: source -> privacy -> writer -> compressor -> destination, one bounded batch at a time
(`files`), or source -> privacy -> table (`tables`); `batches` is what both read."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from ..destinations import Destination, layout_values
from ..enums import ExportModel
from ..formats import writer_for
from ..models import ExportRequest, ExportResult
from ..privacy.policy import Privacy
from ..sources import EventSource
from ..warehouses import TableDestination
from .batches import Progress
from .files import completed, deliver, write_derived, write_files
from .tables import load_table


def run_export(
    request: ExportRequest,
    source: EventSource,
    destination: Destination,
    *,
    project: str,
    batch_size: int = 16_384,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    privacy: Privacy | None = None,
    engine: bool = True,
) -> ExportResult:
    """Export `request` from `source` to `destination`; nothing is visible there unless it completes.

    When the destination splits exports (`split_limits`), each part is a complete file of at most
    that many events and about that many bytes, and a manifest listing them is written last. With
    `engine`, the store's engine may write the file itself (see `write_files`).
    `privacy` (the project's policy and the request's additions) applies to every batch. A table
    destination is loaded instead, replacing the request's window there (see `warehouses/`).
    """
    if isinstance(destination, TableDestination):
        return load_table(request, source, destination, project=project, batch_size=batch_size,
                          on_progress=on_progress, should_stop=should_stop, privacy=privacy)
    started = datetime.now(timezone.utc)
    if request.model is not ExportModel.EVENTS:  # persons, sessions: derived first, then written like events
        from ..derived import derive

        split = request.destination.split_limits() != (None, None)
        rows = derive(request, source, project, privacy, min(batch_size, writer_for(request).batch_rows or batch_size),
                      should_stop)
        if destination.manifest:  # a re-run's old manifest must not vouch for files about to be rewritten
            destination.remove(request.manifest_name)
        manifest = destination.manifest and (split or bool(rows.notes))
        files, _ = write_derived(request, rows, destination, name=request.part_name if split else lambda _: request.file_name,
                                 split=split, digest=manifest, on_progress=on_progress, should_stop=should_stop)
        result = finish(request, project, destination, files, started, manifest, privacy, should_stop, rows.notes)
        if split:
            return result
        return result.model_copy(update={"destination_path": files[0]["uri"]})  # the file, its manifest beside it
    if request.laid_out:  # a file or a split series per partition, and a manifest of them all
        from .layout import write_laid_out  # here: it loads pyarrow, which the engine's own writes do without

        if destination.manifest:
            destination.remove(request.manifest_name)
        files = write_laid_out(request, source, destination, project=project,
                               values=layout_values(request, project), name=request.part_name,
                               batch_size=batch_size, on_progress=on_progress, should_stop=should_stop,
                               privacy=privacy)
        return finish(request, project, destination, files, started, destination.manifest, privacy, should_stop)
    split = request.destination.split_limits() != (None, None)
    digest = split and destination.manifest
    if digest:  # a re-run: the old manifest must not vouch for parts about to be rewritten
        destination.remove(request.manifest_name)
    files, progress = write_files(request, source, destination, project=project,
                                  name=request.part_name if split else lambda _: request.file_name,
                                  split=split, digest=digest, batch_size=batch_size, on_progress=on_progress,
                                  should_stop=should_stop, privacy=privacy, engine=engine)
    return finish(request, project, destination, files, started, digest, privacy, should_stop)


def finish(request: ExportRequest, project: str, destination: Destination, files: list[dict], started: datetime,
           manifest: bool, privacy: Privacy | None, should_stop: Callable[[], bool] | None,
           notes: dict | None = None) -> ExportResult:
    """Deliver the committed `files` (the manifest last, if `manifest`); a failure removes them."""
    try:
        path = deliver(request, project, destination, files, manifest=manifest, privacy=privacy,
                       should_stop=should_stop, notes=notes)
    except BaseException:
        for entry in files:
            destination.remove(entry["name"])
        raise
    return completed(request, files, path, started, privacy)
