"""Limits on work at once and on how often it is asked for, through the real service and CLI:
max_concurrent_exports holds under 100 parallel creates and under backfills (SQLite and PostgreSQL
job stores), its 429s carry Retry-After, and a cron is five fields firing no closer than
min_schedule_interval_seconds, including for schedules and retention policies saved before."""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from service import CLI, Service, cli, create_key

from analytics_export import Settings, open_store
from analytics_export.models import ExportConfig, RetentionPolicy, ScheduledExport
from analytics_export.runtime.retention import get_policy, run_due, set_policy
from analytics_export.runtime.scheduler import Scheduler, Schedules
from analytics_export.store.jobs import JobStore
from analytics_export.store.tables import exports, retention_policies, schedules

pytestmark = pytest.mark.server  # the service and the CLI

UTC = timezone.utc
EXPORT = {"format": "json_lines", "start_date": "2026-01-01", "end_date": "2026-01-02"}
LIMIT = 5


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request) -> dict:
    """The service's environment: the default SQLite job store, or a throwaway PostgreSQL one."""
    if request.param == "sqlite":
        return {}
    return {"ANALYTICS_EXPORT_DATABASE_URL": request.getfixturevalue("pg_url")}


def job_store(data, env: dict) -> JobStore:
    return JobStore.for_data_dir(data, env.get("ANALYTICS_EXPORT_DATABASE_URL"))


def test_parallel_creates_never_pass_max_concurrent_exports(tmp_path, store_env):
    env = {**store_env, "ANALYTICS_EXPORT_EXPORT__MAX_CONCURRENT_EXPORTS": str(LIMIT)}
    key = create_key(tmp_path, "p", env)
    svc = Service(tmp_path, 0, env)  # no workers: nothing finishes, so exactly LIMIT fit
    try:
        with svc.client(key) as c:
            c.timeout = 60
            with ThreadPoolExecutor(100) as pool:
                answers = list(pool.map(lambda _: c.post("/api/exports", json=EXPORT), range(100)))
            codes = [a.status_code for a in answers]
            assert codes.count(202) == LIMIT and codes.count(429) == 100 - LIMIT, codes
            refused = [a for a in answers if a.status_code == 429]
            assert all(int(a.headers["Retry-After"]) > 0 for a in refused)
            assert f"{LIMIT} exports of this project are already pending or running" in refused[0].json()["detail"]
            assert "max_concurrent_exports" in refused[0].json()["detail"]
            # a retry queues work too: at the limit it is refused the same way
            first = next(a.json()["id"] for a in answers if a.status_code == 202)
            assert c.post(f"/api/exports/{first}/cancel").status_code == 202  # pending: failed at once
            assert c.post("/api/exports", json=EXPORT).status_code == 202, "the cancelled one freed a place"
            retried = c.post(f"/api/exports/{first}/retry")
            assert retried.status_code == 429 and int(retried.headers["Retry-After"]) > 0
            assert "max_concurrent_exports" in retried.json()["detail"]
    finally:
        svc.close()
    with job_store(tmp_path, store_env).engine.connect() as db:
        active = db.execute(sa.select(sa.func.count()).where(
            exports.c.project == "p", exports.c.status.in_(["pending", "processing"]))).scalar_one()
    assert active == LIMIT


