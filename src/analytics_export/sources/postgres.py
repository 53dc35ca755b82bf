"""PostgreSQL as the event store: events read as Arrow through ADBC (binary COPY, no Python row loop).

PostgreSQL selects the project and the time window on its indexes; the rows stream as Arrow into an
in-process DuckDB that applies event names, property filters and the projection with the very SQL
the embedded store uses, so every source answers every query identically. `properties` is a `json`
column: PostgreSQL keeps its text as ingested (minified), so exports are byte-identical to the
embedded store's; `jsonb` would reorder keys and re-space values.
"""

from __future__ import annotations

import re
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

import adbc_driver_postgresql.dbapi as adbc
import duckdb
import pyarrow as pa

from ..errors import Invalid, Storage
from . import EventQuery
from .duckdb import TIME_COLUMNS, SqlBuilder, _renamed, translated_errors

SCHEMA_SQL = [
    """CREATE TABLE IF NOT EXISTS events (
        uuid UUID PRIMARY KEY,
        project_id TEXT NOT NULL,
        event TEXT NOT NULL,
        distinct_id TEXT NOT NULL,
        "timestamp" TIMESTAMPTZ NOT NULL,
        properties JSON NOT NULL,
        inserted_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    'CREATE INDEX IF NOT EXISTS events_project_timestamp ON events (project_id, "timestamp")',
    "CREATE INDEX IF NOT EXISTS events_project_inserted ON events (project_id, inserted_at)",
]
COLUMNS = 'uuid, project_id, event, distinct_id, "timestamp", properties, inserted_at'


def adbc_uri(url: str) -> str:
    """`postgresql+psycopg://...` (SQLAlchemy style) as libpq takes it."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


class PostgresEventStore:
    def __init__(self, url: str, *, memory_limit: str = "64MB", threads: int = 2) -> None:
        self.url = url
        try:
            self.pg = adbc.connect(adbc_uri(url))
        except adbc.Error as exc:
            raise Storage(f"cannot connect to the PostgreSQL event store: {first_line(exc)}") from None
        self.duck = duckdb.connect(":memory:", config={"memory_limit": memory_limit, "threads": threads,
                                                       "preserve_insertion_order": False})
        self.duck.execute("SET TimeZone = 'UTC'")
        self.readers: list[pa.RecordBatchReader] = []
        self.open: list[tuple[Any, pa.RecordBatchReader]] = []
        with self.cursor() as cur:
            for statement in SCHEMA_SQL:
                cur.execute(statement)
        self.pg.commit()

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        cur = self.pg.cursor()
        try:
            yield cur
        except adbc.Error as exc:
            self.pg.rollback()
            raise Storage(f"PostgreSQL event store query failed: {first_line(exc)}") from None
        finally:
            cur.close()

    def scan(self, query: EventQuery) -> pa.RecordBatchReader:
        """The project's events in the window, every column, straight from PostgreSQL's indexes."""
        column = TIME_COLUMNS[query.time_field]
        cur = self.pg.cursor()
        try:
            cur.execute(f"SELECT {COLUMNS} FROM events WHERE project_id = $1 AND {column} >= $2 AND {column} < $3",
                        (query.project, query.start, query.end))
            reader = cur.fetch_record_batch()
        except adbc.Error as exc:
            cur.close()
            self.pg.rollback()
            raise Storage(f"PostgreSQL event store query failed: {first_line(exc)}") from None
        self.open.append((cur, reader))  # the cursor owns the stream: it stays open while DuckDB reads
        return reader

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

    def is_empty(self) -> bool:
        with self.cursor() as cur:
            cur.execute("SELECT NOT EXISTS (SELECT 1 FROM events)")
            return bool(cur.fetchone()[0])

    def execute(self, text: str, params: list[Any] | dict[str, Any]) -> duckdb.DuckDBPyConnection:
        """Staging SQL (reading an ingest file) in the in-process DuckDB."""
        with translated_errors():
            return self.duck.execute(text, params)

    def insert(self, select_sql: str, params: list[Any] | dict[str, Any] | None = None) -> int:
        """Insert rows of `select_sql` (DuckDB SQL producing the events columns), skipping uuids
        already stored: streamed into a temporary table by binary COPY, then merged in one statement."""
        staging = f"staging_{uuid.uuid4().hex[:12]}"
        with translated_errors():
            reader = self.duck.sql(f"SELECT uuid::VARCHAR AS uuid, project_id, event, distinct_id, \"timestamp\", "
                                   f"properties::VARCHAR AS properties, inserted_at FROM ({select_sql})",
                                   params=params or []).to_arrow_reader(65_536)
        with self.cursor() as cur:
            cur.adbc_ingest(staging, reader, mode="create", temporary=True)
            cur.execute(f"""INSERT INTO events ({COLUMNS})
                            SELECT DISTINCT ON (uuid) uuid::uuid, project_id, event, distinct_id, "timestamp",
                                   properties::json, inserted_at FROM {staging}
                            ON CONFLICT (uuid) DO NOTHING""")
            added = cur.rowcount
            cur.execute(f"DROP TABLE {staging}")
        self.pg.commit()
        return int(added)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        for cur, reader in self.open:
            reader.close()
            cur.close()
        self.duck.close()
        self.pg.close()


def first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
