"""Realistic demo events generated inside DuckDB (no Python row loop): 1M events take seconds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .sources.duckdb import DuckDBEventStore

EVENT_NAMES = [
    "$pageview", "$autocapture", "$pageleave", "button_clicked", "search_performed", "product_viewed",
    "$identify", "signup_started", "added_to_cart", "feature_flag_called", "video_played", "form_submitted",
    "file_uploaded", "signup_completed", "checkout_started", "purchase_completed", "invite_sent",
    "comment_posted", "report_exported", "dashboard_created", "subscription_upgraded", "api_key_created",
    "notification_opened", "survey_answered", "error_shown", "password_reset", "team_member_added",
    "integration_connected", "subscription_cancelled", "account_deleted",
]
SEARCH_TERMS = [
    "red shoes", 'shoes, "running"', "line one\nline two", "café crème brûlée", "日本語 検索",
    "🚀 launch, then 🎉", "tab\there", "it's \"quoted\"", "comma,separated,values", "Ünïcödé – dash",
    "back\\slash", "crlf\r\nend",
]
USERS = 200_000
DAYS = 90

# Candidate properties as (name, JSON value expression); an event carries the first 5-15 of them.
PROPERTIES = [
    ("$browser", "to_json(['Chrome', 'Firefox', 'Safari', 'Edge', 'Opera'][1 + h1 % 5])"),
    ("$os", "to_json(['Mac OS X', 'Windows', 'Linux', 'iOS', 'Android'][1 + h2 % 5])"),
    ("$current_url", "to_json('https://app.example.com/' || ['home', 'pricing', 'docs', 'blog/ünïcode', 'search?q=a,b'][1 + h3 % 5])"),
    ("$device_type", "to_json(['Desktop', 'Mobile', 'Tablet'][1 + h4 % 3])"),
    ("$screen_width", "to_json(CAST(320 + h5 % 2241 AS BIGINT))"),
    ("price", "to_json(round((h1 % 100000) / 100.0, 2))"),
    ("quantity", "to_json(CAST(1 + h2 % 9 AS BIGINT))"),
    ("is_first_time", "to_json(h3 % 4 = 0)"),
    ("plan", "to_json(['free', 'starter', 'growth', 'enterprise'][1 + h4 % 4])"),
    ("search_query", f"to_json($terms[1 + h5 % {len(SEARCH_TERMS)}])"),
    ("tags", "to_json(['alpha', 'beta', 'gamma'][1:1 + h1 % 4])"),
    ("referrer", "CASE WHEN h2 % 3 = 0 THEN 'null'::JSON ELSE to_json('https://ref.example.org/' || h2 % 97) END"),
    ("utm_source", "to_json(['google', 'newsletter', 'twitter', 'direct'][1 + h3 % 4])"),
    ("session_duration_ms", "to_json(CAST(h4 % 3600000 AS BIGINT))"),
    ("experiment", "json_object('name', 'checkout-v' || h5 % 3, 'variant', ['control', 'test'][1 + h5 % 2])"),
]


IDENTITY = f"""CASE [{", ".join(f"'{n}'" for n in EVENT_NAMES)}][1 + ei]
    WHEN '$identify' THEN [{{'k': '$anon_distinct_id', 'v': to_json('anon_' || u)}},
                           {{'k': '$set', 'v': json_object('email', 'user' || u || '@example.com', 'tier',
                                                           ['free', 'starter', 'growth', 'enterprise'][1 + h4 % 4])}}]
    WHEN 'signup_started' THEN [{{'k': '$set_once', 'v': json_object('first_plan', 'free', 'signup_day',
                                                                    CAST(CAST(ts AS DATE) AS VARCHAR))}}]
    WHEN '$pageleave' THEN []
    ELSE [{{'k': '$session_id', 'v': to_json('s_' || u || '_' || CAST(epoch(ts) // 1800 AS BIGINT))}}] END"""
"""What makes persons and sessions (docs/models.md): `$identify` links an anonymous id and sets person
properties, `signup_started` sets some once, and most events carry a `$session_id` (a user's half hour);
`$pageleave` has none, so sessions by gap have events too."""


def generate(store: DuckDBEventStore, events: int, project: str, *, end: datetime | None = None) -> int:
    """Insert `events` demo events spread over the 90 days before `end` (default: now); returns rows added."""
    end = (end or datetime.now(timezone.utc)).astimezone(timezone.utc)
    start = end - timedelta(days=DAYS)
    span_us = DAYS * 86_400_000_000
    names = ", ".join(f"'{n}'" for n in EVENT_NAMES)
    entries = ", ".join(f"{{'k': '{name}', 'v': {expr}}}" for name, expr in PROPERTIES)
    select = f"""
        WITH base AS (
            SELECT range AS i,
                   CAST(hash(range, 'e') >> 1 AS BIGINT) AS he, CAST(hash(range, 'u') >> 1 AS BIGINT) AS hu, CAST(hash(range, 't') >> 1 AS BIGINT) AS ht,
                   CAST(hash(range, 1) >> 1 AS BIGINT) AS h1, CAST(hash(range, 2) >> 1 AS BIGINT) AS h2, CAST(hash(range, 3) >> 1 AS BIGINT) AS h3,
                   CAST(hash(range, 4) >> 1 AS BIGINT) AS h4, CAST(hash(range, 5) >> 1 AS BIGINT) AS h5, CAST(hash(range, 'l') >> 1 AS BIGINT) AS hl
            FROM range($events)
        ), picked AS (
            SELECT *, CAST(floor(pow((he % 1000000) / 1000000.0, 2.5) * {len(EVENT_NAMES)}) AS INTEGER) AS ei,
                   CAST(floor(pow((hu % 1000000) / 1000000.0, 1.5) * {USERS}) AS BIGINT) AS u,
                   CAST($start AS TIMESTAMPTZ) + to_microseconds(CAST(ht % {span_us} AS BIGINT)) AS ts
            FROM base
        )
        SELECT uuid() AS uuid, $project AS project_id,
               [{names}][1 + ei] AS event,
               'user_' || u AS distinct_id,
               ts AS "timestamp",
               CAST(to_json(map_from_entries(list_concat(list_slice([{entries}], 1, 5 + (ei * 7 + h1 % 3) % 11),
                   {IDENTITY}))) AS JSON) AS properties,
               least(CAST($end AS TIMESTAMPTZ), "timestamp" + to_microseconds(CAST(CASE WHEN hl % 50 = 0
                   THEN hl % 259200000000 ELSE hl % 5000000 END AS BIGINT))) AS inserted_at
        FROM picked
    """.replace("{IDENTITY}", IDENTITY)
    return store.insert(select, {"events": events, "project": project, "start": start, "end": end, "terms": SEARCH_TERMS})
