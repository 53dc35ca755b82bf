"""GET /api/events/export end to end through a real uvicorn server: the streamed body equals a job's
download of the same request in every format, gzip is negotiated, the response is chunked and a
client that goes away does no harm, the privacy policy applies, and bad input is a 4xx, never a 500."""

from __future__ import annotations

import io
import json
import re
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from analytics_export import Settings, open_store
from analytics_export.demo import generate
from conftest import DEMO_END, expected, with_demo_events
from helpers import RFC3339, canonical, decompress, read_records
from service import wait_for

PATH = "/api/events/export"
MAX_RANGE_DAYS = 120
# The demo events lie in the 90 days before 2026-11-01; the events these tests ingest lie in March 2025.
DEMO_EVENTS = 30_000
# Project `bulk` holds more demo events than the server buffers (its bounded queue of chunks, the
# upload's pending bytes, the sockets'), so a client that leaves early leaves the scan unfinished.
BULK_EVENTS = 100_000
BATCH_SIZE = 1024  # small batches, so small chunks: a stream of many chunks
DEMO_WINDOW = {"start": "2026-08-01", "end": DEMO_END.strftime("%Y-%m-%d")}
WINDOW = {"start": "2025-03-01T00:00:00Z", "end": "2025-04-01T00:00:00Z"}
JOB_WINDOW = {"start_date": WINDOW["start"], "end_date": WINDOW["end"]}
OWN_EVENTS = 500
NAMES = ["signup", "purchase", "page \"view\"", "Ünïcødé ✓ 購入"]
IDENTITY = {"Accept-Encoding": "identity"}
HEX64 = re.compile(r"[0-9a-f]{64}")

SELECTION = {"events": ["purchase", "Ünïcødé ✓ 購入"], "properties": ["plan", "price", "nested", "note"],
             "filters": [{"property": "price", "operator": "gt", "value": 100},
                         {"property": "plan", "operator": "in", "value": ["pro", "team"]}]}


def own_events() -> list[dict[str, Any]]:
    """500 events with nested properties, unicode, quotes, commas and newlines, in March 2025."""
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    out = []
    for i in range(OWN_EVENTS):
        props: dict[str, Any] = {
            "plan": ["free", "pro", "team"][i % 3],
            "n": i,
            "note": f'say "hi", {i}\nsecond line; 日本語 🎉 \\ back\tslash',
            "nested": {"a": {"b": [i, str(i), None, True, {"deep": "ü"}]}, "quote": "it's \"quoted\""},
            "tags": ["x", "y,z", ""],
            "flag": i % 2 == 0,
            "empty": {},
        }
        if i % 7:
            props["price"] = round(i * 1.25, 2)
        ts = start + timedelta(hours=i, seconds=i % 60, microseconds=i * 137)
        out.append({"event": NAMES[i % len(NAMES)], "distinct_id": f"user-{i % 37}" if i % 5 else f"ユーザー \"{i % 11}\"",
                    "timestamp": ts.strftime(RFC3339), "properties": props})
    return out


PRIVATE_USERS = [f"cust-{i:02d}" for i in range(8)]


def email(user: str) -> str:
    return f"{user}@example.com"


def private_events() -> list[dict[str, Any]]:
    """Three purchases a user, each with an email (also inside a longer string) and an ssn."""
    return [{"event": "purchase", "distinct_id": user, "timestamp": f"2025-03-{10 + n:02d}T12:00:00Z",
             "properties": {"email": email(user), "ssn": f"123-45-{i:02d}{n:02d}", "plan": "pro",
                            "note": f"write to {email(user)} soon"}}
            for i, user in enumerate(PRIVATE_USERS) for n in range(3)]


def as_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: e[k] for k in ("event", "distinct_id", "timestamp", "properties")} for e in events]


