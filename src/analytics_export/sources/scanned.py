"""Event stores on another engine: the engine selects a project's events in a time window on its
own index and streams them as Arrow; an in-process DuckDB applies event names, property filters and
the projection with the same SQL the embedded store runs, so every store answers every query
identically, with no Python row loop. Ingest stages rows in that DuckDB and bulk-loads them."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from . import EventQuery
from .duckdb import SqlBuilder, _renamed, translated_errors

STAGED = ('SELECT uuid::VARCHAR AS uuid, project_id, event, distinct_id, "timestamp", '
          "properties::VARCHAR AS properties, inserted_at FROM ({select})")


class ScannedStore:
    def __init__(self, memory_limit: str, threads: int) -> None:
        self.duck = duckdb.connect(":memory:", config={"memory_limit": memory_limit, "threads": threads,
                                                       "preserve_insertion_order": False})
        self.duck.execute("SET TimeZone = 'UTC'")
        self.readers: list[pa.RecordBatchReader] = []

    def scan(self, query: EventQuery) -> pa.RecordBatchReader:
        """Every column of the project's events with `query.time_field` in [start, end)."""
        raise NotImplementedError

    def load(self, rows: pa.RecordBatchReader) -> int:
        """Store `rows` (the STAGED columns), skipping uuids already stored; returns rows added."""
        raise NotImplementedError

    def batches(self, query: EventQuery, batch_size: int) -> pa.RecordBatchReader:
        sql = SqlBuilder()
        text = sql.select(query)
        self.duck.register("events", self.scan(query))
        with translated_errors():
            reader = self.duck.sql(text, params=sql.params).to_arrow_reader(batch_size)
        self.readers.append(reader)
        return _renamed(reader, query.schema)

    def count(self, query: EventQuery) -> int:
        sql = SqlBuilder()
        text = sql.select(query, ["count(*)"])
        self.duck.register("events", self.scan(query))
        with translated_errors():
            return int(self.duck.execute(text, sql.params).fetchall()[0][0])

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
        for reader in self.readers:
            reader.close()
        self.duck.close()