def test_backfills_keep_to_max_concurrent_exports_and_export_every_window_once(tmp_path, store_env):
    limit, hours = 3, 10
    env = {**store_env, "ANALYTICS_EXPORT_EXPORT__MAX_CONCURRENT_EXPORTS": str(limit)}
    open_store(Settings(data_dir=tmp_path), read_only=False).close()
    key = create_key(tmp_path, "p", env)
    svc = Service(tmp_path, 2, env)
    jobs = job_store(tmp_path, store_env)
    peak, done = [0], threading.Event()

    def watch() -> None:  # what the job store holds while the backfills run
        while not done.is_set():
            with jobs.engine.connect() as db:
                active = db.execute(sa.select(sa.func.count()).where(
                    exports.c.project == "p", exports.c.status.in_(["pending", "processing"]))).scalar_one()
            peak[0] = max(peak[0], active)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with svc.client(key) as c:
            ids = []
            for name in ("a", "b"):  # two schedules, each allowed 10 backfilled windows at once
                made = c.post("/api/schedules", json={"name": name, "schedule": "0 * * * *", "date_range": "last_hour",
                                                      "backfill_concurrency": 10})
                assert made.status_code == 201, made.text
                ids.append(made.json()["schedule"]["id"])
                filled = c.post(f"/api/schedules/{ids[-1]}/backfill",
                                json={"start": "2026-01-01T00:00:00Z", "end": f"2026-01-01T{hours:02d}:00:00Z"})
                assert filled.json() == {"queued": hours, "skipped": 0}
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                runs = [r for sid in ids for r in c.get(f"/api/schedules/{sid}/runs").json()]
                if all(r["status"] == "completed" for r in runs):
                    break
                assert not any(r["status"] == "failed" for r in runs), runs
                time.sleep(0.5)
    finally:
        done.set()
        watcher.join()
        svc.close()
    assert len(runs) == 2 * hours and all(r["status"] == "completed" for r in runs), runs
    assert len({(r["export_id"]) for r in runs}) == 2 * hours
    assert 0 < peak[0] <= limit, f"{peak[0]} exports pending or running at once; the limit is {limit}"
    files = sorted(p.name for p in (tmp_path / "exports" / "p").iterdir())
    assert len(files) == 2 * hours, files  # one file a window: none missed, none twice
    with jobs.engine.connect() as db:
        assert db.execute(sa.select(sa.func.count()).select_from(exports)).scalar_one() == 2 * hours


SIX, SEVEN = "* * * * * *", "0 0 * * * * 2026"


