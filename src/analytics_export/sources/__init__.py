"""Event sources: each turns an EventQuery into Arrow record batches, with filters pushed into its SQL."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from ..models import ExportFilter, ExportRequest
from .protect import Protection

if TYPE_CHECKING:
    import pyarrow as pa

RFC3339 = "%Y-%m-%dT%H:%M:%S.%fZ"
"""Timestamps in text formats: UTC with microseconds, e.g. 2026-11-01T12:34:56.123456Z."""


def utc_strftime(column: str, fmt: str = RFC3339) -> str:
    """DuckDB SQL of a TIMESTAMPTZ column as text in `fmt` (strftime's), formatted from its instant
    (`epoch_us`) as UTC whatever the session's time zone. strftime of the TIMESTAMPTZ itself converts
    each value through ICU's calendar: the same text in twice the time (5M as RFC 3339 on 2 threads
    0.45 s against 0.21 s)."""
    return f"strftime(make_timestamp(epoch_us({column})), '{fmt}')"


NON_FINITE_HINT = r"[:\[,]\s*[+-]?(?i:nan|inf)"
"""RE2 (and Python): where NaN or Infinity may stand as a JSON value, after `:`, `[` or `,`. Matched
first, as one pass over the text; a string that merely holds `nan` or `inf` ("banana", "info") does not
match, and one that does ("ratio: NaN") is only looked at more closely."""
NON_FINITE = re.compile(r'("(?:[^"\\]|\\.)*")|[+-]?(?i:nan|inf(?:inity)?)')
"""A JSON string (kept) or a NaN/Infinity token in any spelling the engines' JSON readers take."""


def finite(batch: pa.RecordBatch) -> pa.RecordBatch:
    """`batch` with NaN and Infinity in its `properties` JSON column made null: JSON has no such numbers and
    strict parsers reject them. Ingest refuses them; this covers what a store held before that check
    or got from another writer. One vectorised test per batch; only rows that match are rewritten."""
    import pyarrow as pa
    import pyarrow.compute as pc

    index = batch.schema.get_field_index("properties")
    if index < 0 or batch.num_rows == 0:
        return batch
    column = batch.column(index)
    hits = pc.match_substring_regex(column, NON_FINITE_HINT)
    if not pc.any(hits).as_py():
        return batch
    values = column.to_pylist()
    for i, hit in enumerate(hits.to_pylist()):
        if hit:
            values[i] = NON_FINITE.sub(lambda m: m.group(1) or "null", values[i])
    arrays = list(batch.columns)
    arrays[index] = pa.array(values, batch.schema.field(index).type)
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


READ_MEMORY_MB = 128
"""DuckDB's cap for a read with a few JSON functions, when the engine writes the file. Measured at 5M
events on 2 threads: every export ran at 64MB, 20 selected properties with 3 filters and a SQL privacy
policy among them; each 32MB more costs about 32 MB of peak RSS, and 128MB was 0.3-0.6 s faster than
64MB on a 3.5-8 s export. Writers that hold batches in Python ask for less (`Writer.read_memory_mb`)."""

IDS = ("uuid", "inserted_at")
"""Each event's id and storage time: columns an export adds on request (`include`), after the others."""


