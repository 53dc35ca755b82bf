"""Sessions: one row per session that ends in the window, by `$session_id` or by a user's gaps between
events, with its entry and exit pages and its first event's referrer, UTM, browser and OS
(docs/models.md, "Sessions")."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable
from datetime import timedelta

import pyarrow as pa

from ..models import ExportRequest
from ..sources import EventQuery, EventSource, Selection
from ..sources.duckdb import SqlBuilder, json_path
from ..privacy.policy import Privacy
from . import Derived, hides, protected_id, protection
from .identities import HISTORY_START, LINK_COLUMNS, links, resolve, timestamp
from .staging import Staging

LOOKBACK = timedelta(hours=24)
"""How far before the window a session's events are read."""

PROPERTIES = {"entry_url": "$current_url", "exit_url": "$current_url", "referrer": "$referrer",
              "utm_source": "utm_source", "utm_medium": "utm_medium", "utm_campaign": "utm_campaign",
              "utm_term": "utm_term", "utm_content": "utm_content", "browser": "$browser", "os": "$os"}
"""Each column taken from an event property, and which (privacy rules follow the property)."""
READ = ["$current_url", *list(PROPERTIES.values())[2:]]
"""The properties staged per event, in the order of `ev.v`."""

text, stamp = pa.string(), pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([("session_id", text), ("distinct_id", text), ("person_id", text), ("started_at", stamp),
                    ("ended_at", stamp), ("duration_seconds", pa.float64()), ("event_count", pa.int64()),
                    ("pageview_count", pa.int64()), *((name, text) for name in PROPERTIES)],
                   metadata={"record": "Session"})

SESSION_ID = json_path("$session_id")
PATHS = f"{[json_path(name) for name in READ]!r}::VARCHAR[]"
VALUES = (f"list_transform([{{'t': json_type(properties, {PATHS}), 's': json_extract_string(properties, {PATHS})}}], "
          f"lambda f: list_transform(range(1, {len(READ) + 1}), lambda i: CASE WHEN f.t[i] = 'NULL' THEN NULL "
          "ELSE f.s[i] END))[1]")


def staged(request: ExportRequest) -> Selection:
    """Each event that may belong to a session ending in the window: its id, time, name, `$session_id`
    (a non-empty string, else NULL) and the properties of `READ` (text, JSON text if not a string)."""
    sid = (f"CASE WHEN json_type(properties, '{SESSION_ID}') = 'VARCHAR' "
           f"THEN nullif(json_extract_string(properties, '{SESSION_ID}'), '') END")
    gap = timedelta(minutes=request.session_gap_minutes)
    return Selection(("distinct_id", '"timestamp"', "CAST(uuid AS VARCHAR)", "event", sid, VALUES, "inserted_at"),
                     where=(f'"timestamp" >= {timestamp(request.start_date - LOOKBACK)}',
                            f'"timestamp" < {timestamp(request.end_date + gap)}'))


SESSIONS = """
WITH gaps AS (
    SELECT *, CASE WHEN lag(ts) OVER w IS NULL OR epoch_us(ts) - epoch_us(lag(ts) OVER w) > {gap} THEN 1 ELSE 0 END
              AS starts
    FROM ev WHERE sid IS NULL WINDOW w AS (PARTITION BY distinct_id ORDER BY ts, uuid)),
numbered AS (
    SELECT *, sum(starts) OVER (PARTITION BY distinct_id ORDER BY ts, uuid ROWS UNBOUNDED PRECEDING) AS n FROM gaps),
keyed AS (
    SELECT distinct_id, ts, event, v, inserted_at, {{'t': ts, 'u': uuid}} AS o, false AS by_id,
           first_value(uuid) OVER (PARTITION BY distinct_id, n ORDER BY ts, uuid) AS key FROM numbered
    UNION ALL
    SELECT distinct_id, ts, event, v, inserted_at, {{'t': ts, 'u': uuid}}, true, sid FROM ev WHERE sid IS NOT NULL),
sessions AS (
    SELECT by_id, key, arg_min(distinct_id, o) AS distinct_id, min(ts) AS started_at,
           max(ts) AS ended_at, count(*) AS events, count(*) FILTER (WHERE event = '$pageview') AS pageviews,
           arg_min(v[1], o) FILTER (WHERE v[1] IS NOT NULL) AS entry_url,
           arg_max(v[1], o) FILTER (WHERE v[1] IS NOT NULL) AS exit_url,
           arg_min(v, o) AS f, bool_or(inserted_at >= {late_from} AND inserted_at < {late_to}) AS touched
    FROM keyed GROUP BY by_id, key)
"""


