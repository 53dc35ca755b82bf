"""ClickHouse as the event store (clickhouse-connect), read as ArrowStream batches.

A MergeTree ordered by (project_id, timestamp, uuid) answers the project and window from its primary
index; see `scanned.py` for the rest. `properties` is a String of minified JSON, exported as stored.
`clickhouse://user:password@host:8123/db` reaches a server over HTTP; `chdb:///path` runs the same
client code on chDB, ClickHouse's in-process engine (the tests use it: no server installs here).

chDB's memory is mostly its own: loading it takes about 210 MB RSS (160 MB of that the pages of its
555 MB library that its initializers touch), so an export of no event peaks at 356 MB and one of
1M-5M demo events at 530-570 MB (pages of `scanned.PAGE_MB`). Query settings (`max_threads`,
`max_block_size`, `max_memory_usage`) changed nothing measurable; `JE_MALLOC_CONF=dirty_decay_ms:0`
(its jemalloc returning freed pages at once) saved about 40 MB for 30% more CPU, so it is not set.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.exceptions import ClickHouseError

from ..errors import Storage
from . import EventQuery
from .duckdb import TIME_COLUMNS
from .scanned import ScannedStore

SCHEMA_SQL = """CREATE TABLE IF NOT EXISTS events (
    uuid UUID,
    project_id String,
    event LowCardinality(String),
    distinct_id String,
    timestamp DateTime64(6, 'UTC'),
    properties String,
    inserted_at DateTime64(6, 'UTC'),
    INDEX inserted inserted_at TYPE minmax GRANULARITY 4
) ENGINE = MergeTree ORDER BY (project_id, timestamp, uuid)"""
COLUMNS = "uuid, project_id, event, distinct_id, timestamp, properties, inserted_at"


CH_LINKED = ("multiIf(event = '$identify' AND JSONType(properties, '$anon_distinct_id') = 'String', "
             "JSONExtractString(properties, '$anon_distinct_id'), event = '$create_alias' AND "
             "JSONType(properties, 'alias') = 'String', JSONExtractString(properties, 'alias'), NULL)")
"""The id an event links to its distinct_id, as `derived/identities.py` LINKED says, in ClickHouse."""


def ch_object(key: str) -> str:
    """An event's property `key` as JSON text when it is an object, else NULL."""
    return f"if(JSONType(properties, '{key}') = 'Object', JSONExtractRaw(properties, '{key}'), NULL)"


def client_for(url: str) -> Any:
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        return clickhouse_connect.get_client(interface="chdb", path=unquote(parts.path) or ":memory:")
    return clickhouse_connect.get_client(dsn=url)


