"""Warehouse tables: destinations that load an export's batches into a table instead of writing files.

A load replaces its window: the rows whose time column (the export's `time_field`) falls in
[start_date, end_date) give way to the export's events, so a rerun of a window (a retry, a
schedule's window run again under the same export id) leaves exactly one copy of its events.
Tables hold the Parquet shape (typed timestamps; `properties` as JSON text, or one text column per
selected property) plus each event's `uuid` and `inserted_at`: an `inserted_at` window can be
replaced, and duplicates stay detectable. One module per table type, registered in
`destinations.DESTINATIONS`; `run_export` hands a `TableDestination` to `load_table`, and a stream
appends each batch through `load` with the batch's own uuids as its window (streaming/sinks/table.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Iterator

import pyarrow as pa

from ..destinations import Destination, Target, Upload
from ..errors import Invalid
from ..models import ExportRequest, ExportResult, ExportStatus
from ..sources import IDS, EventQuery, EventSource

if TYPE_CHECKING:
    from ..pipeline import Progress
    from ..privacy.policy import Privacy

COLUMNS = ("event", "distinct_id", "timestamp", "properties", "uuid", "inserted_at")
"""A table's own columns: a selected property (a column of its own) may not take one of these names."""


@dataclass(frozen=True)
class Window:
    """The rows a load replaces: those whose `column` is in [start, end), and with `loaded_only`,
    only those among them whose uuid the load brings (a stream's batch appended again replaces its
    own earlier copy, and nothing else)."""

    start: datetime
    end: datetime
    column: str
    loaded_only: bool = False

    def __str__(self) -> str:
        among = " with the loaded uuids" if self.loaded_only else ""
        return f"{self.column} in [{self.start.isoformat()}, {self.end.isoformat()}){among}"


def check_columns(properties: Iterable[str] | None, table: str = "the table", taken: tuple[str, ...] = COLUMNS) -> None:
    """Invalid if a selected property would take the name of one of the table's own columns."""
    clash = [p for p in properties or () if p in taken]
    if clash:
        raise Invalid(f"property {clash[0]!r} would be a column of {table}, which has one of that name already; "
                      "select the properties other than " + ", ".join(taken))


class TableDestination(Destination):
    """A table: `load` replaces one window of it with a stream of batches; it takes no files."""

    manifest = False
    kind: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name

    def open(self, name: str) -> Upload:
        raise Invalid(f"{self} is loaded with rows; it cannot take the file {name}")

    def load(self, batches: pa.RecordBatchReader, window: Window) -> None:
        """Replace the rows of `window` with `batches` (created or given new columns as needed)."""
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.kind} table {self.name}"


def local_path(target: Target, name: str) -> Path:
    """Where a table on this machine lives: DATA_DIR/tables/PROJECT/NAME, each project apart."""
    return target.settings.data_dir / "tables" / target.project / name


def load_table(request: ExportRequest, source: EventSource, table: TableDestination, *, project: str,
               batch_size: int = 16_384, on_progress: Callable[[Progress], None] | None = None,
               should_stop: Callable[[], bool] | None = None, privacy: Privacy | None = None) -> ExportResult:
    """Load the events of `request` into `table`, replacing its window there (format and compression
    do not apply); `privacy` applies as in every export."""
    from ..pipeline import PREFETCH, Cancelled, Progress, privacy_fields, read_ahead  # the pipeline imports us

    started = datetime.now(timezone.utc)
    query = replace(EventQuery.from_request(request, project, property_columns=True), ids=IDS)
    if privacy is not None:
        query = privacy.query(query)
    if query.property_columns:
        check_columns(query.properties, str(table))
    batches = source.batches(query, batch_size)
    if privacy is not None:
        batches = privacy.apply(batches, query)
    ahead = read_ahead(batches, PREFETCH)
    progress = Progress()
    failed: list[Exception] = []

    def feed() -> Iterator[pa.RecordBatch]:
        """The batches, counted, reported and stopped on request."""
        try:
            for batch in ahead:
                if should_stop is not None and should_stop():
                    raise Cancelled(f"export {request.id} was cancelled")
                progress.events += batch.num_rows
                if on_progress is not None:
                    on_progress(progress)
                yield batch
        except Exception as exc:  # drivers wrap it as it crosses their C stream: raised as it was, below
            failed.append(exc)
            raise

    window = Window(request.start_date, request.end_date, query.time_field)
    try:
        table.load(pa.RecordBatchReader.from_batches(query.schema, feed()), window)
    except Exception:
        if failed:
            raise failed[0] from None
        raise
    finally:
        ahead.close()  # stops the source thread now
    return ExportResult(export_id=request.id, status=ExportStatus.COMPLETED, total_events=progress.events,
                        destination_path=f"{table}, {window}", started_at=started,
                        completed_at=datetime.now(timezone.utc), **privacy_fields(privacy))
