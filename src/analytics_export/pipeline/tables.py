"""An export loaded into a table: its batches replace the request's window there (see `warehouses/`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterator

from ..enums import ExportModel, ExportStatus
from ..models import ExportRequest, ExportResult
from ..privacy.policy import Privacy
from ..sources import IDS, EventQuery, EventSource
from ..warehouses import LoadWindow, TableDestination, check_columns
from .batches import PREFETCH, Progress, privacy_fields, read_ahead, scanned, stopping

if TYPE_CHECKING:
    import pyarrow as pa


def load_table(request: ExportRequest, source: EventSource, table: TableDestination, *, project: str,
               batch_size: int = 16_384, on_progress: Callable[[Progress], None] | None = None,
               should_stop: Callable[[], bool] | None = None, privacy: Privacy | None = None) -> ExportResult:
    """Load the events of `request` into `table`, replacing its window there (format and compression
    do not apply); `privacy` applies as in every export."""
    import pyarrow as pa  # here: a file the engine writes needs none

    started = datetime.now(timezone.utc)
    if request.model is ExportModel.EVENTS:
        query = replace(EventQuery.from_request(request, project, property_columns=True), ids=IDS)
        if privacy is not None:
            query = privacy.query(query)
        if query.property_columns:
            check_columns(query.properties, str(table))
        batches = scanned(source, query, batch_size, privacy, should_stop, request.id)
        schema, window = query.schema, LoadWindow(request.start_date, request.end_date, query.time_field)
    else:  # persons, sessions: upserted by their key, with the persons merged away deleted
        from ..derived import derive

        rows = derive(request, source, project, privacy, batch_size, should_stop)
        batches = read_ahead(stopping(rows.batches, should_stop, request.id), PREFETCH)
        schema = rows.schema
        window = LoadWindow(request.start_date, request.end_date, request.time_field, key=rows.key,
                            removed=rows.removed)
    progress = Progress()
    failed: list[Exception] = []

    def feed() -> Iterator[pa.RecordBatch]:
        """The batches, counted, reported and stopped on request."""
        try:
            for batch in batches:
                progress.events += batch.num_rows
                if on_progress is not None:
                    on_progress(progress)
                yield batch
        except Exception as exc:  # drivers wrap it as it crosses their C stream: raised as it was, below
            failed.append(exc)
            raise

    try:
        table.load(pa.RecordBatchReader.from_batches(schema, feed()), window)
    except Exception:
        if failed:
            raise failed[0] from None
        raise
    finally:
        batches.close()  # stops the source thread now
    return ExportResult(export_id=request.id, status=ExportStatus.COMPLETED, total_events=progress.events,
                        destination_path=f"{table}, {window}", started_at=started,
                        completed_at=datetime.now(timezone.utc), **privacy_fields(privacy))
