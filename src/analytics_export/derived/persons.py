"""Persons: one row per person that has an event in the window, merged from its ids, with the
properties its `$set` and `$set_once` made (docs/models.md, "Persons")."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import pyarrow as pa

from ..models import ExportRequest
from ..sources import EventQuery, EventSource, Selection
from ..sources.duckdb import TIME_COLUMNS, SqlBuilder, json_path
from ..privacy.policy import Privacy
from ..formats import JSON_TEXT
from . import Derived, protected_id, protection
from .identities import HISTORY_START, LINK_COLUMNS, links, resolve, timestamp
from .staging import Staging

SCHEMA = pa.schema([
    pa.field("person_id", pa.string()),
    pa.field("distinct_ids", pa.string(), metadata=JSON_TEXT),
    pa.field("properties", pa.string(), metadata=JSON_TEXT),
    pa.field("first_seen", pa.timestamp("us", tz="UTC")),
    pa.field("last_seen", pa.timestamp("us", tz="UTC")),
    pa.field("event_count", pa.int64()),
], metadata={"record": "Person"})


def settings_object(key: str) -> str:
    """An event's `$set` or `$set_once` as JSON text when it is an object, else NULL."""
    path = json_path(key)
    return f"CASE WHEN json_type(properties, '{path}') = 'OBJECT' THEN CAST(json_extract(properties, '{path}') AS VARCHAR) END"


COLUMNS = {"stats": "distinct_id VARCHAR, first_seen TIMESTAMPTZ, last_seen TIMESTAMPTZ, n_all BIGINT, n_window BIGINT",
           "links": LINK_COLUMNS,
           "sets": "distinct_id VARCHAR, ts TIMESTAMPTZ, uuid VARCHAR, set_json VARCHAR, once_json VARCHAR"}
"""The staged tables: each id's times and counts, the links, and the events that set properties."""


def load(staging: Staging, source: EventSource, request: ExportRequest, query: EventQuery) -> None:
    """Stage the window's history (`COLUMNS`): aggregated by the store's engine where it can
    (`person_facts`), else selected with the DuckDB SQL every store runs."""
    pushed = getattr(source, "person_facts", None)
    if pushed is not None:
        staging.fill(COLUMNS, pushed(query, request.start_date))
        return
    time = TIME_COLUMNS[request.time_field]
    sets, once = settings_object("$set"), settings_object("$set_once")
    staging.load(source, query, {
        "stats": (COLUMNS["stats"], Selection(("distinct_id", 'min("timestamp")', 'max("timestamp")', "count(*)",
                                               f"count(*) FILTER (WHERE {time} >= {timestamp(request.start_date)})"),
                                              group=1)),
        "links": links(request.end_date, time),
        "sets": (COLUMNS["sets"], Selection(("distinct_id", '"timestamp"', "CAST(uuid AS VARCHAR)", sets, once),
                                            where=("contains(CAST(properties AS VARCHAR), '\"$set')",
                                                   f"{sets} IS NOT NULL OR {once} IS NOT NULL"))),
    })


PEOPLE = """
WITH members AS (
    SELECT l.label AS person, l.id, s.first_seen, s.last_seen, s.n_all, s.n_window
    FROM labels l LEFT JOIN (SELECT distinct_id, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
                                    sum(n_all) AS n_all, sum(n_window) AS n_window FROM stats GROUP BY 1) s
    ON s.distinct_id = l.id),
people AS (
    SELECT person, list(id ORDER BY id) AS ids, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
           sum(n_all) AS n_all, sum(n_window) AS n_window
    FROM members GROUP BY person HAVING sum(n_window) > 0),
kv AS (
    SELECT l.label AS person, j.key, CAST(j.value AS VARCHAR) AS value, 0 AS once, x.ts, x.uuid
    FROM sets x JOIN labels l ON l.id = x.distinct_id, json_each(CAST(x.set_json AS JSON)) j
    WHERE x.set_json IS NOT NULL
    UNION ALL
    SELECT l.label, j.key, CAST(j.value AS VARCHAR), 1, x.ts, x.uuid
    FROM sets x JOIN labels l ON l.id = x.distinct_id, json_each(CAST(x.once_json AS JSON)) j
    WHERE x.once_json IS NOT NULL),
chosen AS (
    SELECT person, key, value FROM kv
    QUALIFY row_number() OVER (PARTITION BY person, key ORDER BY once,
        CASE WHEN once = 0 THEN ts END DESC, CASE WHEN once = 0 THEN uuid END DESC,
        CASE WHEN once = 1 THEN ts END ASC, CASE WHEN once = 1 THEN uuid END ASC) = 1),
props AS (
    SELECT person, '{' || string_agg(CAST(to_json(key) AS VARCHAR) || ':' || value, ',' ORDER BY key) || '}' AS p
    FROM chosen GROUP BY person),
rows AS (
    SELECT people.*, CAST(coalesce(props.p, '{}') AS JSON) AS p
    FROM people LEFT JOIN props USING (person))
"""


MERGED = """
WITH before AS (
    SELECT prev.label AS person FROM prev JOIN stats ON stats.distinct_id = prev.id
    GROUP BY prev.label HAVING sum(n_all - n_window) > 0)
SELECT {old}, {new} FROM prev JOIN labels USING (id)
WHERE prev.label = id AND labels.label <> id AND labels.label IN (SELECT person FROM people)
  AND id IN (SELECT person FROM before) ORDER BY id
"""
"""Persons with events before the window's start that a link since merged into another: (old
person_id, new)."""


def derive(request: ExportRequest, source: EventSource, query: EventQuery, privacy: Privacy | None,
           batch_size: int, should_stop: Callable[[], bool] | None = None) -> Derived:
    """The persons of `request`'s window, keyed by `person_id`; `removed` and the manifest's
    `merged_persons` name those merged into another since the window's start."""
    protect = protection(privacy)
    staging = Staging(should_stop, request.id)
    try:
        load(staging, source, request, replace(query, start=HISTORY_START, end=request.end_date,
                                               time_field=request.time_field))
        resolve(staging, protect, "SELECT distinct_id AS id FROM stats", before=request.start_date, table="prev")
        resolve(staging, protect, "SELECT distinct_id AS id FROM stats")
        staging.run(f"CREATE TABLE people AS {PEOPLE} SELECT * FROM rows")
        sql = SqlBuilder()
        merged = staging.run(MERGED.format(old=protected_id(sql, protect, "id"), new=protected_id(sql, protect, "labels.label")),
                             sql.params).fetchall()
        sql = SqlBuilder()
        ids = f"list_sort(list_transform(ids, lambda x: {protected_id(sql, protect, 'x')}))"
        properties = protect.object(sql.bind, "p", lambda name: f"json_extract(p, {sql.bind(json_path(name))})")
        count = "n_all" if request.person_event_count == "all" else "n_window"
        text = (f"SELECT {protected_id(sql, protect, 'person')}, CAST(to_json({ids}) AS VARCHAR), "
                f"CAST({properties} AS VARCHAR), first_seen, last_seen, {count} FROM people ORDER BY person")
    except BaseException:
        staging.close()
        raise
    notes = {"merged_persons": [{"person_id": old, "merged_into": new} for old, new in merged]} if merged else {}
    return Derived(SCHEMA, staging.rows(text, sql.params, SCHEMA, batch_size, close=True), "person_id",
                   tuple(old for old, _ in merged), notes)
