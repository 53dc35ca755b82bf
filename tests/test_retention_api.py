"""Retention (export before deletion) through the real service: the policy's lifecycle and checks,
a dry run, then a real run done by the service's worker, archiving to the data dir and to S3 (moto),
and a failing destination that leaves the events in place and says why."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from datetime import date, datetime, time as clock, timedelta, timezone

import pyarrow.parquet as pq
import pytest

from service import wait_for

UTC = timezone.utc
PROJECTS = ("lifecycle", "intruder", "checks", "ret", "ret-s3", "ret-s3-bad")
DEFAULT_POLICY = {"days": 30, "destination": {"type": "download"}, "compression": "zstd",
                  "schedule": "0 3 * * *", "enabled": True}
PLAN = "archive, verify, delete"


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory):
    svc = make_service(tmp_path_factory.mktemp("retention-svc"), 1, {
        "ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]', "ANALYTICS_EXPORT_EXPORT__UPLOAD_RETRIES": "0",
        "ANALYTICS_EXPORT_EXPORT__UPLOAD_BACKOFF_SECONDS": "0.05"}, projects=PROJECTS)
    assert len(set(svc.keys.values())) == len(PROJECTS)
    return svc


# -- helpers --------------------------------------------------------------------------------------

def parse(value: str) -> datetime:
    """An API time; one without an offset is read as UTC (the windows' `watermark` and `updated_at`
    come without one: see the report)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_3am(at: datetime) -> datetime:
    """The next 03:00 UTC strictly after `at` (what the default cron `0 3 * * *` gives)."""
    at = at.astimezone(UTC)
    today = datetime.combine(at.date(), clock(3), UTC)
    return today if today > at else today + timedelta(days=1)


def cutoff_of(days: int, at: datetime) -> datetime:
    return datetime.combine(at.astimezone(UTC).date(), clock.min, UTC) - timedelta(days=days)


def away_from_midnight() -> datetime:
    """Now, after waiting out the last two minutes of a UTC day, so the cutoff the test computes is
    the one the service uses for the whole test."""
    at = datetime.now(UTC)
    left = (datetime.combine(at.date() + timedelta(days=1), clock.min, UTC) - at).total_seconds()
    if left < 120:
        time.sleep(left + 1)
    return datetime.now(UTC).replace(microsecond=0)


def key_of(event: str, distinct_id: str, ts: datetime | str) -> tuple:
    if isinstance(ts, str):
        ts = parse(ts)
    elif ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return event, distinct_id, ts.astimezone(UTC)


def keys_of(events: list[dict]) -> Counter:
    return Counter(key_of(e["event"], e["distinct_id"], e["timestamp"]) for e in events)


def per_day(events: list[dict]) -> dict[date, int]:
    return dict(sorted(Counter(parse(e["timestamp"]).date() for e in events).items()))


def ingest(c, events: list[dict]) -> None:
    deadline = time.monotonic() + 30
    while True:
        r = c.post("/api/events", json=events)
        if r.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200 and r.json() == {"ingested": len(events)}, r.text


def exported(c, at: datetime) -> Counter:
    """Every event of the caller's project, by a json_lines export of a range holding them all."""
    body = {"start_date": iso(at - timedelta(days=200)), "end_date": iso(at + timedelta(days=2)),
            "format": "json_lines"}
    created = c.post("/api/exports", json=body)
    assert created.status_code == 202, created.text
    done = wait_for(c, created.json()["id"])
    raw = c.get(f"/api/exports/{done['id']}/download")
    assert raw.status_code == 200, raw.text
    rows = [json.loads(line) for line in raw.content.decode().splitlines() if line]
    assert len(rows) == done["result"]["total_events"]
    return Counter(key_of(r["event"], r["distinct_id"], r["timestamp"]) for r in rows)