@dataclass(frozen=True)
class EventQuery:
    """Which events to read and in which shape.

    `property_columns` selects the tabular shape (one string column per selected property,
    strings raw and other values as JSON text); otherwise `properties` is one JSON object column
    holding all properties, or only the selected ones. `text_timestamps` has the source format
    `timestamp` as RFC 3339 text, inside its parallel scan, for the text formats. [start, end)
    applies to `time_field`: the event's `timestamp`, or `inserted_at`, when it was stored.
    """

    project: str
    start: datetime
    end: datetime
    events: tuple[str, ...] = ()
    filters: tuple[ExportFilter, ...] = ()
    properties: tuple[str, ...] | None = None
    property_columns: bool = False
    text_timestamps: bool = False
    time_field: str = "timestamp"
    inserted_before: datetime | None = None
    """Only events stored before this instant (retention archives a window as of a watermark)."""
    ids: tuple[str, ...] = ()
    """Of `uuid` and `inserted_at`, the ones to add as last columns, in that order (`IDS`: both, so a
    retention archive can be ingested back exactly; an export's `include`)."""
    protection: Protection | None = None
    """The privacy rules the source's SQL applies in its scan (see `protect.py`)."""
    after_uuid: str | None = None
    """A stream's cursor: only events after (`start`, this uuid) in (`time_field`, uuid) order."""
    read_memory_mb: int = READ_MEMORY_MB
    """DuckDB's cap for this read before its filters and selected properties add theirs
    (`sources.duckdb.memory_for`)."""
    event_time: tuple[datetime, datetime] | None = None
    """Only events whose own `timestamp` is in [first, second): one partition of a layout by event time,
    whatever `time_field` the window is on."""
    order: tuple[str, ...] = ()
    """SQL expressions over the events table's columns (named `events.column`) that rows come sorted by:
    a layout's partitions, each one run of rows (within a page, for stores read in pages)."""
    ordered: bool = False
    """Rows in (`time_field`, uuid) order (streams), and at most `limit` of them."""
    limit: int | None = None

    @classmethod
    def from_request(
        cls, request: ExportRequest, project: str, *, property_columns: bool = False, text_timestamps: bool = False
    ) -> EventQuery:
        props = tuple(request.properties) if request.properties is not None else None
        return cls(
            project=project,
            start=request.start_date,
            end=request.end_date,
            events=tuple(request.events),
            filters=tuple(request.filters),
            properties=props,
            property_columns=property_columns and props is not None,
            text_timestamps=text_timestamps,
            time_field=request.time_field,
            ids=tuple(c for c in IDS if c in request.include),
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The columns of every batch a source yields for this query, in order (pyarrow's not loaded)."""
        middle = tuple(self.properties or ()) if self.property_columns else ("properties",)
        return ("event", "distinct_id", "timestamp", *middle, *self.ids)

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        """Each column's name and kind (pyarrow's not loaded): `text`, but for `timestamp` (unless
        `text_timestamps`) and `inserted_at` (writers format it as they need), `timestamp`."""
        kinds = ["text", "text", "text" if self.text_timestamps else "timestamp"]  # by place: a property may be so named
        kinds += ["text"] * (len(self.names) - 3 - len(self.ids))
        kinds += ["timestamp" if name == "inserted_at" else "text" for name in self.ids]
        return tuple(zip(self.names, kinds))

    @property
    def schema(self) -> pa.Schema:
        """The schema of every batch a source yields for this query (`columns`): a `timestamp` is
        timestamp[us, UTC], text is string."""
        import pyarrow as pa

        types = {"text": pa.string(), "timestamp": pa.timestamp("us", tz="UTC")}
        return pa.schema([pa.field(name, types[kind]) for name, kind in self.columns])


@dataclass(frozen=True)
class Selection:
    """DuckDB SQL over a query's events (named by the events table's columns): `columns`, for the events
    that also meet `where`, grouped by the first `group` columns if any. Over a store read in pages,
    each page is grouped on its own: aggregates come back partial, for the caller to combine."""

    columns: tuple[str, ...]
    where: tuple[str, ...] = ()
    group: int = 0


class EventSource(Protocol):
    def batches(self, query: EventQuery, batch_size: int) -> pa.RecordBatchReader:
        """Matching events as a stream of batches of at most `batch_size` rows, in `query.schema`."""

    def count(self, query: EventQuery) -> int:
        """How many events match (for progress display)."""

    def estimate(self, query: EventQuery) -> int:
        """Events of the query's project and window before event and property filters: an upper
        bound read from an index or sort key, cheap enough to plan partitions with."""

    def grouped(self, query: EventQuery, keys: list[str]) -> dict[tuple, int]:
        """How many events match for each value of the DuckDB SQL expressions `keys` (over the events
        table's columns)."""

    def select(self, query: EventQuery, selections: list[Selection]) -> Iterator[tuple[int, pa.RecordBatch]]:
        """Each selection's rows over the query's events, as (its index, a batch): what derived models
        (`derived/`) read instead of whole events."""


class EventStore(EventSource, Protocol):
    """A source that also stores events (ingest, demo); one module per engine."""

    def insert(self, select_sql: str, params: list[Any] | dict[str, Any] | None = None) -> int:
        """Store the rows of DuckDB SQL `select_sql` (the events columns), skipping known uuids."""

    def execute(self, text: str, params: list[Any] | dict[str, Any]) -> Any:
        """Run DuckDB SQL (reading an ingest file) where `insert` can read its result."""

    def is_empty(self) -> bool: ...

    def close(self) -> None: ...


__all__ = ["EventQuery", "EventSource", "RFC3339", "Selection", "utc_strftime"]