def selected(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SELECTION's events and filters applied in Python (the README's semantics)."""
    def price_over_100(p: dict) -> bool:
        v = p.get("price")
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 100

    return [e for e in events if e["event"] in SELECTION["events"] and price_over_100(e["properties"])
            and e["properties"].get("plan") in ("pro", "team")]


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory):
    data = with_demo_events(tmp_path_factory.mktemp("events-export"), DEMO_EVENTS)
    store = open_store(Settings(data_dir=data), read_only=False)
    try:
        generate(store, BULK_EVENTS, "bulk", end=DEMO_END)
    finally:
        store.close()
    svc = make_service(data, 1, {"ANALYTICS_EXPORT_EXPORT__MAX_RANGE_DAYS": str(MAX_RANGE_DAYS),
                                 "ANALYTICS_EXPORT_EXPORT__BATCH_SIZE": str(BATCH_SIZE)},
                       projects=("default", "bulk", "stream", "private"))
    svc.events = own_events()
    for project, events in (("stream", svc.events), ("private", private_events())):
        with svc.client(svc.keys[project]) as c:
            ingested = c.post("/api/events", json=events)
            assert ingested.status_code == 200 and ingested.json() == {"ingested": len(events)}, ingested.text
    return svc


def stream(client, params: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """The status, headers and raw (still encoded) body of a streamed export."""
    with client.stream("GET", PATH, params=params, headers=IDENTITY if headers is None else headers) as r:
        return r.status_code, dict(r.headers), b"".join(r.iter_raw())


def job_download(client, body: dict) -> bytes:
    created = client.post("/api/exports", json=body)
    assert created.status_code == 202, created.text
    export_id = created.json()["id"]
    wait_for(client, export_id)
    got = client.get(f"/api/exports/{export_id}/download", headers=IDENTITY)
    assert got.status_code == 200, got.text
    return got.content


def records(raw: bytes, fmt: str, tmp_path: Path, name: str) -> list[dict[str, Any]]:
    path = tmp_path / name
    path.write_bytes(raw)
    return read_records(path, fmt, None)


@pytest.mark.parametrize("select", [False, True], ids=["everything", "selection"])
@pytest.mark.parametrize("fmt", ["json_lines", "json", "csv", "parquet", "avro"])
def test_the_stream_equals_a_jobs_download(service, tmp_path, fmt, select):
    params: dict[str, Any] = {**WINDOW, "format": fmt}
    body: dict[str, Any] = {**JOB_WINDOW, "format": fmt}
    want = as_rows(service.events)
    properties = None
    if select:
        params.update(event=SELECTION["events"], properties=SELECTION["properties"],
                      filters=json.dumps(SELECTION["filters"]))
        body.update(SELECTION)
        want = as_rows(selected(service.events))
        properties = SELECTION["properties"]
        assert 0 < len(want) < OWN_EVENTS / 4
    with service.client(service.keys["stream"]) as c:
        status, headers, streamed = stream(c, params)
        assert status == 200, streamed[:500]
        downloaded = job_download(c, body)
    assert "content-encoding" not in headers
    assert headers["content-type"].split(";")[0] == {
        "json_lines": "application/x-ndjson", "json": "application/json", "csv": "text/csv",
        "parquet": "application/octet-stream", "avro": "application/avro"}[fmt]
    got = records(streamed, fmt, tmp_path, "streamed")
    job = records(downloaded, fmt, tmp_path, "downloaded")
    assert len(got) == len(want)
    assert canonical(got) == canonical(job)
    assert canonical(got) == canonical(expected(want, fmt, properties)), "and both are the ingested events"
    if fmt == "json_lines":
        assert streamed.endswith(b"\n")
        assert sorted(streamed.split(b"\n")) == sorted(downloaded.split(b"\n"))
    if fmt == "csv":
        header, _, rest = streamed.partition(b"\n")
        job_header, _, job_rest = downloaded.partition(b"\n")
        assert header == job_header
        assert sorted(rest.split(b"\n")) == sorted(job_rest.split(b"\n"))


def test_time_field_inserted_at_selects_on_when_events_were_stored(service):
    now = datetime.now(timezone.utc)
    around_now = {"start": (now - timedelta(days=1)).isoformat(), "end": (now + timedelta(days=1)).isoformat()}
    with service.client(service.keys["stream"]) as c:
        status, _, by_insert = stream(c, {**around_now, "time_field": "inserted_at"})
        assert status == 200, by_insert[:500]
        status, _, by_timestamp = stream(c, {**around_now, "time_field": "timestamp"})
        assert status == 200, by_timestamp[:500]
    rows = [json.loads(line) for line in by_insert.decode().splitlines()]
    assert canonical(rows) == canonical(as_rows(service.events))
    assert by_timestamp == b"", "no event's own timestamp lies around now"


@pytest.mark.parametrize("fmt", ["json_lines", "json", "csv"])
def test_gzip_when_the_client_accepts_it(service, tmp_path, fmt):
    params = {**DEMO_WINDOW, "format": fmt}
    with service.client(service.keys["default"]) as c:
        status, zipped_headers, zipped = stream(c, params, {"Accept-Encoding": "gzip"})
        assert status == 200, zipped[:500]
        status, plain_headers, plain = stream(c, params, IDENTITY)
        assert status == 200, plain[:500]
        del c.headers["accept-encoding"]  # httpx's default asks for gzip; these requests name no encoding
        status, bare_headers, bare = stream(c, params, {})
        assert status == 200, bare[:500]
        with c.stream("GET", PATH, params=params) as r:
            assert "accept-encoding" not in r.request.headers and "content-encoding" not in r.headers
    assert zipped_headers["content-encoding"] == "gzip"
    assert zipped[:2] == b"\x1f\x8b" and len(zipped) < len(plain) / 2
    assert "content-encoding" not in plain_headers and "content-encoding" not in bare_headers
    unzipped = decompress(zipped, "gzip")  # the gzip -dc command line tool
    rows = records(unzipped, fmt, tmp_path, "unzipped")
    assert len(rows) == DEMO_EVENTS
    assert canonical(rows) == canonical(records(plain, fmt, tmp_path, "plain")) == \
        canonical(records(bare, fmt, tmp_path, "bare"))
    if fmt in ("json_lines", "csv"):
        assert sorted(unzipped.split(b"\n")) == sorted(plain.split(b"\n"))


@pytest.mark.parametrize("fmt, magic", [("parquet", b"PAR1"), ("avro", b"Obj\x01")])
def test_binary_formats_never_get_a_content_encoding(service, fmt, magic):
    with service.client(service.keys["default"]) as c:
        status, headers, raw = stream(c, {**DEMO_WINDOW, "format": fmt}, {"Accept-Encoding": "gzip, deflate, br"})
    assert status == 200, raw[:500]
    assert "content-encoding" not in headers
    assert raw.startswith(magic)
    if fmt == "parquet":
        assert pq.read_metadata(io.BytesIO(raw)).num_rows == DEMO_EVENTS


def test_chunked_and_a_client_that_leaves_early_does_no_harm(service):
    with service.client(service.keys["bulk"]) as c:
        status, headers, full = stream(c, DEMO_WINDOW)
        assert status == 200, full[:500]
        assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers, headers
        lines = full.split(b"\n")
        assert lines[-1] == b"" and len(lines) - 1 == BULK_EVENTS

    for pause in (0, 0, 1.0):  # read one chunk, then hang up: at once, or once the server's buffers are full
        with service.client(service.keys["bulk"]) as c, c.stream("GET", PATH, params=DEMO_WINDOW,
                                                                 headers=IDENTITY) as r:
            assert r.status_code == 200 and r.headers.get("transfer-encoding") == "chunked"
            raw = r.iter_raw()  # kept: a dropped iterator closes the connection at once
            first = next(raw)
            assert 0 < len(first) < len(full) / 10
            assert json.loads(first.split(b"\n")[0])["event"]
            time.sleep(pause)  # connected, not reading

    with service.client(service.keys["bulk"]) as s:
        # An ingest needs the event store to itself: a scan still running for a client that left
        # holds it, and the ingest waits for it (up to 30 s) and then answers 503. (2019: outside
        # the window streamed here.)
        started = time.monotonic()
        late = [{"event": "after", "distinct_id": "x", "timestamp": "2019-01-01T00:00:00Z"}]
        ingested = s.post("/api/events", json=late, timeout=60)
        assert ingested.status_code == 200 and ingested.json() == {"ingested": 1}, ingested.text
        assert time.monotonic() - started < 10, "the scans of the clients that left went on"
    with service.client(service.keys["bulk"]) as c:
        status, headers, again = stream(c, DEMO_WINDOW)
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    assert Counter(again.split(b"\n")) == Counter(full.split(b"\n"))


def test_the_privacy_policy_applies(service, tmp_path):
    users, events = PRIVATE_USERS, private_events()
    suppressed = users[3]
    path = "/api/projects/private/privacy"
    with service.client(service.keys["private"]) as c:
        status, headers, before = stream(c, WINDOW)
        assert status == 200, before[:500]
        assert headers["x-privacy-policy-version"] == "0"
        assert b"123-45-" in before and b"@example.com" in before, "without a policy the values leave"

        put = c.put(path, json={"deny_properties": ["ssn"], "redact": [{"detector": "email"}],
                                "pseudonymize_distinct_id": True})
        assert put.status_code == 200, put.text
        version = put.json()["version"]
        assert version >= 1
        added = c.post("/api/projects/private/suppressions", json={"distinct_ids": [suppressed]})
        assert added.status_code == 200, added.text

        status, headers, raw = stream(c, WINDOW)
        assert status == 200, raw[:500]
        assert headers["x-privacy-policy-version"] == str(version)
        job = job_download(c, {**JOB_WINDOW, "format": "json_lines"})

        refused = c.get(PATH, params={**WINDOW, "filters": json.dumps([{"property": "ssn", "operator": "eq",
                                                                        "value": "123-45-0000"}])})
        assert refused.status_code == 422, refused.text
        assert "'ssn'" in refused.json()["detail"], refused.text
        only_denied = c.get(PATH, params={**WINDOW, "properties": ["ssn"]})
        assert only_denied.status_code == 422 and "ssn" in only_denied.json()["detail"], only_denied.text

    assert b"123-45-" not in raw and b"ssn" not in raw and b"@example.com" not in raw
    for user in users:
        assert user.encode() not in raw, f"raw distinct_id {user} leaked"
    rows = records(raw, "json_lines", tmp_path, "private")
    assert len(rows) == len(events) - 3, "the suppressed user's events are out"
    assert all(HEX64.fullmatch(r["distinct_id"]) for r in rows), rows[0]
    per_user = Counter(r["distinct_id"] for r in rows)
    assert len(per_user) == len(users) - 1 and set(per_user.values()) == {3}, "one stable pseudonym a user"
    assert all(r["properties"] == {"email": "[REDACTED]", "plan": "pro", "note": "write to [REDACTED] soon"}
               for r in rows), rows[0]
    assert canonical(rows) == canonical(records(job, "json_lines", tmp_path, "private-job")), \
        "the same rows, and pseudonyms, as a job under the same policy"


def too_long(days: float) -> dict:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return {"start": start.isoformat(), "end": (start + timedelta(days=days)).isoformat()}


@pytest.mark.parametrize("params, where", [
    ({**DEMO_WINDOW, "filters": "{not json"}, "filters"),
    ({**DEMO_WINDOW, "filters": '{"property": "plan"}'}, "filters"),
    ({**DEMO_WINDOW, "filters": "[1]"}, "filters.0"),
    ({**DEMO_WINDOW, "filters": json.dumps([{"property": "plan", "operator": "like", "value": "x"}])}, "operator"),
    ({**DEMO_WINDOW, "filters": json.dumps([{"property": "plan", "operator": "in", "value": "x"}])}, "operator in"),
    ({**DEMO_WINDOW, "filters": json.dumps([{"property": "x'); drop", "operator": "is_set"}])}, "not a plain key"),
    ({"start": "2026-09-01", "end": "2026-08-01"}, "must be after start_date"),
    ({"start": "2026-08-01", "end": "2026-08-01"}, "must be after start_date"),
    ({"start": "yesterday", "end": "2026-08-01"}, "start"),
    ({"end": "2026-08-01"}, "start"),
    (too_long(MAX_RANGE_DAYS + 30), f"the most is {MAX_RANGE_DAYS}"),
    ({**DEMO_WINDOW, "format": "xml"}, "format"),
    ({**DEMO_WINDOW, "time_field": "created_at"}, "time_field"),
    ({**DEMO_WINDOW, "properties": "x'); drop"}, "not a plain key"),
    ({**DEMO_WINDOW, "event": ""}, "event"),
])
def test_bad_input_is_422_saying_what_is_wrong(service, params, where):
    with service.client(service.keys["default"]) as c:
        r = c.get(PATH, params=params)
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert where in r.json()["detail"], r.text


def test_the_longest_range_is_allowed(service):
    with service.client(service.keys["default"]) as c:
        status, _, raw = stream(c, too_long(MAX_RANGE_DAYS))
    assert status == 200, raw[:300]


def test_a_range_a_few_hours_over_the_limit_is_422_as_for_jobs(service):
    params = too_long(MAX_RANGE_DAYS + 0.5)
    with service.client(service.keys["default"]) as c:
        job = c.post("/api/exports", json={"start_date": params["start"], "end_date": params["end"]})
        assert job.status_code == 422, job.text
        r = c.get(PATH, params=params, headers=IDENTITY)
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert f"the most is {MAX_RANGE_DAYS}" in r.json()["detail"]


def test_deeply_nested_filters_are_422_not_500(service):
    with service.client(service.keys["default"]) as c:
        r = c.get(PATH, params={**DEMO_WINDOW, "filters": "[" * 5000 + "]" * 5000}, headers=IDENTITY)
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert "filters" in r.json()["detail"]


def test_a_regex_the_store_rejects_is_422_before_the_stream_starts(service):
    bad = json.dumps([{"property": "plan", "operator": "regex", "value": "(?=pro)"}])
    with service.client(service.keys["default"]) as c:
        r = c.get(PATH, params={**DEMO_WINDOW, "filters": bad}, headers=IDENTITY)
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert "(?=" in r.json()["detail"]


def test_a_key_is_required(service):
    with service.client(None) as anonymous:
        r = anonymous.get(PATH, params=DEMO_WINDOW)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert anonymous.get(PATH, params={**DEMO_WINDOW, "project": "default"}).status_code == 401
    with service.client("aek_wrong") as wrong:
        assert wrong.get(PATH, params=DEMO_WINDOW).status_code == 401


def test_a_key_only_streams_its_own_project(service):
    with service.client(service.keys["private"]) as c:
        status, _, raw = stream(c, DEMO_WINDOW)
    assert status == 200 and raw == b"", "the demo events belong to projects default and bulk"
