"""Demo events look like real product analytics: skewed event mix, mixed property types, awkward text."""

from __future__ import annotations

import duckdb

from conftest import DEMO_END, DEMO_EVENTS


def test_demo_data_is_realistic(demo_settings):
    con = duckdb.connect(str(demo_settings.events_path), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    assert q("SELECT count(*), count(DISTINCT uuid) FROM events") == [(DEMO_EVENTS, DEMO_EVENTS)]
    names = q("SELECT event, count(*) AS n FROM events GROUP BY 1 ORDER BY n DESC")
    assert 25 <= len(names) <= 30
    assert names[0][1] > 10 * names[-1][1], "the mix is skewed"
    assert q("SELECT count(DISTINCT distinct_id) > 5000 FROM events") == [(True,)]
    identity = "['$session_id', '$anon_distinct_id', '$set', '$set_once']"  # what persons and sessions read
    lo, hi = q("SELECT min(n), max(n) FROM (SELECT len(list_filter(json_keys(properties), lambda k: NOT "
               f"list_contains({identity}, k))) AS n FROM events)")[0]
    assert (lo, hi) == (5, 15)
    shares = q("SELECT avg(CAST(json_exists(properties, '$.\"$session_id\"') AS INT)), count(*) FILTER (WHERE "
               "json_exists(properties, '$.\"$anon_distinct_id\"')) FROM events")[0]
    assert shares[0] > 0.8 and shares[1] > 0, "sessions by id, and links to anonymous ids"
    types = {t for (t,) in q("SELECT DISTINCT json_type(value) FROM events, json_each(properties)")}
    assert {"VARCHAR", "DOUBLE", "BOOLEAN", "ARRAY", "OBJECT", "NULL"} <= types and types & {"BIGINT", "UBIGINT"}
    texts = {t for (t,) in q("SELECT DISTINCT properties ->> '$.search_query' FROM events WHERE properties ->> '$.search_query' IS NOT NULL")}
    assert any("," in t and '"' in t for t in texts) and any("\n" in t for t in texts) and any(not t.isascii() for t in texts)
    first, last, late = q("SELECT min(\"timestamp\"), max(\"timestamp\"), bool_and(inserted_at >= \"timestamp\") FROM events")[0]
    assert (DEMO_END - first).days == 89 and last < DEMO_END and late