def parquet_keys(data: bytes | str) -> Counter:
    table = pq.read_table(io.BytesIO(data) if isinstance(data, bytes) else data)
    return Counter(key_of(r["event"], r["distinct_id"], r["timestamp"]) for r in table.to_pylist())


def windows(c, project: str) -> list[dict]:
    r = c.get(f"/api/projects/{project}/retention/windows")
    assert r.status_code == 200, r.text
    return r.json()


def wait_until_deleted(c, project: str, days: list[date], timeout: float = 60) -> list[dict]:
    """Poll the windows until every one of `days` is deleted; returns them, oldest first."""
    wanted = {d.isoformat() for d in days}
    deadline = time.monotonic() + timeout
    while True:
        listed = windows(c, project)
        if {w["day"] for w in listed if w["status"] == "deleted"} == wanted:
            return sorted(listed, key=lambda w: w["day"])
        assert not any(w["error"] for w in listed), listed
        assert time.monotonic() < deadline, f"retention never finished: {listed}"
        time.sleep(0.2)


def dry_run(c, project: str) -> list[dict]:
    r = c.post(f"/api/projects/{project}/retention/run", params={"dry_run": "true"})
    assert r.status_code == 200, r.text
    return r.json()


def run_for_real(c, project: str) -> datetime:
    before = datetime.now(UTC)
    r = c.post(f"/api/projects/{project}/retention/run", params={"dry_run": "false"})
    assert r.status_code == 202, r.text
    assert r.json() == {"queued": True}
    return before


# -- 1. the policy's lifecycle --------------------------------------------------------------------

def test_policy_lifecycle(service):
    path = "/api/projects/lifecycle/retention"
    with service.client(service.keys["lifecycle"]) as c:
        missing = c.get(path)
        assert missing.status_code == 404, missing.text
        assert missing.json()["detail"] == "project 'lifecycle' has no retention policy; PUT one"
        assert c.get(f"{path}/windows").json() == []
        nothing = c.post(f"{path}/run", params={"dry_run": "true"})
        assert nothing.status_code == 404 and "PUT one" in nothing.json()["detail"], nothing.text
        assert c.post(f"{path}/run").status_code == 404
        assert c.delete(path).status_code == 404

        before = datetime.now(UTC)
        put = c.put(path, json={"days": 30})
        after = datetime.now(UTC)
        assert put.status_code == 200, put.text
        body = put.json()
        assert parse(body.pop("next_run")) in {next_3am(before), next_3am(after)}, "03:00 UTC next"
        assert body == {"project": "lifecycle", "policy": DEFAULT_POLICY, "last_run": None, "last_error": None}
        assert c.get(path).json() == put.json(), "GET shows what PUT stored"

        refused = c.put(path, json={"days": 0})
        assert refused.status_code == 422, refused.text
        assert c.get(path).json() == put.json(), "a refused policy leaves the stored one"

        changed = c.put(path, json={"days": 7, "schedule": "30 1 * * 0", "compression": None, "enabled": False})
        assert changed.status_code == 200, changed.text
        assert changed.json()["policy"] == {**DEFAULT_POLICY, "days": 7, "schedule": "30 1 * * 0",
                                            "compression": None, "enabled": False}
        next_run = parse(changed.json()["next_run"])
        assert next_run.weekday() == 6 and (next_run.hour, next_run.minute, next_run.second) == (1, 30, 0)
        assert timedelta(0) < next_run - datetime.now(UTC) <= timedelta(days=7), "Sunday 01:30 UTC next"
        assert c.get(path).json() == changed.json()

        deleted = c.delete(path)
        assert deleted.status_code == 204 and deleted.content == b""
        gone = c.get(path)
        assert gone.status_code == 404 and gone.json()["detail"] == "project 'lifecycle' has no retention policy; PUT one"
        assert c.delete(path).status_code == 404


