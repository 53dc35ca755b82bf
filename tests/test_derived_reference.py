"""The SQL of the persons and sessions models (one implementation, over what each store selects) gives
the rows of the plain-Python reference (`reference_models.py`, written from docs/models.md alone) for
generated histories, on the embedded DuckDB, PostgreSQL and ClickHouse (chDB)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_models import Event, histories, persons, sessions
from test_reference_models import windows

from analytics_export import Settings, open_store
from analytics_export.derived import derive
from analytics_export.models import ExportRequest

PROJECTS = itertools.count()


@pytest.fixture(scope="module")
def stores(tmp_path_factory, pg_url_module) -> dict[str, Any]:
    """One writable store of each engine; each example stores its history under a project of its own."""
    folder = tmp_path_factory.mktemp("stores")
    opened = {name: open_store(Settings(data_dir=folder / name, events_url=url), read_only=False)
              for name, url in (("duckdb", None), ("postgres", pg_url_module), ("clickhouse", f"chdb://{folder / 'ch'}"))}
    yield {**opened, "folder": folder}
    for name, store in opened.items():
        store.close()


def store_events(store: Any, folder: Path, project: str, events: list[Event]) -> None:
    if not events:
        return
    path = folder / f"{project}.jsonl"
    with path.open("w") as out:
        for e in events:
            out.write(json.dumps({"uuid": e.uuid, "project_id": project, "event": e.event, "distinct_id": e.distinct_id,
                                  "timestamp": e.timestamp.isoformat(), "inserted_at": e.inserted_at.isoformat(),
                                  "properties": json.dumps(e.properties, ensure_ascii=False, separators=(",", ":"))},
                                 ensure_ascii=False) + "\n")
    assert store.insert(f"""SELECT CAST(uuid AS UUID) AS uuid, project_id, event, distinct_id,
                                   CAST("timestamp" AS TIMESTAMPTZ) AS "timestamp", CAST(properties AS JSON) AS properties,
                                   CAST(inserted_at AS TIMESTAMPTZ) AS inserted_at
                            FROM read_json('{path}', columns={{uuid: 'VARCHAR', project_id: 'VARCHAR', event: 'VARCHAR',
                                 distinct_id: 'VARCHAR', "timestamp": 'VARCHAR', properties: 'VARCHAR',
                                 inserted_at: 'VARCHAR'}})""") == len(events)


def derived_rows(store: Any, project: str, **fields: Any) -> list[dict]:
    rows = derive(ExportRequest(**fields), store, project, None, 1_000)
    out = [row for batch in rows.batches for row in batch.to_pylist()]
    for row in out:
        for key in ("distinct_ids", "properties"):
            if key in row:
                row[key] = json.loads(row[key])
    return out


def same_text(ours: str | None, theirs: str | None) -> bool:
    """A column's text: equal, or the same JSON value (number spelling, escapes)."""
    if ours == theirs:
        return True
    try:
        return ours is not None and theirs is not None and json.loads(ours) == json.loads(theirs)
    except ValueError:
        return False


def assert_same_sessions(ours: list[dict], theirs: list[dict]) -> None:
    order = lambda row: (row["session_id"].encode(), row["started_at"])  # noqa: E731
    ours, theirs = sorted(ours, key=order), sorted(theirs, key=order)
    assert len(ours) == len(theirs), (ours, theirs)
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        for key in a:
            assert same_text(a[key], b[key]) if isinstance(b[key], str) else a[key] == b[key], (key, a, b)


ENGINES = ["duckdb", "postgres", "clickhouse"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(histories(), windows, st.sampled_from(["timestamp", "inserted_at"]), st.sampled_from(["all", "range"]))
def test_persons_equal_the_reference_on_every_store(stores, events, window, time_field, event_count):
    project = f"persons-{next(PROJECTS)}"
    start, end = window
    if end <= start:
        return
    expected = persons(events, start, end, time_field=time_field, event_count=event_count)
    for engine in ENGINES:
        store_events(stores[engine], stores["folder"], project, events)
        got = derived_rows(stores[engine], project, model="persons", start_date=start, end_date=end,
                           time_field=time_field, person_event_count=event_count)
        assert got == expected, engine


@SETTINGS
@given(histories(), windows, st.sampled_from([1, 30, 60]))
def test_sessions_equal_the_reference_on_every_store(stores, events, window, gap_minutes):
    project = f"sessions-{next(PROJECTS)}"
    start, end = window
    if end <= start:
        return
    expected = sessions(events, start, end, gap_minutes=gap_minutes)
    for engine in ENGINES:
        store_events(stores[engine], stores["folder"], project, events)
        got = derived_rows(stores[engine], project, model="sessions", start_date=start, end_date=end,
                           session_gap_minutes=gap_minutes)
        assert_same_sessions(got, expected)


def at(minutes: float, seconds: float = 0, micro: int = 0):
    from datetime import timedelta

    from reference_models import BASE

    return BASE + timedelta(minutes=minutes, seconds=seconds, microseconds=micro)


def ev(n: int, when, name: str, distinct_id: str, **properties: Any) -> Event:
    return Event(f"00000000-0000-4000-8000-{n:012d}", name, distinct_id, when, properties, when)


EDGES = {
    "a gap of exactly the gap continues, a microsecond more splits": [
        ev(1, at(0), "click", "a"), ev(2, at(30), "click", "a"), ev(3, at(60, micro=1), "click", "a")],
    "$set ties in time go to the larger uuid, $set_once ties to the smaller": [
        ev(2, at(0), "click", "a", **{"$set": {"plan": "b"}, "$set_once": {"x": 2}}),
        ev(1, at(0), "click", "a", **{"$set": {"plan": "a"}, "$set_once": {"x": 1}}),
        ev(3, at(1), "click", "a", **{"$set_once": {"plan": "z"}})],
    "a chain of links read backwards": [
        ev(1, at(5), "$create_alias", "d", alias="c"), ev(2, at(4), "$identify", "c", **{"$anon_distinct_id": "b"}),
        ev(3, at(3), "$identify", "b", **{"$anon_distinct_id": "a"}), ev(4, at(2), "click", "e")],
    "a session id across users, first and last by (time, uuid)": [
        ev(2, at(1), "$pageview", "y", **{"$session_id": "s", "$current_url": "/2", "$browser": "B"}),
        ev(1, at(1), "$pageview", "x", **{"$session_id": "s", "$current_url": "/1", "$browser": "A"}),
        ev(3, at(2), "click", "x", **{"$session_id": "s", "$current_url": None})],
}


@pytest.mark.parametrize("case", EDGES)
def test_the_rules_edges_on_every_store(stores, case):
    project = f"edges-{next(PROJECTS)}"
    events = EDGES[case]
    start, end = at(-60), at(120)
    for engine in ENGINES:
        store_events(stores[engine], stores["folder"], project, events)
        assert derived_rows(stores[engine], project, model="persons", start_date=start, end_date=end) == persons(
            events, start, end), engine
        assert_same_sessions(derived_rows(stores[engine], project, model="sessions", start_date=start, end_date=end),
                             sessions(events, start, end))