class ClickHouseEventStore(ScannedStore):
    def __init__(self, url: str, *, memory_limit: str = "256MB", threads: int = 2) -> None:
        super().__init__(memory_limit, threads)
        try:
            self.ch = client_for(url)
            self.ch.command(SCHEMA_SQL)
        except (ClickHouseError, OSError) as exc:
            super().close()
            raise Storage(f"cannot open the ClickHouse event store: {str(exc).splitlines()[0]}") from None

    def page(self, query: EventQuery, lo: datetime, hi: datetime, limit: int) -> list[pa.RecordBatch]:
        column = TIME_COLUMNS[query.time_field]
        try:
            return self.ch.query_arrow(
                f"SELECT {COLUMNS} FROM events WHERE project_id = {{project:String}} "
                f"AND {column} >= {{lo:DateTime64(6, 'UTC')}} AND {column} < {{hi:DateTime64(6, 'UTC')}} "
                f"LIMIT {int(limit)}", parameters={"project": query.project, "lo": lo, "hi": hi}).to_batches()
        except ClickHouseError as exc:
            raise Storage(f"ClickHouse event store query failed: {str(exc).splitlines()[0]}") from None

    def first_after(self, query: EventQuery, lo: datetime) -> datetime | None:
        column = TIME_COLUMNS[query.time_field]
        rows = self.ch.query(
            f"SELECT minOrNull({column}) FROM events WHERE project_id = {{project:String}} "
            f"AND {column} >= {{lo:DateTime64(6, 'UTC')}} AND {column} < {{end:DateTime64(6, 'UTC')}}",
            parameters={"project": query.project, "lo": lo, "end": query.end}).result_rows
        first = rows[0][0] if rows else None
        return first.replace(tzinfo=timezone.utc) if first is not None and first.tzinfo is None else first

    def estimate(self, query: EventQuery) -> int:
        column = TIME_COLUMNS[query.time_field]
        return int(self.ch.command(
            f"SELECT count() FROM events WHERE project_id = {{project:String}} "
            f"AND {column} >= {{lo:DateTime64(6, 'UTC')}} AND {column} < {{hi:DateTime64(6, 'UTC')}}",
            parameters={"project": query.project, "lo": query.start, "hi": query.end}))

    def person_facts(self, query: EventQuery, window_start: datetime,
                     only: tuple[str, ...] = ("stats", "links", "sets")) -> Iterator[tuple[str, pa.RecordBatch]]:
        """The persons model's facts (`derived/persons.py` COLUMNS; those named in `only`) of the query's
        events, aggregated by
        ClickHouse: a GROUP BY over its sort key instead of every event sent over the wire."""
        column = TIME_COLUMNS[query.time_field]
        where = (f"project_id = {{project:String}} AND {column} < {{end:DateTime64(6, 'UTC')}} "
                 "AND NOT has({suppressed:Array(String)}, distinct_id)")
        parameters = {"project": query.project, "end": query.end, "start": window_start,
                      "suppressed": list(query.protection.suppressed if query.protection else ())}
        for name, sql in (
                ("stats", f"SELECT distinct_id, min(timestamp), max(timestamp), count(), countIf({column} >= "
                          f"{{start:DateTime64(6, 'UTC')}}) FROM events WHERE {where} GROUP BY distinct_id"),
                ("links", f"SELECT distinct_id, {CH_LINKED}, {column} FROM events WHERE {where} "
                          "AND event IN ('$identify', '$create_alias')"),
                ("sets", f"SELECT distinct_id, timestamp, toString(uuid), {ch_object('$set')}, {ch_object('$set_once')} "
                         f"FROM events WHERE {where} AND position(properties, '\"$set') > 0 "
                         "AND (JSONType(properties, '$set') = 'Object' "
                         "OR JSONType(properties, '$set_once') = 'Object')")):
            if name not in only:
                continue
            try:
                table = self.ch.query_arrow(sql, parameters=parameters)
            except ClickHouseError as exc:
                raise Storage(f"ClickHouse event store query failed: {str(exc).splitlines()[0]}") from None
            for batch in table.to_batches():
                yield name, batch

    def is_empty(self) -> bool:
        return not self.ch.command("SELECT count() FROM events")

    def load(self, rows: pa.RecordBatchReader) -> int:
        """Arrow inserts into a staging table, then one INSERT ... SELECT of the uuids not stored yet. The
        table is the session's (TEMPORARY): one a killed ingest left would otherwise stay for good,
        holding its events in the server's memory."""
        staging = f"staging_{uuid.uuid4().hex[:12]}"
        try:
            self.ch.command(f"CREATE TEMPORARY TABLE {staging} (uuid String, project_id String, event String, "
                            "distinct_id String, timestamp DateTime64(6, 'UTC'), properties String, "
                            "inserted_at DateTime64(6, 'UTC')) ENGINE = Memory")
            for batch in rows:
                self.ch.insert_arrow(staging, pa.Table.from_batches([batch]))
            before = self.ch.command("SELECT count() FROM events")
            self.ch.command(f"""INSERT INTO events ({COLUMNS})
                SELECT toUUID(uuid), project_id, event, distinct_id, timestamp, properties, inserted_at
                FROM {staging}
                WHERE (project_id, toUUID(uuid)) NOT IN (
                    SELECT project_id, uuid FROM events WHERE project_id IN (SELECT project_id FROM {staging}))
                LIMIT 1 BY project_id, uuid""")
            return int(self.ch.command("SELECT count() FROM events")) - int(before)
        except ClickHouseError as exc:
            raise Storage(f"ClickHouse event store insert failed: {str(exc).splitlines()[0]}") from None
        finally:
            self.ch.command(f"DROP TABLE IF EXISTS {staging}")

    def close(self) -> None:
        super().close()
        self.ch.close()
