"""PostgreSQL as the event store, read as Arrow through ADBC (binary COPY, no Python row loop).

PostgreSQL selects the project and window on its indexes; see `scanned.py` for the rest.
`properties` is a `json` column: PostgreSQL keeps its text as ingested (minified), so exports are
byte-identical to the embedded store's, where `jsonb` would reorder keys and re-space values.
"""

from __future__ import annotations

import ctypes
import json
import re
import uuid
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any, Iterator

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa

from ..errors import Storage
from . import EventQuery
from .duckdb import TIME_COLUMNS
from .scanned import ScannedStore

SCHEMA_SQL = [
    """CREATE TABLE IF NOT EXISTS events (
        uuid UUID NOT NULL,
        project_id TEXT NOT NULL,
        event TEXT NOT NULL,
        distinct_id TEXT NOT NULL,
        "timestamp" TIMESTAMPTZ NOT NULL,
        properties JSON NOT NULL,
        inserted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (project_id, uuid)
    )""",
    'CREATE INDEX IF NOT EXISTS events_project_timestamp ON events (project_id, "timestamp")',
    "CREATE INDEX IF NOT EXISTS events_project_inserted ON events (project_id, inserted_at)",
]
COLUMNS = 'uuid, project_id, event, distinct_id, "timestamp", properties, inserted_at'


PG_LINKED = ("CASE WHEN event = '$identify' AND json_typeof(properties -> '$anon_distinct_id') = 'string' "
             "THEN properties ->> '$anon_distinct_id' WHEN event = '$create_alias' AND "
             "json_typeof(properties -> 'alias') = 'string' THEN properties ->> 'alias' END")
"""The id an event links to its distinct_id, as `derived/identities.py` LINKED says, in PostgreSQL."""


def pg_object(key: str) -> str:
    """An event's property `key` as JSON text when it is an object, else NULL (PostgreSQL keeps the text)."""
    return f"CASE WHEN json_typeof(properties -> '{key}') = 'object' THEN (properties -> '{key}')::text END"


M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 1 << 20
PAGE = "analytics_export_page"
"""The prefix of the session settings a page's query reads its project and window from."""


