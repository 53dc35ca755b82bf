"""The API under abusive and careless input, through a real server: every refusal is a 4xx whose
message names the limit, never a 5xx, and no request, refused or at the limits, raises the API's or
a worker's memory by more than 200 MB or costs more than 5 s of CPU (psutil, /proc peak RSS)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from conftest import with_demo_events
from service import Service, create_key

MB = 1 << 20
MAX_GROWTH = 200 * MB
MAX_CPU = 5.0
WINDOW = {"start_date": "2026-08-01T00:00:00Z", "end_date": "2026-11-01T00:00:00Z", "format": "json_lines"}
PUBLIC_HOOK = {"type": "webhook", "url": "https://hooks.example.com/in"}


@pytest.fixture(scope="module")
def service(make_service: Callable[..., Service], tmp_path_factory: pytest.TempPathFactory) -> Service:
    return make_service(with_demo_events(tmp_path_factory.mktemp("abuse"), 20_000), 1)


def peak_rss(pid: int) -> int:
    """The process's highest resident set size so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


@contextmanager
def bounded(service: Service) -> Iterator[None]:
    """Fails if the API process or any worker grows more than MAX_GROWTH at its peak, or spends more
    than MAX_CPU seconds, while the block runs."""
    processes = [psutil.Process(service.proc.pid), *psutil.Process(service.proc.pid).children()]
    before = {p.pid: (p.memory_info().rss, sum(p.cpu_times()[:2])) for p in processes}
    yield
    for p in processes:
        rss, cpu = before[p.pid]
        grown, spent = peak_rss(p.pid) - rss, sum(p.cpu_times()[:2]) - cpu
        print(f"{' '.join(p.cmdline()[-3:])}: grew {grown / MB:.0f} MB, {spent:.1f} s of CPU")
        assert grown <= MAX_GROWTH, f"{p.pid} ({' '.join(p.cmdline()[-3:])}) grew {grown / MB:.0f} MB"
        assert spent <= MAX_CPU, f"{p.pid} ({' '.join(p.cmdline()[-3:])}) spent {spent:.1f} s of CPU"


def with_filters(*filters: dict) -> dict:
    return {**WINDOW, "filters": list(filters)}


# (what is wrong, the request body's fields, what the message must say)
REFUSED: list[tuple[str, dict, str]] = [
    ("an in-list of 20,000 values", with_filters({"property": "plan", "operator": "in", "value": list(range(20_000))}),
     "the most is 10,000"),
    ("1,000 filters", with_filters(*[{"property": "price", "operator": "gte", "value": i} for i in range(1_000)]),
     "the most is 100"),
    ("filters of 390 kB in all", with_filters(*[{"property": f"p{i}", "operator": "in", "value": [f"v{j:08d}" for j in range(3_000)]}
                                                for i in range(10)]), "the most is 262,144"),
    ("11 in-filters", with_filters(*[{"property": f"p{i}", "operator": "in", "value": ["a"]} for i in range(11)]),
     "the most is 10"),
    ("a 5,000-character value", with_filters({"property": "plan", "operator": "eq", "value": "x" * 5_000}),
     "the most is 4,096"),
    ("a 10**400 filter value", with_filters({"property": "price", "operator": "gt", "value": 10**400}),
     "not a finite number"),
    ("1,001 event names", {**WINDOW, "events": [f"e{i}" for i in range(1_001)]}, "the most is 1,000"),
    ("an event name of 2,000 characters", {**WINDOW, "events": ["e" * 2_000]}, "the most is 1,000"),
    ("201 properties", {**WINDOW, "properties": [f"p{i}" for i in range(201)]}, "the most is 200"),
    ("a format spec in path_template",
     {**WINDOW, "destination": {"type": "s3", "bucket": "lake", "path_template": "{year:>400000000}"}},
     "no format spec"),
    ("a path_template rendering past 900 bytes",
     {**WINDOW, "destination": {"type": "s3", "bucket": "lake", "path_template": "{project}/" * 9}},
     "the most is 900"),
    ("a prefix of 1,000 bytes", {**WINDOW, "destination": {"type": "gcs", "bucket": "lake", "prefix": "a/" * 500}},
     "900"),
]


def schedule_body(body: dict) -> dict:
    fields = {k: v for k, v in body.items() if k not in ("start_date", "end_date")}
    return {"name": "abuse", "schedule": "0 2 * * *", **fields}


def stream_body(body: dict) -> dict:
    fields = {k: v for k, v in body.items() if k not in ("start_date", "end_date")}
    return {"name": "abuse", "destination": PUBLIC_HOOK, **{k: v for k, v in fields.items() if k != "destination"}}