def test_crons_are_five_fields_no_closer_than_the_minimum_interval(tmp_path):
    key = create_key(tmp_path, "p")
    svc = Service(tmp_path, 0)
    try:
        with svc.client(key) as c:
            for cron in (SIX, SEVEN, "x" * 201):
                bad = c.post("/api/schedules", json={"name": "n", "schedule": cron})
                assert bad.status_code == 422, bad.text
                assert "five fields" in bad.json()["detail"] or "the most is 200" in bad.json()["detail"]
            preview = c.get("/api/schedules/next-runs", params={"cron": SIX})
            assert preview.status_code == 422 and "five fields" in preview.json()["detail"]
            for cron in ("0,1 * * * *", "* 3 * * *", "*/4 * * * *", "0,58 0,23 * * *"):
                made = c.post("/api/schedules", json={"name": "n", "schedule": cron})
                preview = c.get("/api/schedules/next-runs", params={"cron": cron})
                assert made.status_code == preview.status_code == 422, made.text
                assert made.json()["detail"] == preview.json()["detail"], "the console's preview says the same"
                assert "at most every 5 minutes (min_schedule_interval_seconds=300)" in made.json()["detail"]
            made = c.post("/api/schedules", json={"name": "n", "schedule": "*/5 * * * *"})
            assert made.status_code == 201
            sid = made.json()["schedule"]["id"]
            patched = c.patch(f"/api/schedules/{sid}", json={"schedule": "*/2 * * * *"})
            assert patched.status_code == 422 and "min_schedule_interval_seconds=300" in patched.json()["detail"]
            retention = c.put("/api/projects/p/retention", json={"days": 30, "schedule": "* * * * *"})
            assert retention.status_code == 422 and "min_schedule_interval_seconds=300" in retention.json()["detail"]
            retention = c.put("/api/projects/p/retention", json={"days": 30, "schedule": SIX})
            assert retention.status_code == 422 and "five fields" in retention.json()["detail"]
    finally:
        svc.close()
    for cron, reason in ((SIX, "five fields"), (SEVEN, "five fields"),
                         ("*/2 * * * *", "min_schedule_interval_seconds=300")):
        done = subprocess.run([*CLI, "--data-dir", str(tmp_path), "schedules", "create", "--name", "n", "--cron", cron],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and reason in done.stderr, done.stderr
    tighter = {"ANALYTICS_EXPORT_EXPORT__MIN_SCHEDULE_INTERVAL_SECONDS": "60"}  # the limit is a setting
    assert '"status": "active"' in cli(tmp_path, "schedules", "create", "--name", "n", "--cron", "* * * * *",
                                       env=tighter)


def test_a_schedule_saved_before_the_rules_is_paused_with_the_reason_not_run(tmp_path):
    jobs = JobStore.for_data_dir(tmp_path)
    jobs.migrate()
    t = datetime(2026, 10, 1, tzinfo=UTC)
    old = ScheduledExport(name="old", schedule="0 * * * *", date_range="since_last_run")
    often = ScheduledExport(name="often", schedule="*/5 * * * *", date_range="since_last_run")
    for spec in (old, often):
        Schedules(jobs).create("p", spec, t)
    with jobs.engine.begin() as db:  # as a release without the five-field rule saved it
        db.execute(schedules.update().where(schedules.c.id == old.id).values(
            spec={**old.model_dump(mode="json"), "schedule": SIX}))
    scheduler = Scheduler(jobs, "s", clock=lambda: t + timedelta(hours=2),
                          config=ExportConfig(min_schedule_interval_seconds=600))  # and the limit was raised
    assert scheduler.tick() == 0
    for spec, reason in ((old, "five fields"), (often, "min_schedule_interval_seconds=600")):
        view = Schedules(jobs).get("p", spec.id)
        assert view["status"] == "paused" and reason in view["paused_reason"], view
    with jobs.engine.connect() as db:
        assert db.execute(sa.select(sa.func.count()).select_from(exports)).scalar_one() == 0
    set_policy(jobs, "p", RetentionPolicy(days=30), 300)
    with jobs.engine.begin() as db:
        db.execute(retention_policies.update().values(next_run=t, spec={**RetentionPolicy(days=30).model_dump(
            mode="json"), "schedule": SIX}))
    assert run_due(Settings(data_dir=tmp_path), jobs, t + timedelta(hours=1)) == 0
    _, row = get_policy(jobs, "p")
    assert row.next_run is None and "five fields" in row.last_error

    key = create_key(tmp_path, "p")
    svc = Service(tmp_path, 0)
    try:
        with svc.client(key) as c:
            shown = c.get(f"/api/schedules/{old.id}")
            assert shown.status_code == 200 and shown.json()["schedule"]["schedule"] == SIX
            assert c.get("/api/schedules").status_code == 200
            assert c.get("/api/projects/p/retention").json()["policy"]["schedule"] == SIX
            resumed = c.post(f"/api/schedules/{old.id}/resume")
            assert resumed.status_code == 422 and "five fields" in resumed.json()["detail"]
            fixed = c.patch(f"/api/schedules/{old.id}", json={"schedule": "0 * * * *", "enabled": True})
            assert fixed.status_code == 200 and fixed.json()["status"] == "active", fixed.text
    finally:
        svc.close()


def test_streamed_pulls_keep_to_max_concurrent_exports(tmp_path):
    from conftest import with_demo_events

    data = with_demo_events(tmp_path, 50_000)
    env = {"ANALYTICS_EXPORT_EXPORT__MAX_CONCURRENT_EXPORTS": "1"}
    key = create_key(data, "default", env)
    svc = Service(data, 0, env)
    pull = {"start": "2026-08-01", "end": "2026-11-01"}
    try:
        with svc.client(key) as c:
            with c.stream("GET", "/api/events/export", params=pull) as first:  # held open, unread
                assert first.status_code == 200
                second = c.get("/api/events/export", params=pull)
                assert second.status_code == 429 and int(second.headers["Retry-After"]) > 0
                assert "max_concurrent_exports" in second.json()["detail"]
            deadline = time.monotonic() + 30  # the first's scan stops once its client has gone
            while (again := c.get("/api/events/export", params={**pull, "end": "2026-08-02"})).status_code == 429:
                assert time.monotonic() < deadline, again.text
                time.sleep(0.2)
            assert again.status_code == 200
    finally:
        svc.close()
