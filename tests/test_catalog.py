"""What the web console asks before an export, through a real uvicorn server: event names and
property names seen in a window (checked against plain SQL on the store), the first 20 rows an
export would hold (each one a row of the real export), a cron's next runs, and bad input as 4xx."""

from __future__ import annotations

import json
from collections import Counter
from contextlib import closing
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import duckdb
import pytest
from conftest import with_demo_events
from helpers import write_jsonl
from service import Service, create_key, wait_for

from analytics_export import Settings, open_store
from analytics_export.ingest import ingest_file

DEMO = {"start": "2026-08-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"}
MARCH = {"start": "2025-03-01T00:00:00Z", "end": "2025-04-01T00:00:00Z"}


def own_events() -> list[dict]:
    """Project `private`: 300 events in March 2025 with an email, an ssn and a plan."""
    start = datetime(2025, 3, 1, tzinfo=ZoneInfo("UTC"))
    return [{"event": ["signup", "purchase", "Ünïcødé ✓"][i % 3], "distinct_id": f"user-{i % 7}",
             "timestamp": (start + timedelta(minutes=i)).isoformat(),
             "properties": {"email": f"u{i}@example.com", "ssn": f"123-45-{i:04d}", "plan": ["free", "pro"][i % 2],
                            **({"coupon": "X1"} if i % 3 == 1 else {})}}
            for i in range(300)]


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory):
    data = with_demo_events(tmp_path_factory.mktemp("catalog"), 20_000)
    store = open_store(Settings(data_dir=data), read_only=False)
    try:
        ingest_file(store, write_jsonl(tmp_path_factory.mktemp("own") / "own.jsonl", own_events()), "private")
    finally:
        store.close()
    return make_service(data, 1, {"ANALYTICS_EXPORT_EXPORT__MAX_RANGE_DAYS": "120"}, projects=("default", "private"))