@pytest.mark.parametrize("body, where", [
    ({"days": 0}, "days: Input should be greater than or equal to 1"),
    ({"days": 36_501}, "days: Input should be less than or equal to 36500"),
    ({}, "days: Field required"),
    ({"days": 30, "keep": "forever"}, "keep: Extra inputs are not permitted"),
    ({"days": 30, "destination": {"type": "webhook", "url": "https://example.com/hook"}},
     "archives must be read back before events are deleted: choose download, s3, gcs, azure or sftp, not webhook"),
    ({"days": 30, "destination": {"type": "s3", "bucket": "archives", "max_events_per_file": 1000}},
     "an archive is one file a day: remove max_events_per_file / max_file_size_mb"),
    ({"days": 30, "destination": {"type": "azure", "container": "archives", "max_file_size_mb": 64}},
     "an archive is one file a day: remove max_events_per_file / max_file_size_mb"),
    ({"days": 30, "schedule": "every night"},
     "schedule: 'every night' is not a cron expression: five fields, minute hour day month weekday"),
    ({"days": 30, "schedule": "0 25 * * *"}, "schedule: '0 25 * * *' is not a cron expression"),
    ({"days": 30, "destination": {"type": "s3", "bucket": "archives", "connection": "nope"}},
     "POST /api/connections"),
    ([], "Input should be a valid dictionary"),
])
def test_bad_policies_are_422_saying_what_is_wrong(service, body, where):
    with service.client(service.keys["checks"]) as c:
        r = c.put("/api/projects/checks/retention", json=body)
        assert r.status_code == 422, r.text
        assert where in r.json()["detail"], r.text
        assert c.get("/api/projects/checks/retention").status_code == 404, "a refused policy is not stored"


def test_a_key_only_reaches_its_own_projects_retention(service):
    path = "/api/projects/lifecycle/retention"
    with service.client(service.keys["lifecycle"]) as owner, service.client(service.keys["intruder"]) as other:
        assert owner.put(path, json={"days": 30}).status_code == 200
        stored = owner.get(path).json()
        calls = [("GET", "", {}), ("PUT", "", {"json": {"days": 1}}), ("DELETE", "", {}),
                 ("POST", "/run?dry_run=true", {}), ("POST", "/run?dry_run=false", {}), ("POST", "/run", {}),
                 ("GET", "/windows", {})]
        for method, suffix, kwargs in calls:
            r = other.request(method, f"{path}{suffix}", **kwargs)
            assert r.status_code == 403, (method, suffix, r.text)
            assert r.json()["detail"] == "this API key belongs to project 'intruder', not 'lifecycle'"
        assert owner.get(path).json() == stored, "nothing changed, and no run was queued (same next_run)"
        assert owner.delete(path).status_code == 204
    with service.client(None) as anonymous:
        assert anonymous.get(path).status_code == 401
        assert anonymous.put(path, json={"days": 30}).status_code == 401
        assert anonymous.post(f"{path}/run").status_code == 401


# -- 2. dry run, then a real run through the worker, archiving to the data dir --------------------

def spread_events(now: datetime, cutoff: datetime) -> list[dict]:
    """Events on each of the 90 days before `now` (1 to 3 a day), and three around the cutoff."""
    events = []
    for k in range(1, 91):
        for j in range(k % 3 + 1):
            ts = now - timedelta(days=k, minutes=41 * j)
            events.append({"event": ("signup", "purchase", "$pageview")[j], "distinct_id": f"u-{k}-{j}",
                           "timestamp": iso(ts), "properties": {"k": k, "j": j}})
    for name, ts in (("edge-before", cutoff - timedelta(seconds=1)), ("edge-at", cutoff),
                     ("edge-after", cutoff + timedelta(seconds=1))):
        events.append({"event": name, "distinct_id": "u-edge", "timestamp": iso(ts), "properties": {}})
    return events