ROUTES: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "preview": ("/api/exports/preview", lambda b: b),
    "export": ("/api/exports", lambda b: b),
    "schedule": ("/api/schedules", schedule_body),
    "stream": ("/api/streams", stream_body),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("what, body, says", REFUSED, ids=[r[0] for r in REFUSED])
def test_oversized_requests_are_refused_at_the_door(service: Service, route: str, what: str, body: dict,
                                                    says: str) -> None:
    path, shaped = ROUTES[route]
    if route == "stream" and "destination" in body:
        pytest.skip("a stream names its own destination")
    with service.client(service.key) as client, bounded(service):
        answer = client.post(path, content=json.dumps(shaped(body)), headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500, (what, answer.status_code, answer.text[:300])
    assert says in answer.json()["detail"], (what, answer.text[:500])


def test_json_numbers_out_of_range_are_422s(service: Service) -> None:
    """`1e400` is infinity to a JSON parser and `NaN` is not JSON: both are refused, not compared."""
    with service.client(service.key) as client, bounded(service):
        for literal in ("1e400", "-1e400", "NaN", "Infinity", "1" + "0" * 400):
            text = json.dumps(with_filters({"property": "price", "operator": "gt", "value": 0})).replace(
                '"value": 0', f'"value": {literal}')
            answer = client.post("/api/exports/preview", content=text, headers={"content-type": "application/json"})
            assert answer.status_code == 422, (literal, answer.text[:300])


AT_THE_LIMITS: list[tuple[str, dict]] = [
    ("an in-list of 10,000 values", with_filters(
        {"property": "plan", "operator": "in", "value": ["growth", *(f"plan-{i}" for i in range(9_999))]})),
    ("a not_in list of 10,000 mixed values", with_filters(
        {"property": "price", "operator": "not_in", "value": [*range(5_000), *(f"{i}" for i in range(4_999)), True]})),
    ("100 filters", with_filters(*[{"property": "price", "operator": "gte", "value": -i} for i in range(100)])),
    ("10 in-filters and 90 others", with_filters(
        *[{"property": ["plan", "price", "$browser"][i % 3], "operator": "not_in", "value": [f"x{j}" for j in range(1_000)]}
          for i in range(10)],
        *[{"property": ["price", "quantity", "plan", "$os"][i % 4], "operator": "is_set"} for i in range(90)])),
    ("200 properties", {**WINDOW, "properties": ["plan", *(f"p{i}" for i in range(199))]}),
    ("1,000 event names", {**WINDOW, "events": ["$pageview", *(f"e{i}" for i in range(999))]}),
]


@pytest.mark.parametrize("what, body", AT_THE_LIMITS, ids=[r[0] for r in AT_THE_LIMITS])
def test_requests_at_the_limits_preview_within_bounds(service: Service, what: str, body: dict) -> None:
    with service.client(service.key) as client, bounded(service):
        answer = client.post("/api/exports/preview", json=body)
    assert answer.status_code == 200, (what, answer.text[:500])
    assert answer.json()["rows"], what


def test_an_export_at_the_limits_runs_within_bounds(service: Service) -> None:
    """The worker, too, stays bounded running an export with a 10,000-value list and 200 columns."""
    from service import wait_for

    body = {**with_filters({"property": "plan", "operator": "not_in", "value": [f"x{i}" for i in range(10_000)]}),
            "properties": [f"p{i}" for i in range(200)], "format": "csv"}
    with service.client(service.key) as client:  # a warm worker: its first export's imports are no request's cost
        wait_for(client, client.post("/api/exports", json={**WINDOW, "format": "csv", "properties": ["plan"]})
                 .json()["id"], timeout=120)
    with service.client(service.key) as client, bounded(service):
        created = client.post("/api/exports", json=body)
        assert created.status_code == 202, created.text[:500]
        done = wait_for(client, created.json()["id"], timeout=120)
    assert done["result"]["total_events"] == 20_000


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\u0000b"])
def test_text_no_store_can_keep_is_a_422(service: Service, route: str, escape: str) -> None:
    """Valid JSON that is no UTF-8 text (a lone surrogate) or holds NUL: a 500 when answered (and a
    PostgreSQL job store refuses NUL), so it is refused with the field named."""
    path, shaped = ROUTES[route]
    text = json.dumps(shaped({**WINDOW, "events": ["signup", "PLACEHOLDER"]})).replace("PLACEHOLDER", escape)
    with service.client(service.key) as client:
        answer = client.post(path, content=text, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text[:300]
    assert answer.json()["detail"].startswith("events.1: text may not hold NUL"), answer.text[:300]


def test_deeply_nested_json_is_a_4xx(service: Service) -> None:
    with service.client(service.key) as client, bounded(service):
        answer = client.post("/api/exports", content="[" * 100_000 + "]" * 100_000,
                             headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500, answer.text[:300]


def events_body(count: int, properties: int) -> bytes:
    lines = ({"event": "upload", "distinct_id": f"u{i}", "timestamp": "2026-09-01T00:00:00Z",
              "properties": {f"k{j}": j for j in range(properties)}} for i in range(count))
    return "\n".join(json.dumps(line) for line in lines).encode()


@pytest.mark.parametrize("what, count, properties", [("68,000 small events", 68_000, 2),
                                                     ("280 events of 2,000 properties", 280, 2_000),
                                                     ("115 events of 5,000 properties", 115, 5_000)])
def test_uploads_at_the_size_limit_stay_within_bounds(service: Service, what: str, count: int, properties: int) -> None:
    """An upload just under max_body_bytes (8 MiB) loads on one thread under its own memory cap: stored,
    or a 413 saying to send fewer events, never the API's memory (1 GB of DuckDB cap before)."""
    body = events_body(count, properties)
    assert 7 << 20 < len(body) <= 8 << 20, len(body)
    with service.client(service.key) as client, bounded(service):
        answer = client.post("/api/events", content=body, headers={"content-type": "application/x-ndjson"})
    assert answer.status_code in (200, 413), (what, answer.text[:300])
    if answer.status_code == 413:
        assert "send fewer events per request" in answer.json()["detail"]
    else:
        assert answer.json()["ingested"] == count


@pytest.mark.parametrize("path", ["/api/events/names?end=0001-01-01T00:00:00Z",
                                  "/api/events/properties?end=0001-01-01T00:00:00Z"])
def test_dates_at_the_edge_of_the_calendar_are_422s(service: Service, path: str) -> None:
    with service.client(service.key) as client:
        answer = client.get(path)
    assert answer.status_code == 422, answer.text[:300]


def test_a_backfill_of_more_windows_than_the_limit_is_a_422_before_anything_is_planned(service: Service) -> None:
    """From year 1 to 9999, hourly, a backfill listed 87M windows in memory; now: at most 10,000."""
    with service.client(service.key) as client, bounded(service):
        created = client.post("/api/schedules", json={"name": "hourly", "schedule": "0 * * * *",
                                                       "date_range": "last_hour", "enabled": False})
        assert created.status_code == 201, created.text[:300]
        schedule = created.json()["schedule"]["id"]
        answer = client.post(f"/api/schedules/{schedule}/backfill",
                             json={"start": "0001-01-02T00:00:00Z", "end": "9999-12-30T00:00:00Z"})
        assert answer.status_code == 422, answer.text[:300]
        assert "more than 10,000 last_hour windows" in answer.json()["detail"]
        assert client.get(f"/api/schedules/{schedule}/runs").json() == [], "nothing was planned"
        missing = client.post("/api/schedules/no-such/backfill", json={"start": "2026-01-01T00:00:00Z",
                                                                       "end": "2026-01-02T00:00:00Z"})
        assert missing.status_code == 404, missing.text[:300]


def test_a_project_holds_bounded_numbers_of_schedules_streams_and_connections(service: Service) -> None:
    """Each is a row the scheduler, the workers or the console go over: no client grows them without
    bound. Filled to the limit through the store, the next one through the API is a 422 naming it."""
    from analytics_export.models import ScheduledExport
    from analytics_export.runtime.scheduler import Schedules
    from analytics_export.store import jobs as job_store
    from analytics_export.store.streams import StreamStore
    from analytics_export.streaming.spec import StreamSpec

    jobs = job_store.JobStore.for_data_dir(service.data)
    schedules, streams = Schedules(jobs), StreamStore(jobs)
    t = job_store.now()
    for i in range(job_store.MAX_SCHEDULES):
        schedules.create("full", ScheduledExport(name=f"s{i}", schedule="0 2 * * *", enabled=False), t)
    for i in range(job_store.MAX_STREAMS):
        streams.create("full", StreamSpec(name=f"s{i}", destination=PUBLIC_HOOK))
    for i in range(job_store.MAX_CONNECTIONS):
        assert jobs.create_connection("full", f"c{i}", "webhook", [], b"")
    key = create_key(service.data, "full")
    with service.client(key) as client:
        answers = {
            "schedules": client.post("/api/schedules", json={"name": "one more", "schedule": "0 2 * * *"}),
            "streams": client.post("/api/streams", json={"name": "one more", "destination": PUBLIC_HOOK}),
            "connections": client.post("/api/connections", json={"name": "one-more", "type": "webhook",
                                                                  "secrets": {"signing_secret": "s" * 32}}),
        }
    for what, answer in answers.items():
        assert answer.status_code == 422, (what, answer.text[:300])
        assert f"this project has 1,000 {what}" in answer.json()["detail"] or \
            f"this project has 100 {what}" in answer.json()["detail"], answer.text[:300]