def sql(data, text: str, params: list) -> list[tuple]:
    with duckdb.connect(str(Settings(data_dir=data).events_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(text, params).fetchall()


def test_event_names_count_the_window_as_plain_sql_does(service):
    expected = dict(sql(service.data, "SELECT event, count(*) FROM events WHERE project_id = 'default' AND "
                                      "\"timestamp\" >= $1 AND \"timestamp\" < $2 GROUP BY event",
                        [DEMO["start"], DEMO["end"]]))
    with service.client(service.key) as c:
        got = c.get("/api/events/names", params={**DEMO, "limit": 1000})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["sampled"] is False
        assert {i["name"]: i["events"] for i in body["items"]} == expected
        counts = [i["events"] for i in body["items"]]
        assert counts == sorted(counts, reverse=True), "most frequent first"
        page = c.get("/api/events/names", params={**DEMO, "q": "PAGE", "limit": 1}).json()["items"]
        assert len(page) == 1 and "page" in page[0]["name"].lower()
        assert c.get("/api/events/names", params={**DEMO, "q": "no such event"}).json()["items"] == []
    with service.client(service.keys["private"]) as c:  # another project's names never show
        names = {i["name"] for i in c.get("/api/events/names", params=MARCH).json()["items"]}
        assert names == {"signup", "purchase", "Ünïcødé ✓"}
        assert not names & set(expected)


def test_property_names_follow_the_events_and_the_privacy_policy(service):
    with service.client(service.keys["private"]) as c:
        got = c.get("/api/events/properties", params={**MARCH, "event": ["purchase"]})
        assert got.status_code == 200, got.text
        assert {i["name"]: i["events"] for i in got.json()["items"]} == {
            "email": 100, "ssn": 100, "plan": 100, "coupon": 100}
        signup = {i["name"] for i in c.get("/api/events/properties", params={**MARCH, "event": ["signup"]})
                  .json()["items"]}
        assert signup == {"email", "ssn", "plan"}
        put = c.put("/api/projects/private/privacy", json={"deny_properties": ["ssn"]})
        assert put.status_code == 200, put.text
        try:
            listed = {i["name"] for i in c.get("/api/events/properties", params=MARCH).json()["items"]}
            assert listed == {"email", "plan", "coupon"}, "a denied property is not offered"
        finally:
            assert c.delete("/api/projects/private/privacy").status_code == 200


def test_the_preview_is_the_start_of_the_real_export(service):
    body = {"start_date": DEMO["start"], "end_date": DEMO["end"], "format": "csv", "events": ["$pageview"],
            "properties": ["plan", "price"], "filters": [{"property": "price", "operator": "gt", "value": 100}]}
    with service.client(service.key) as c:
        got = c.post("/api/exports/preview", json=body)
        assert got.status_code == 200, got.text
        preview = got.json()
        assert len(preview["rows"]) == 20 and preview["truncated"] is True
        assert preview["columns"] == ["event", "distinct_id", "timestamp", "properties"]
        export_id = c.post("/api/exports", json={**body, "format": "json_lines"}).json()["id"]
        wait_for(c, export_id)
        lines = c.get(f"/api/exports/{export_id}/download").content.splitlines()
    exported = Counter(json.dumps(json.loads(line), sort_keys=True) for line in lines)
    for row in preview["rows"]:
        assert exported[json.dumps(row, sort_keys=True)] >= 1, f"{row} is not in the export"
        assert row["properties"]["price"] > 100 and set(row["properties"]) <= {"plan", "price"}


def test_the_preview_applies_the_policy_and_says_when_there_is_no_more(service):
    body = {"start_date": MARCH["start"], "end_date": MARCH["end"], "events": ["signup"]}
    with service.client(service.keys["private"]) as c:
        assert c.put("/api/projects/private/privacy", json={
            "deny_properties": ["ssn"], "redact": [{"detector": "email"}],
            "pseudonymize_distinct_id": True}).status_code == 200
        try:
            got = c.post("/api/exports/preview", json=body)
            assert got.status_code == 200, got.text
            rows = got.json()["rows"]
            refused = c.post("/api/exports/preview", json={**body, "filters": [
                {"property": "ssn", "operator": "eq", "value": "123-45-0000"}]})
            assert refused.status_code == 422 and "ssn" in refused.json()["detail"], refused.text
            one = c.post("/api/exports/preview", json={**body, "filters": [
                {"property": "plan", "operator": "eq", "value": "free"}], "end_date": "2025-03-01T00:10:00Z"})
            assert one.status_code == 200 and one.json()["truncated"] is False, one.text
            assert len(one.json()["rows"]) == 2  # signup and free: i % 6 == 0, so minutes 0 and 6
        finally:
            assert c.delete("/api/projects/private/privacy").status_code == 200
    assert len(rows) == 20
    for row in rows:
        assert "ssn" not in row["properties"] and "@example.com" not in json.dumps(row)
        assert not row["distinct_id"].startswith("user-"), "distinct_id is pseudonymised"


def test_next_runs_in_words_and_in_the_schedule_time_zone(service):
    with service.client(service.key) as c:
        got = c.get("/api/schedules/next-runs", params={"cron": "30 2 * * 1", "timezone": "Europe/Berlin"})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["description"] == "At 02:30, only on Monday"
        runs = [datetime.fromisoformat(r) for r in body["runs"]]
        assert len(runs) == 5 and runs == sorted(runs) and runs[0] > datetime.now(ZoneInfo("UTC"))
        for run in runs:
            local = run.astimezone(ZoneInfo("Europe/Berlin"))
            assert (local.weekday(), local.hour, local.minute) == (0, 2, 30)
        assert runs[1] - runs[0] in (timedelta(days=7), timedelta(days=7, hours=1), timedelta(days=7, hours=-1))
        assert len(c.get("/api/schedules/next-runs", params={"cron": "@daily", "count": 3}).json()["runs"]) == 3


@pytest.mark.parametrize("path, params, says", [
    ("/api/schedules/next-runs", {"cron": "61 * * * *"}, "is not a cron expression"),
    ("/api/schedules/next-runs", {"cron": "0 2 * * *", "timezone": "Mars/Base"}, "IANA time zone"),
    ("/api/schedules/next-runs", {"cron": "0 0 30 2 *"}, "never fires"),
    ("/api/schedules/next-runs", {"cron": "0 2 * * *", "count": 0}, "count"),
    ("/api/events/names", {"start": "2026-02-01", "end": "2026-01-01"}, "end_date"),
    ("/api/events/names", {"start": "yesterday"}, "start"),
    ("/api/events/properties", {"limit": 5000}, "limit"),
])
def test_bad_input_is_a_422_that_says_what_to_fix(service, path, params, says):
    with service.client(service.key) as c:
        got = c.get(path, params=params)
    assert got.status_code == 422, got.text
    assert says in got.json()["detail"], got.text


def test_a_preview_refuses_what_create_refuses(service):
    with service.client(service.key) as c:
        for body, says in [({"start_date": "2025-01-01", "end_date": "2026-01-01"}, "the most is 120"),
                           ({"start_date": "2026-01-02", "end_date": "2026-01-01"}, "end_date"),
                           ({"start_date": "2026-01-01", "end_date": "2026-01-02", "filters": [
                               {"property": "plan", "operator": "gt", "value": [1]}]}, "filters")]:
            got = c.post("/api/exports/preview", json=body)
            assert got.status_code == 422 and says in got.json()["detail"], got.text
            assert c.post("/api/exports", json=body).json()["detail"] == got.json()["detail"]
    with service.client(None) as anonymous:
        assert anonymous.post("/api/exports/preview", json={}).status_code == 401
        assert anonymous.get("/api/events/names").status_code == 401
        assert anonymous.get("/api/schedules/next-runs", params={"cron": "0 2 * * *"}).status_code == 401


@pytest.mark.server
def test_an_empty_store_answers_empty(tmp_path):
    settings = Settings(data_dir=tmp_path)
    open_store(settings, read_only=False).close()
    svc = Service(tmp_path, 1)
    try:
        key = create_key(tmp_path, "default")
        with svc.client(key) as c:
            assert c.get("/api/events/names").json() == {"items": [], "sampled": False}
            assert c.get("/api/events/properties").json() == {"items": [], "sampled": False}
            got = c.post("/api/exports/preview", json={"start_date": "2026-01-01", "end_date": "2026-01-02"})
            assert got.json() == {"columns": [], "rows": [], "truncated": False}
    finally:
        svc.close()


@pytest.mark.parametrize("sample", [1, 999, 16_385])
def test_a_sample_cut_inside_a_batch_says_it_is_one(demo_settings, sample):
    from analytics_export import catalog
    from analytics_export.models import ExportRequest
    from analytics_export.privacy.policy import Privacy
    from analytics_export.privacy.rules import PrivacyRules
    from analytics_export.sources import EventQuery

    request = ExportRequest(start_date=DEMO["start"], end_date=DEMO["end"])
    with closing(open_store(demo_settings)) as store:
        total = store.count(EventQuery.from_request(request, "default"))
        query = EventQuery.from_request(request, "default")
        cut = catalog.event_names(store, query, Privacy(PrivacyRules()), limit=1000, sample=sample)
    with closing(open_store(demo_settings)) as store:
        whole = catalog.event_names(store, query, Privacy(PrivacyRules()), limit=1000, sample=total)
    assert sum(n for _, n in cut.counts) == sample and cut.sampled
    assert sum(n for _, n in whole.counts) == total and not whole.sampled