def test_dry_run_then_the_worker_archives_and_deletes(service):
    now = away_from_midnight()
    cutoff = cutoff_of(30, now)
    events = spread_events(now, cutoff)
    old = [e for e in events if parse(e["timestamp"]) < cutoff]
    new = [e for e in events if parse(e["timestamp"]) >= cutoff]
    old_days = per_day(old)
    assert len(old_days) >= 59 and len(new) > 0
    archive = service.data / "archive" / "ret"
    path = "/api/projects/ret/retention"
    with service.client(service.keys["ret"]) as c:
        ingest(c, events)
        assert c.put(path, json={"days": 30}).status_code == 200

        plan = dry_run(c, "ret")
        assert plan == [{"day": d.isoformat(), "events": n, "action": PLAN} for d, n in old_days.items()]
        assert plan[-1]["day"] == (cutoff - timedelta(days=1)).date().isoformat(), "the day before the cutoff"
        assert exported(c, now) == keys_of(events), "a dry run deletes nothing"
        assert not archive.exists() and windows(c, "ret") == [], "a dry run archives and records nothing"

        queued_at = run_for_real(c, "ret")
        done = wait_until_deleted(c, "ret", list(old_days))
        assert [w["day"] for w in done] == [d.isoformat() for d in old_days]
        for w, (day, n) in zip(done, old_days.items()):
            assert (w["generation"], w["status"], w["events"], w["read"], w["error"]) == (1, "deleted", n, n, None), w
            folder = archive / f"date={day.isoformat()}"
            assert w["uri"] == str(folder / "events-g001.parquet")
            assert w["bytes"] == (folder / "events-g001.parquet").stat().st_size
            assert w["sha256"] == hashlib.sha256((folder / "events-g001.parquet").read_bytes()).hexdigest()
            assert w["privacy_version"] is None, "the project has no privacy policy"
            assert queued_at <= parse(w["watermark"]) <= parse(w["updated_at"]) <= datetime.now(UTC)
        listed = windows(c, "ret")
        assert [w["day"] for w in listed] == [d.isoformat() for d in reversed(old_days)], "newest first"

        assert exported(c, now) == keys_of(new), "only the events since the cutoff are left"
        files = sorted(archive.glob("*/*"))
        assert [f"{p.parent.name}/{p.name}" for p in files] == [
            f"date={d.isoformat()}/events-g001.parquet" for d in old_days], "one archive a day"
        archived: Counter = Counter()
        for p in files:
            rows = parquet_keys(str(p))
            assert {k[2].date().isoformat() for k in rows} == {p.parent.name.removeprefix("date=")}
            archived += rows
        assert archived == keys_of(old), "the archives hold exactly the deleted events"
        assert max(archived.values()) == 1, "each archived once"

        view = c.get(path).json()
        assert view["last_error"] is None, view
        last_run = parse(view["last_run"])
        assert queued_at <= last_run <= datetime.now(UTC)
        assert parse(view["next_run"]) == next_3am(last_run), "back on its cron after the run"

        assert dry_run(c, "ret") == [], "nothing is left to archive"


# -- 3. an S3 archive (moto), and a destination that fails ----------------------------------------

def old_and_new(now: datetime) -> tuple[list[dict], list[dict]]:
    """A few events on three days well before a 30-day cutoff, two after it."""
    old = [{"event": "purchase", "distinct_id": f"s-{k}-{j}", "timestamp": iso(now - timedelta(days=k, minutes=7 * j)),
            "properties": {"k": k}} for k, count in ((40, 2), (41, 3), (45, 1)) for j in range(count)]
    new = [{"event": "signup", "distinct_id": f"s-new-{k}", "timestamp": iso(now - timedelta(days=k)),
            "properties": {}} for k in (2, 5)]
    return old, new


def s3_policy(s3, client, bucket: str) -> dict:
    made = client.post("/api/connections", json={"name": "archive-s3", "type": "s3", "secrets": {
        "access_key_id": s3.access_key, "secret_access_key": s3.secret_key}})
    assert made.status_code == 201, made.text
    return {"days": 30, "destination": {"type": "s3", "bucket": bucket, "endpoint_url": s3.endpoint,
                                        "region": "us-east-1", "connection": "archive-s3", "prefix": "archive"}}