def unmapped_when_freed() -> None:
    """glibc mmaps every allocation from 1 MiB (ADBC's COPY buffers, a page's Arrow arrays) and unmaps it
    when freed: its default threshold rises to 32 MiB as such buffers are freed, after which they come
    from heap arenas that keep the memory (1M events to Parquet, 8 MB pages: 308 MB peak, 262 MB so).
    Not for chDB: it kept its peak and cost 8% more CPU. A no-op where the C library has no `mallopt`."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def adbc_uri(url: str) -> str:
    """`postgresql+psycopg://...` (SQLAlchemy style) as libpq takes it."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class PostgresEventStore(ScannedStore):
    finite = True  # its `json` type refuses NaN and Infinity, whoever writes

    def __init__(self, url: str, *, memory_limit: str = "256MB", threads: int = 2) -> None:
        unmapped_when_freed()
        super().__init__(memory_limit, threads)
        try:
            self.pg = adbc.connect(adbc_uri(url))
        except adbc.Error as exc:
            super().close()
            raise Storage(f"cannot connect to the PostgreSQL event store: {first_line(exc)}") from None
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

    def page(self, query: EventQuery, lo: datetime, hi: datetime, limit: int) -> list[pa.RecordBatch]:
        column = TIME_COLUMNS[query.time_field]
        with self.cursor() as cur:
            # The page's values are bound as parameters into the session's settings, and the page query
            # reads them there: a query with parameters of its own ADBC reads whole through libpq before
            # making Arrow of it, one without is a binary COPY converted in 16 MB batches as they come
            # (233k demo events: 115 MB less RSS, a third faster). The index takes the settings as it
            # takes parameters: they are stable for the statement.
            cur.execute(f"SELECT set_config('{PAGE}.project', $1, false), set_config('{PAGE}.lo', $2, false), "
                        f"set_config('{PAGE}.hi', $3, false)", (query.project, lo.isoformat(), hi.isoformat()))
            cur.fetchall()
            cur.execute(f"SELECT {COLUMNS} FROM events WHERE project_id = current_setting('{PAGE}.project') "
                        f"AND {column} >= current_setting('{PAGE}.lo')::timestamptz "
                        f"AND {column} < current_setting('{PAGE}.hi')::timestamptz LIMIT {int(limit)}")
            return list(cur.fetch_record_batch())

    def first_after(self, query: EventQuery, lo: datetime) -> datetime | None:
        column = TIME_COLUMNS[query.time_field]
        with self.cursor() as cur:
            cur.execute(f"SELECT min({column}) FROM events WHERE project_id = $1 AND {column} >= $2 AND {column} < $3",
                        (query.project, lo, query.end))
            return cur.fetchone()[0]

    def estimate(self, query: EventQuery) -> int:
        """The planner's row estimate from its statistics: instant, where count(*) over a year of a
        busy project would read the whole index range."""
        column = TIME_COLUMNS[query.time_field]
        with self.cursor() as cur:
            cur.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM events WHERE project_id = $1 AND {column} >= $2 "
                        f"AND {column} < $3", (query.project, query.start, query.end))
            return int(json.loads(cur.fetchone()[0])[0]["Plan"]["Plan Rows"])

    def person_facts(self, query: EventQuery, window_start: datetime,
                     only: tuple[str, ...] = ("stats", "links", "sets")) -> Iterator[tuple[str, pa.RecordBatch]]:
        """The persons model's facts (`derived/persons.py` COLUMNS; those named in `only`) of the query's
        events, aggregated by
        PostgreSQL: a GROUP BY on its index instead of every event sent over the wire."""
        column = TIME_COLUMNS[query.time_field]
        where = f"project_id = $1 AND {column} < $2 AND NOT (distinct_id = ANY($3::text[]))"
        base = (query.project, query.end, list(query.protection.suppressed if query.protection else ()))
        for name, sql, params in (
                ("stats", f'SELECT distinct_id, min("timestamp"), max("timestamp"), count(*), count(*) FILTER '
                          f"(WHERE {column} >= $4) FROM events WHERE {where} GROUP BY 1", (*base, window_start)),
                ("links", f"SELECT distinct_id, {PG_LINKED}, {column} FROM events WHERE {where} "
                          "AND event IN ('$identify', '$create_alias')", base),
                ("sets", f'SELECT distinct_id, "timestamp", uuid::text, {pg_object("$set")}, {pg_object("$set_once")} '
                         f"FROM events WHERE {where} AND strpos(properties::text, '\"$set') > 0 "
                         f"AND ({pg_object('$set')} IS NOT NULL "
                         f"OR {pg_object('$set_once')} IS NOT NULL)", base)):
            if name not in only:
                continue
            with self.cursor() as cur:
                cur.execute(sql, params)
                for batch in cur.fetch_record_batch():
                    yield name, batch

    def day_counts(self, project: str, before: datetime) -> list[tuple[date, int]]:
        """Events per UTC day of `project` with a timestamp before `before`, oldest first."""
        with self.cursor() as cur:
            cur.execute("""SELECT (("timestamp" AT TIME ZONE 'UTC')::date)::text AS d, count(*) FROM events
                           WHERE project_id = $1 AND "timestamp" < $2 GROUP BY d ORDER BY d""", (project, before))
            return [(date.fromisoformat(d), int(n)) for d, n in cur.fetchall()]

    def delete_window(self, project: str, start: datetime, end: datetime, inserted_before: datetime,
                      expected: int) -> int:
        """Delete the project's events with a timestamp in [start, end) stored before `inserted_before`,
        in one transaction that commits only if there were exactly `expected`; returns how many there were."""
        with self.cursor() as cur:
            cur.execute('WITH gone AS (DELETE FROM events WHERE project_id = $1 AND "timestamp" >= $2 AND '
                        '"timestamp" < $3 AND inserted_at < $4 RETURNING 1) SELECT count(*) FROM gone',
                        (project, start, end, inserted_before))
            found = int(cur.fetchone()[0])
            if found == expected:  # inside the cursor's block: a failing commit is reported as ours
                self.pg.commit()
            else:
                self.pg.rollback()
        return found

    def is_empty(self) -> bool:
        with self.cursor() as cur:
            cur.execute("SELECT NOT EXISTS (SELECT 1 FROM events)")
            return bool(cur.fetchone()[0])

    def load(self, rows: pa.RecordBatchReader) -> int:
        """Binary COPY into a temporary table, then one INSERT ... ON CONFLICT DO NOTHING."""
        staging = f"staging_{uuid.uuid4().hex[:12]}"
        with self.cursor() as cur:
            cur.adbc_ingest(staging, rows, mode="create", temporary=True)
            cur.execute(f"""INSERT INTO events ({COLUMNS})
                            SELECT DISTINCT ON (project_id, uuid) uuid::uuid, project_id, event, distinct_id,
                                   "timestamp", properties::json, inserted_at FROM {staging}
                            ON CONFLICT (project_id, uuid) DO NOTHING""")
            added = cur.rowcount
            cur.execute(f"DROP TABLE {staging}")
        self.pg.commit()
        return int(added)

    def close(self) -> None:
        super().close()
        self.pg.close()