def derive(request: ExportRequest, source: EventSource, query: EventQuery, privacy: Privacy | None,
           batch_size: int, should_stop: Callable[[], bool] | None = None) -> Derived:
    """The sessions ending in `request`'s window, and the earlier ones that events stored since the last
    window was final changed (listed in the manifest's `updated_sessions`), keyed by `session_id`."""
    protect = protection(privacy)
    gap = timedelta(minutes=request.session_gap_minutes)
    staging = Staging(should_stop, request.id)
    try:
        history = replace(query, start=HISTORY_START, end=request.end_date, time_field="timestamp")
        pushed = getattr(source, "person_facts", None)
        if pushed is not None:  # the engine finds the links; its scan reads only the window's events
            staging.fill({"links": LINK_COLUMNS}, pushed(history, request.start_date, only=("links",)))
        else:
            staging.load(source, history, {"links": links(request.end_date, '"timestamp"')})
        staging.load(source, replace(query, start=request.start_date - LOOKBACK, end=request.end_date + gap,
                                     time_field="timestamp"), {
            "ev": ("distinct_id VARCHAR, ts TIMESTAMPTZ, uuid VARCHAR, event VARCHAR, sid VARCHAR, v VARCHAR[], "
                   "inserted_at TIMESTAMPTZ", staged(request)),
        })
        resolve(staging, protect)
        sql = SqlBuilder()
        start, end = sql.bind(request.start_date), sql.bind(request.end_date)
        late = f"ended_at < {start} AND touched"
        sessions = SESSIONS.format(gap=int(gap.total_seconds()) * 1_000_000, late_from=timestamp(request.start_date + gap),
                                   late_to=timestamp(request.end_date + gap))
        staging.run(f"CREATE TABLE chosen AS {sessions} "
                    f"SELECT *, {late} AS late FROM sessions WHERE (ended_at >= {start} AND ended_at < {end}) OR ({late})",
                    sql.params)
        sql = SqlBuilder()

        def column(name: str, read: str) -> str:
            return "NULL" if hides(privacy, name) else protect.column(sql.bind, name, lambda: read)

        updated = [row[0] for row in staging.run(f"SELECT {CASE_ID.format(column('$session_id', 'key'))} FROM chosen WHERE late ORDER BY by_id, key",
                                                 sql.params).fetchall()]
        sql = SqlBuilder()
        first = {name: f"f[{READ.index(prop) + 1}]" for name, prop in PROPERTIES.items()}
        values = [column(PROPERTIES[name], name if name in ("entry_url", "exit_url") else first[name])
                  for name in PROPERTIES]
        text = (f"SELECT {CASE_ID.format(column('$session_id', 'key'))}, {protected_id(sql, protect, 'distinct_id')}, "
                f"{protected_id(sql, protect, 'coalesce(labels.label, distinct_id)')}, started_at, ended_at, "
                "(epoch_us(ended_at) - epoch_us(started_at)) / 1e6, events, pageviews, "
                f"{', '.join(values)} FROM chosen LEFT JOIN labels ON labels.id = chosen.distinct_id ORDER BY by_id, key")
    except BaseException:
        staging.close()
        raise
    notes = {"updated_sessions": updated} if updated else {}
    return Derived(SCHEMA, staging.rows(text, sql.params, SCHEMA, batch_size, close=True), "session_id", (), notes)


CASE_ID = "CASE WHEN by_id THEN {} ELSE key END"
"""A session's id: its `$session_id` under that property's privacy rules, or its first event's uuid."""
