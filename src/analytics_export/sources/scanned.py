"""Event stores on another engine: the engine selects a project's events in a time window on its
own index and streams them as Arrow; an in-process DuckDB applies event names, property filters and
the projection with the same SQL the embedded store runs, so every store answers every query
identically, with no Python row loop. Ingest stages rows in that DuckDB and bulk-loads them."""

from __future__ import annotations

from typing import Any, Iterator

import duckdb
import pyarrow as pa

from . import EventQuery
from .duckdb import SqlBuilder, translated_errors

PAGE_ROWS = 50_000
"""Rows per page of a scan: engines' clients buffer a whole result (ADBC's COPY reader and chDB held
1M events as 700 MB), so scans read the window in keyset pages of bounded size instead."""

STAGED = ('SELECT uuid::VARCHAR AS uuid, project_id, event, distinct_id, "timestamp", '
          "properties::VARCHAR AS properties, inserted_at FROM ({select})")


class ScannedStore:
    page_rows = PAGE_ROWS

    def __init__(self, memory_limit: str, threads: int) -> None:
        self.duck = duckdb.connect(":memory:", config={"memory_limit": memory_limit, "threads": threads,
                                                       "preserve_insertion_order": False})
        self.duck.execute("SET TimeZone = 'UTC'")
        self.duck.execute("SET enable_progress_bar = false")

    def page(self, query: EventQuery, after: tuple[Any, str] | None) -> list[pa.RecordBatch]:
        """Up to `page_rows` of the project's events with `query.time_field` in [start, end), every
        column, ordered by (time_field, uuid) and after that key when given."""
        raise NotImplementedError

    def scan(self, query: EventQuery) -> Iterator[pa.RecordBatch]:
        """The whole window, page after page; each page resumes after the last row's key."""
        after = None
        while True:
            batches = [b for b in self.page(query, after) if b.num_rows]
            yield from batches
            rows = sum(b.num_rows for b in batches)
            if rows < self.page_rows:
                return
            last = batches[-1]
            after = (last.column(query.time_field)[-1].as_py(), str(last.column("uuid")[-1].as_py()))

    def load(self, rows: pa.RecordBatchReader) -> int:
        """Store `rows` (the STAGED columns), skipping uuids already stored; returns rows added."""
        raise NotImplementedError

    def batches(self, query: EventQuery, batch_size: int) -> pa.RecordBatchReader:
        """The engine's batches, each filtered and projected on its own: memory holds one batch (a
        DuckDB scan of the whole stream read far ahead of its consumer: 1 GB for 1M events)."""
        sql = SqlBuilder()
        text = sql.select(query)
        return pa.RecordBatchReader.from_batches(
            query.schema, self._each(self.scan(query), text, sql.params, query.schema, batch_size))

    def count(self, query: EventQuery) -> int:
        sql = SqlBuilder()
        text = sql.select(query, ["count(*) AS n"])
        return sum(batch.column(0)[0].as_py() for batch in self._each(self.scan(query), text, sql.params))

    def _each(self, source: Iterator[pa.RecordBatch], text: str, params: list[Any], schema: pa.Schema | None = None,
              batch_size: int = 1 << 30) -> Iterator[pa.RecordBatch]:
        for batch in source:
            self.duck.register("events", batch)
            try:
                with translated_errors():
                    table = self.duck.sql(text, params=params).to_arrow_table()
            finally:
                self.duck.unregister("events")
            for out in table.to_batches(max_chunksize=batch_size):
                yield out if schema is None else pa.RecordBatch.from_arrays(out.columns, schema=schema)

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
