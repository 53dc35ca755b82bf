"""Event stores on another engine: the engine selects a project's events in a time window on its
own index and streams them as Arrow; an in-process DuckDB applies event names, property filters and
the projection with the same SQL the embedded store runs, so every store answers every query
identically, with no Python row loop. Ingest stages rows in that DuckDB and bulk-loads them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterator

import duckdb
import pyarrow as pa

from . import EventQuery, Selection, finite
from .duckdb import SqlBuilder, selected, translated_errors

PAGE_MB = 12
"""Arrow megabytes of a page of a scan, about (at most twice that): its rows follow from this and the
width of the rows read so far. Engines' clients buffer a whole result (ADBC's COPY reader and chDB held
1M events as 700 MB), so scans read the window in time slices of bounded size, and the process holds a
page a few times over (the client's buffers, the page, DuckDB's filtered batches). PostgreSQL, demo
events (330 bytes a row) to Parquet as a whole process, which peaks at 209 MB for no event: 1M events
at 4 MB pages 281 MB, 16 MB 286 MB, 32 MB 350 MB; 5M at 12 MB 280 MB. Smaller pages cost PostgreSQL
time (a query each, over heap pages that other pages share); chDB holds more of its own (see
`clickhouse.py`)."""

PAGE_ROWS = 100_000
"""Rows per page at most, however narrow the rows."""

ROW_BYTES = 1024
"""The width a row is taken to have until a page has been read: wider than most events."""

MIN_SLICE = timedelta(milliseconds=1)

STAGED = ('SELECT uuid::VARCHAR AS uuid, project_id, event, distinct_id, "timestamp", '
          "properties::VARCHAR AS properties, inserted_at FROM ({select})")


class ScannedStore:
    page_mb = PAGE_MB
    page_rows = PAGE_ROWS
    finite = False
    """Whether the engine's `properties` can hold only strict JSON (no NaN or Infinity): if not, exports
    look for them (other programs may write to the table)."""

    def __init__(self, memory_limit: str, threads: int) -> None:
        self.duck = duckdb.connect(":memory:", config={"memory_limit": memory_limit, "threads": threads,
                                                       "preserve_insertion_order": False})
        self.duck.execute("SET TimeZone = 'UTC'")
        self.duck.execute("SET enable_progress_bar = false")

    def page(self, query: EventQuery, lo: datetime, hi: datetime, limit: int) -> list[pa.RecordBatch]:
        """At most `limit` of the project's events with `query.time_field` in [lo, hi), every column."""
        raise NotImplementedError

    def first_after(self, query: EventQuery, lo: datetime) -> datetime | None:
        """The earliest `query.time_field` at or after `lo` and before `query.end`; None if there is none."""
        raise NotImplementedError

    def scan(self, query: EventQuery) -> Iterator[pa.RecordBatch]:
        """The window as consecutive half-open time slices, each sized from the rows per second and the
        bytes per row seen so far to hold about `page_mb` (and at most `page_rows` rows): every row
        exactly once, with no ORDER BY. A slice that reaches twice that is dropped and read again 4 times
        narrower, so memory stays bounded by a page."""
        lo, span, width = self.first_after(query, query.start), timedelta(hours=1), float(ROW_BYTES)
        while lo is not None and lo < query.end:
            hi, cap = min(lo + span, query.end), 2 * self.rows_for(width)
            batches = [b for b in self.page(query, lo, hi, cap + 1) if b.num_rows]
            rows = sum(b.num_rows for b in batches)
            width = sum(b.nbytes for b in batches) / rows if rows else width
            if rows > min(cap, 2 * self.rows_for(width)) and span > MIN_SLICE:
                span /= 4
                continue
            yield from batches
            span = span * min(16.0, max(0.25, self.rows_for(width) / rows)) if rows else span
            lo = hi if rows else self.first_after(query, hi)

    def rows_for(self, width: float) -> int:
        """The rows a page holds: `page_mb` of rows `width` bytes wide, at most `page_rows`."""
        return max(1, min(self.page_rows, int(self.page_mb * 2**20 / max(width, 1.0))))

    def batches(self, query: EventQuery, batch_size: int) -> pa.RecordBatchReader:
        """The engine's batches, each filtered and projected on its own: memory holds one batch (a
        DuckDB scan of the whole stream read far ahead of its consumer: 1 GB for 1M events)."""
        sql = SqlBuilder()
        text = sql.select(query)
        return pa.RecordBatchReader.from_batches(
            query.schema, self._each(self.scan(query), text, sql.params, query.schema, batch_size,
                                     not query.property_columns and not self.finite))

    def count(self, query: EventQuery) -> int:
        sql = SqlBuilder()
        text = sql.select(query, ["count(*) AS n"])
        return sum(batch.column(0)[0].as_py() for batch in self._each(self.scan(query), text, sql.params))

    def grouped(self, query: EventQuery, keys: list[str]) -> dict[tuple, int]:
        sql = SqlBuilder()
        text = sql.select(query, [*keys, "count(*)"]) + f" GROUP BY {', '.join(map(str, range(1, len(keys) + 1)))}"
        counts: dict[tuple, int] = {}
        for batch in self._each(self.scan(query), text, sql.params):
            for row in zip(*(column.to_pylist() for column in batch.columns)):
                counts[row[:-1]] = counts.get(row[:-1], 0) + row[-1]
        return counts

    def select(self, query: EventQuery, selections: list[Selection]) -> Iterator[tuple[int, pa.RecordBatch]]:
        """Each page read once and every selection run over it."""
        texts = []
        for selection in selections:
            sql = SqlBuilder()
            texts.append((selected(sql, query, selection), sql.params))
        for page in self.scan(query):
            for index, (text, params) in enumerate(texts):
                for batch in self._each(iter([page]), text, params):
                    yield index, batch

    def _each(self, source: Iterator[pa.RecordBatch], text: str, params: list[Any], schema: pa.Schema | None = None,
              batch_size: int = 1 << 30, scrub: bool = False) -> Iterator[pa.RecordBatch]:
        """`text` run over each batch of `source`, in `schema` if given, streamed in batches of at most
        `batch_size` rows; with `scrub`, NaN and Infinity in the `properties` JSON made null."""
        for batch in source:
            self.duck.register("events", batch)
            try:
                with translated_errors():
                    for out in self.duck.sql(text, params=params).to_arrow_reader(min(batch_size, 1 << 20)):
                        out = out if schema is None else pa.RecordBatch.from_arrays(out.columns, schema=schema)
                        yield finite(out) if scrub else out
            finally:
                self.duck.unregister("events")

    def execute(self, text: str, params: list[Any] | dict[str, Any]) -> duckdb.DuckDBPyConnection:
        """Staging SQL (reading an ingest file) in the in-process DuckDB."""
        with translated_errors():
            return self.duck.execute(text, params)

    def insert(self, select_sql: str, params: list[Any] | dict[str, Any] | None = None) -> int:
        """Insert rows of DuckDB SQL `select_sql` (the events columns), skipping uuids already stored."""
        with translated_errors():
            rows = self.duck.sql(STAGED.format(select=select_sql), params=params or []).to_arrow_reader(65_536)
        return self.load(rows)

    def close(self) -> None:
        self.duck.close()