def test_archives_to_s3(service, s3_server):
    now = away_from_midnight()
    old, new = old_and_new(now)
    days = per_day(old)
    bucket = s3_server.make_bucket("retention-archive")
    s3 = s3_server.client()
    path = "/api/projects/ret-s3/retention"
    with service.client(service.keys["ret-s3"]) as c:
        ingest(c, old + new)
        policy = s3_policy(s3_server, c, bucket)
        put = c.put(path, json=policy)
        assert put.status_code == 200, put.text
        assert put.json()["policy"] == {**DEFAULT_POLICY, "destination": {
            **policy["destination"], "path_template": None, "max_file_size_mb": None, "max_events_per_file": None,
            "path_style": None, "server_side_encryption": None, "kms_key_id": None}}

        assert dry_run(c, "ret-s3") == [{"day": d.isoformat(), "events": n, "action": PLAN} for d, n in days.items()]
        assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0, "a dry run uploads nothing"

        run_for_real(c, "ret-s3")
        done = wait_until_deleted(c, "ret-s3", list(days))
        names = [f"archive/date={d.isoformat()}/events-g001.parquet" for d in days]
        assert [w["uri"] for w in done] == [f"s3://{bucket}/{name}" for name in names]
        assert [(w["events"], w["read"], w["error"]) for w in done] == [(n, n, None) for n in days.values()]

        listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        assert sorted(o["Key"] for o in listed) == names
        for name, w, day in zip(names, done, days):
            body = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
            assert len(body) == w["bytes"]
            rows = parquet_keys(body)
            assert rows == keys_of([e for e in old if parse(e["timestamp"]).date() == day]), name
            assert pq.read_metadata(io.BytesIO(body)).row_group(0).column(0).compression == "ZSTD"
        assert exported(c, now) == keys_of(new), "the archived events are deleted, the newer ones kept"
        view = c.get(path).json()
        assert view["last_error"] is None and view["last_run"] is not None, view


def test_a_failing_destination_leaves_the_events_and_says_why(service, s3_server):
    now = away_from_midnight()
    old, new = old_and_new(now)
    days = per_day(old)
    bucket = "retention-no-such-bucket"
    path = "/api/projects/ret-s3-bad/retention"
    with service.client(service.keys["ret-s3-bad"]) as c:
        ingest(c, old + new)
        put = c.put(path, json=s3_policy(s3_server, c, bucket))
        assert put.status_code == 200, put.text
        assert dry_run(c, "ret-s3-bad") == [{"day": d.isoformat(), "events": n, "action": PLAN}
                                            for d, n in days.items()]

        queued_at = run_for_real(c, "ret-s3-bad")
        deadline = time.monotonic() + 60
        while (view := c.get(path).json())["last_error"] is None:
            assert time.monotonic() < deadline, f"the failed run was never recorded: {view}"
            time.sleep(0.2)
        assert parse(view["last_run"]) >= queued_at

        listed = sorted(windows(c, "ret-s3-bad"), key=lambda w: w["day"])
        assert [w["day"] for w in listed] == [d.isoformat() for d in days]
        for w in listed:
            assert (w["generation"], w["status"], w["events"], w["uri"]) == (1, "archiving", None, None), w
            assert w["error"] == (f"s3://{bucket} does not exist: create the bucket or container, "
                                  "or fix its name"), w
        assert view["last_error"] == "; ".join(f"{w['day']}: {w['error']}" for w in listed)

        assert exported(c, now) == keys_of(old + new), "nothing was deleted"
        assert bucket not in [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
        assert dry_run(c, "ret-s3-bad") == [{"day": d.isoformat(), "events": n, "action": PLAN}
                                            for d, n in days.items()], "the days are still to do"
