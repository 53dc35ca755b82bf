"""The REST API end to end through a real uvicorn server on 127.0.0.1 with an in-process worker."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import with_demo_events
from helpers import decompress
from service import Service, create_idle_stream, create_key, wait_for

from analytics_export import Settings, export
from analytics_export.store.jobs import JobStore
from analytics_export.store.tables import exports

pytestmark = pytest.mark.server  # every test runs the service

WINDOW = {"start_date": "2026-08-01", "end_date": "2026-11-01"}


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory):
    data = with_demo_events(tmp_path_factory.mktemp("svc"), 30_000)
    return make_service(data, 1, {"ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]',
                                  "ANALYTICS_EXPORT_EXPORT__UPLOAD_RETRIES": "0",
                                  "ANALYTICS_EXPORT_EXPORT__RETRY_BACKOFF_SECONDS": "0.1"}, projects=("default", "other"))


def test_create_poll_download_matches_the_pipeline(service, tmp_path):
    with service.client(service.key) as c:
        body = {**WINDOW, "format": "json_lines", "compression": "gzip", "events": ["$pageview"],
                "properties": ["plan", "price"], "filters": [{"property": "price", "operator": "gt", "value": 100}],
                "id": "client-chosen", "status": "completed", "created_at": "2001-01-01T00:00:00Z"}
        created = c.post("/api/exports", json=body)
        assert created.status_code == 202, created.text
        view = created.json()
        export_id = view["id"]
        assert export_id != "client-chosen" and view["status"] == "pending"
        assert not view["created_at"].startswith("2001")
        done = wait_for(c, export_id)
        result = done["result"]
        assert result["total_events"] == done["progress"]["events"] > 0
        assert done["progress"]["expected_events"] == result["total_events"], "counted exactly on the embedded store"
        got = c.get(f"/api/exports/{export_id}/download")
        assert got.status_code == 200
        assert got.headers["content-type"].startswith("application/x-ndjson")
        assert "content-encoding" not in got.headers, "the file is the file"
        assert got.headers["content-disposition"] == (
            f'attachment; filename="export_{export_id}_20260801_to_20261101.jsonl.gz"')
        assert int(got.headers["content-length"]) == result["file_size"] == len(got.content)
        assert got.headers["etag"]
        part = c.get(f"/api/exports/{export_id}/download", headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == got.content[:100]
    settings = Settings(data_dir=service.data)
    local = export(settings=settings, output=tmp_path / "same.jsonl.gz", **{k: v for k, v in body.items()
                   if k not in ("id", "status", "created_at")})
    assert local.total_events == result["total_events"]
    lines = lambda data: Counter(decompress(data, "gzip").splitlines())  # noqa: E731
    assert lines(got.content) == lines((tmp_path / "same.jsonl.gz").read_bytes())


def test_signed_link_works_without_a_key_and_rejects_tampering(service):
    with service.client(service.key) as c:
        export_id = c.post("/api/exports", json={**WINDOW, "format": "csv"}).json()["id"]
        url = wait_for(c, export_id)["result"]["download_url"]
    with service.client(None) as anonymous:
        assert anonymous.get(url).status_code == 200
        assert anonymous.get(url.replace("signature=", "signature=0")).status_code == 403
        assert anonymous.get(f"/api/exports/{export_id}/download").status_code == 401
        secret = (service.data / "secret.key").read_text().strip().encode()
        jobs = JobStore.for_data_dir(service.data)
        past = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=10)
        with jobs.engine.begin() as db:  # the export's expiry as a worker's expire pass leaves it
            db.execute(exports.update().where(exports.c.id == export_id).values(expires_at=past))
        created = int(jobs.get_any(export_id).created_at.timestamp() * 1_000_000)
        stamp = int(past.timestamp())
        sig = hmac.new(secret, f"{export_id}:{created}:{stamp}".encode(), hashlib.sha256).hexdigest()
        assert anonymous.get(f"/api/exports/{export_id}/download?expires={stamp}&signature={sig}").status_code == 410
        assert anonymous.get(url).status_code == 403, "the old link names an expiry the export no longer has"


def test_a_deleted_exports_link_stays_dead_when_a_backfill_recreates_its_id(service):
    with service.client(service.key) as c:
        sid = c.post("/api/schedules", json={"name": "links", "schedule": "0 2 * * *", "date_range": "last_day",
                                             "format": "csv"}).json()["schedule"]["id"]
        window = {"start": "2026-10-01T00:00:00Z", "end": "2026-10-02T00:00:00Z"}

        def run() -> dict:
            assert c.post(f"/api/schedules/{sid}/backfill", json=window).json() == {"queued": 1, "skipped": 0}
            deadline = time.monotonic() + 60
            while (export_id := c.get(f"/api/schedules/{sid}/runs").json()[0]["export_id"]) and \
                    c.get(f"/api/exports/{export_id}").status_code == 404:
                assert time.monotonic() < deadline, "the scheduler never released the backfilled window"
                time.sleep(0.1)
            return wait_for(c, export_id)

        first = run()
        old = first["result"]["download_url"]
        assert c.delete(f"/api/exports/{first['id']}").status_code == 204
        second = run()
        assert second["id"] == first["id"], "a backfill re-creates the same export id"
        new = second["result"]["download_url"]
        c.delete(f"/api/schedules/{sid}")
    with service.client(None) as anonymous:
        assert anonymous.get(old).status_code in (403, 410), "the deleted export's link works again"
        assert anonymous.get(new).status_code == 200


def test_list_is_newest_first_with_paging(service):
    with service.client(service.key) as c:
        ids = [c.post("/api/exports", json={**WINDOW, "format": "parquet"}).json()["id"] for _ in range(3)]
        for export_id in ids:
            wait_for(c, export_id)
        page = c.get("/api/exports", params={"limit": 2, "offset": 0}).json()
        assert page["total"] >= 3 and [i["id"] for i in page["items"]] == ids[::-1][:2]
        nxt = c.get("/api/exports", params={"limit": 2, "offset": 2}).json()
        assert nxt["items"][0]["id"] == ids[0]


def test_projects_cannot_see_each_other(service):
    with service.client(service.key) as a, service.client(service.keys["other"]) as b:
        export_id = a.post("/api/exports", json={**WINDOW, "format": "csv"}).json()["id"]
        wait_for(a, export_id)
        for method, path in [("GET", ""), ("GET", "/download"), ("DELETE", ""), ("POST", "/retry")]:
            assert b.request(method, f"/api/exports/{export_id}{path}").status_code == 404, (method, path)
        assert all(i["id"] != export_id for i in b.get("/api/exports").json()["items"])
        own = b.post("/api/exports", json={**WINDOW, "format": "csv"}).json()["id"]
        assert wait_for(b, own)["result"]["total_events"] == 0, "project B cannot export A's events"
        assert a.get(f"/api/exports/{export_id}").status_code == 200


def test_delete_and_retry(service):
    with service.client(service.key) as c:
        export_id = c.post("/api/exports", json={**WINDOW, "format": "avro"}).json()["id"]
        path = Path(wait_for(c, export_id)["result"]["destination_path"])
        assert path.exists()
        assert c.post(f"/api/exports/{export_id}/retry").status_code == 409
        assert c.delete(f"/api/exports/{export_id}").status_code == 204
        assert not path.exists() and c.get(f"/api/exports/{export_id}").status_code == 404
        closed = {"type": "webhook", "url": "http://127.0.0.1:9/nobody-listens"}
        bad = c.post("/api/exports", json={**WINDOW, "format": "csv", "destination": closed})
        failed = wait_for(c, bad.json()["id"], "failed")
        assert "ConnectError" in failed["result"]["error"]
        assert c.post(f"/api/exports/{failed['id']}/retry").status_code == 202


@pytest.mark.parametrize("body, params, where", [
    ({**WINDOW, "format": "xml"}, None, "format"),
    ({"start_date": "2026-02-01", "end_date": "2026-01-01", "format": "csv"}, None, "must be after start_date"),
    ({**WINDOW, "format": "csv", "filters": [{"property": "a", "operator": "like", "value": 1}]}, None, "operator"),
    ({**WINDOW, "format": "csv", "properties": ["x'); drop"]}, None, "not a plain key"),
    ({"start_date": "2020-01-01", "end_date": "2026-01-01", "format": "csv"}, None, "the most is 366"),
    ({**WINDOW}, {"limit": 0}, "limit"),
    ({**WINDOW}, {"limit": 5000}, "limit"),
    ({**WINDOW}, {"offset": -1}, "offset"),
    ({**WINDOW, "format": "csv", "fromat": "json"}, None, "fromat: Extra inputs are not permitted"),
])
def test_bad_input_is_422_naming_the_field(service, body, params, where):
    with service.client(service.key) as c:
        r = c.get("/api/exports", params=params) if params else c.post("/api/exports", json=body)
        assert r.status_code == 422 and where in r.json()["detail"], r.text


def test_auth_errors(service):
    with service.client(None) as c:
        assert c.get("/api/exports").status_code == 401
    with service.client("aek_wrong") as c:
        assert c.get("/api/exports").status_code == 401
    with service.client(service.key) as c:
        assert c.post("/api/exports", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
        assert c.get("/api/exports/nope").status_code == 404
        made = c.post("/api/exports", json={**WINDOW, "format": "csv"})  # the metrics below count a finished one
        wait_for(c, made.json()["id"])
        metrics = c.get("/metrics").text
        assert 'analytics_export_exports{status="completed"}' in metrics and "analytics_export_queue_depth" in metrics
        values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
        assert float(values["analytics_export_events_exported"]) > 0
        assert float(values["analytics_export_bytes_exported"]) > 0
        assert float(values["analytics_export_export_duration_seconds_count"]) >= 1
        assert float(values["analytics_export_export_duration_seconds_sum"]) > 0


def test_open_metrics_name_no_project_or_stream(service):
    with service.client(service.key) as c:
        stream_id = create_idle_stream(c, "metered")
        try:
            with service.client(None) as anonymous:
                metrics = anonymous.get("/metrics")
            assert metrics.status_code == 200 and "analytics_export_stream_lag_seconds_max" in metrics.text
            assert stream_id not in metrics.text and 'project="' not in metrics.text, metrics.text
        finally:
            c.delete(f"/api/streams/{stream_id}")


def test_expired_exports_answer_410(tmp_path):
    data = with_demo_events(tmp_path / "data", 1000)
    key = create_key(data, "default")
    svc = Service(data, env={"ANALYTICS_EXPORT_EXPORT__FILE_EXPIRY_HOURS": str(1 / 3600)})
    try:
        with svc.client(key) as c:
            export_id = c.post("/api/exports", json={**WINDOW, "format": "csv"}).json()["id"]
            done = wait_for(c, export_id)
            path, url = Path(done["result"]["destination_path"]), done["result"]["download_url"]
            expired = wait_for(c, export_id, "expired", timeout=30)
            assert expired["result"]["expires_at"] and not path.exists()
            assert c.get(f"/api/exports/{export_id}/download").status_code == 410
            assert c.get(url).status_code == 410
    finally:
        svc.close()


def test_post_events_into_the_callers_project(service):
    events = [{"event": "api_event", "distinct_id": f"u{i}", "timestamp": "2026-10-15T12:00:00Z",
               "properties": {"n": i, "s": "a,\"b\"\n"}} for i in range(5)]
    lines = "".join(json.dumps(e) + "\n" for e in events)
    with service.client(service.keys["other"]) as b, service.client(service.key) as a:
        r = b.post("/api/events", content=lines, headers={"content-type": "application/x-ndjson"})
        assert r.status_code == 200 and r.json() == {"ingested": 5}, r.text
        assert b.post("/api/events", json=events).json() == {"ingested": 0}, "same content, same derived uuids"
        body = {**WINDOW, "format": "json_lines", "events": ["api_event"]}
        mine = wait_for(b, b.post("/api/exports", json=body).json()["id"])
        theirs = wait_for(a, a.post("/api/exports", json=body).json()["id"])
        assert mine["result"]["total_events"] == 5 and theirs["result"]["total_events"] == 0
        bad = b.post("/api/events", json=[{"event": "x"}])
        assert bad.status_code == 422 and "missing column" in bad.json()["detail"] and "inbox" not in bad.text
        assert b.post("/api/events", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


def test_cancel_leaves_a_finished_export_alone(service):
    with service.client(service.key) as c:
        export_id = c.post("/api/exports", json={**WINDOW, "format": "csv"}).json()["id"]
        wait_for(c, export_id)
        refused = c.post(f"/api/exports/{export_id}/cancel")
        assert refused.status_code == 409 and "completed" in refused.json()["detail"], refused.text
        assert c.get(f"/api/exports/{export_id}/download").status_code == 200, "the file is still there"
        assert c.post("/api/exports/no-such-export/cancel").status_code == 404
    with service.client(service.keys["other"]) as other:
        assert other.post(f"/api/exports/{export_id}/cancel").status_code == 404, "another project's export"


def test_nan_is_refused_and_every_json_answer_parses_strictly(tmp_path):
    """POST /api/events refuses NaN and Infinity (JSON array and JSON Lines, 422 naming the key); a
    NaN the store held before that check comes out as null in the preview, JSON and JSON Lines."""
    from helpers import strict_json

    from analytics_export.sources.duckdb import DuckDBEventStore

    data = tmp_path / "data"
    store = DuckDBEventStore(Settings(data_dir=data).events_path, read_only=False)
    store.insert("""SELECT uuid() AS uuid, 'default' AS project_id, 'old' AS event, 'u' AS distinct_id,
                    TIMESTAMPTZ '2026-09-01 00:00:00+00' AS "timestamp", '{"x": NaN, "y": Infinity}'::JSON AS properties,
                    now() AS inserted_at""")
    store.con.execute("DELETE FROM store_facts")  # as a store from before ingest refused NaN
    store.close()
    key = create_key(data, "default")
    svc = Service(data)
    try:
        with svc.client(key) as c:
            head = '{"event": "e", "distinct_id": "u", "timestamp": "2026-09-01T00:00:00Z", "properties": {"x": '
            for kind, body in (("application/json", f"[{head}NaN}}}}]"), ("application/x-ndjson", f"{head}-Infinity}}}}\n")):
                r = c.post("/api/events", content=body, headers={"content-type": kind})
                assert r.status_code == 422 and '"x" holds NaN or Infinity' in r.json()["detail"], r.text
            preview = c.post("/api/exports/preview", json={**WINDOW, "format": "json"})
            assert preview.status_code == 200, preview.text
            assert strict_json(preview.text)["rows"][0]["properties"] == {"x": None, "y": None}
            for fmt in ("json", "json_lines"):
                done = wait_for(c, c.post("/api/exports", json={**WINDOW, "format": fmt}).json()["id"])
                text = c.get(f"/api/exports/{done['id']}/download").text
                rows = strict_json(text) if fmt == "json" else [strict_json(line) for line in text.splitlines()]
                assert [r["properties"] for r in rows] == [{"x": None, "y": None}]
    finally:
        svc.close()


def test_persons_through_the_api_with_its_manifest_and_the_models_422s(service):
    """A persons export of the whole history (past max_range_days: its window only picks who is in it)
    downloads as its rows; a preview of a model, a sessions window not yet final and a model with event
    names are 422s that say what to change."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    with service.client(service.key) as c:
        body = {"model": "persons", "format": "json_lines", "start_date": "2020-01-01T00:00:00Z",
                "end_date": now.isoformat()}
        created = c.post("/api/exports", json=body)
        assert created.status_code == 202, created.text
        assert created.json()["model"] == "persons"
        done = wait_for(c, created.json()["id"])
        rows = [json.loads(line) for line in c.get(f"/api/exports/{done['id']}/download").text.splitlines()]
        assert len(rows) == done["result"]["total_events"] > 100
        assert all(r["person_id"] in r["distinct_ids"] for r in rows)
        assert any(len(r["distinct_ids"]) > 1 for r in rows), "the demo's $identify links merge ids"
        for body, message in (
                ({**body, "end_date": "2020-02-01T00:00:00Z"}, None),
                ({**WINDOW, "model": "sessions", "end_date": now.isoformat()}, "known only once the gap has passed"),
                ({**WINDOW, "model": "persons", "events": ["$pageview"]}, "takes no events")):
            answer = c.post("/api/exports/preview", json=body)
            assert answer.status_code == 422, answer.text
            assert (message or "the preview lists events") in answer.text
