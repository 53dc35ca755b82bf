"""Schedules: windows that tile time (DST included), exactly-once runs through restarts, kills and
downtime, backfills, two schedulers on one PostgreSQL job store, auto-pause, and the API.
Time is an injected clock: nothing here sleeps through a schedule."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from service import Service, create_key
from support import START, Sim, drain

from analytics_export import Settings
from analytics_export.enums import DateRange
from analytics_export.models import ScheduledExport
from analytics_export.runtime.scheduler import Scheduler, Schedules, backfill, run_history
from analytics_export.runtime.windows import due, windows
from analytics_export.runtime.worker import Worker
from analytics_export.store.jobs import JobStore
from analytics_export.store.tables import schedule_runs

UTC = timezone.utc
def tiles(spans: list[tuple[datetime, datetime]]) -> bool:
    return all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and all(s < e for s, e in spans)


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata"])
def test_windows_tile_through_dst(zone):
    tz = ZoneInfo(zone)
    lo, hi = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    for unit in (DateRange.LAST_HOUR, DateRange.LAST_DAY, DateRange.LAST_WEEK, DateRange.LAST_MONTH):
        spans = list(windows(unit, tz, lo, hi))
        assert tiles(spans), (zone, unit)
        for s, e in spans:  # every window starts on a local calendar boundary
            local = s.astimezone(tz)
            assert (local.minute, local.second) == (0, 0) or zone == "Australia/Lord_Howe"
            if unit is not DateRange.LAST_HOUR:
                assert local.hour == 0 or zone == "Australia/Lord_Howe"
    days = {e - s for s, e in windows(DateRange.LAST_DAY, ZoneInfo("America/New_York"), lo, hi)}
    assert days == {timedelta(hours=23), timedelta(hours=24), timedelta(hours=25)}
    hours = list(windows(DateRange.LAST_HOUR, ZoneInfo("America/New_York"),
                         datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 1, 8, tzinfo=UTC)))
    assert len(hours) == 4 and all(e - s == timedelta(hours=1) for s, e in hours)  # 01:00 EDT and 01:00 EST apart


def test_due_windows_after_downtime():
    tz, delay = ZoneInfo("UTC"), timedelta(minutes=1)
    fired = datetime(2026, 10, 5, 3, 0, tzinfo=UTC)
    first = due(DateRange.LAST_DAY, tz, None, fired, fired - timedelta(days=1), delay, False)
    assert first == [(datetime(2026, 10, 4, tzinfo=UTC), datetime(2026, 10, 5, tzinfo=UTC))]
    missed = due(DateRange.LAST_DAY, tz, datetime(2026, 10, 2, tzinfo=UTC), fired, fired, delay, False)
    assert [s.day for s, _ in missed] == [2, 3, 4]
    latest = due(DateRange.LAST_DAY, tz, datetime(2026, 10, 2, tzinfo=UTC), fired, fired, delay, True)
    assert [s.day for s, _ in latest] == [4]
    assert due(DateRange.LAST_DAY, tz, datetime(2026, 10, 5, tzinfo=UTC), fired, fired, delay, False) == []
    since = due(DateRange.SINCE_LAST_RUN, tz, datetime(2026, 10, 5, 1, tzinfo=UTC), fired, fired, delay, False)
    assert since == [(datetime(2026, 10, 5, 1, tzinfo=UTC), fired - delay)]


def test_a_run_whose_worker_dies_max_attempts_times_fails_and_the_next_runs(tmp_path):
    """A schedule's runs are exports in the queue like any: a worker dying holding one is a failed
    attempt, the third fails the run with the reason, and the schedule's next window still runs."""
    sim = Sim(tmp_path)
    spec = ScheduledExport(name="hourly", schedule="5 * * * *", date_range="last_hour", delay_seconds=60)
    Schedules(sim.jobs).create("default", spec, sim.t)
    scheduler = Scheduler(sim.jobs, "s0", clock=sim.clock)
    sim.t += timedelta(hours=1)
    assert scheduler.tick() == 1
    for attempt in (1, 2, 3):
        time.sleep(0.002)  # leases run on the wall clock: the last 1 ms one has expired
        assert sim.jobs.claim(f"dead-{attempt}", timedelta(milliseconds=1)).attempts == attempt
    time.sleep(0.002)
    sim.t += timedelta(hours=1)
    scheduler.tick()
    worker = Worker(sim.settings, sim.jobs, name="live")
    while worker.run_one():
        pass
    last, first = run_history(sim.jobs, spec.id, 10, 0)
    assert first["status"] == "failed" and "the worker running this export died (worker dead-3 " in first["error"]
    assert "on attempt 3, and max_attempts is 3" in first["error"]
    assert last["status"] == "completed"


def hourly_through_kills_and_downtime(data: Path, days: int, seed: int) -> Counter:
    """An hourly schedule run for `days` of simulated time while events arrive (some late), schedulers
    and workers die and the whole system is down for 30 hours now and then; every window runs once and
    each event is exported exactly once. Returns how often each mishap happened."""
    rng = random.Random(seed)
    sim = Sim(data)
    spec = ScheduledExport(name="hourly", schedule="5 * * * *", date_range="last_hour", delay_seconds=60)
    Schedules(sim.jobs).create("default", spec, sim.t)
    scheduler = Scheduler(sim.jobs, "s0", clock=sim.clock)
    mishaps: Counter = Counter()
    workers = 0
    end = START + timedelta(days=days)
    while sim.t < end:
        step = timedelta(minutes=rng.choice([7, 20, 45, 61, 90])) if rng.random() > 0.01 else timedelta(hours=30)
        sim.t += step  # (a 30-hour step is downtime: the next tick catches up every missed window)
        mishaps["downtime"] += step == timedelta(hours=30)
        sim.ingest(rng.randint(1, 20), late=rng.random() < 0.2)
        roll = rng.random()
        if roll < 0.05:  # the scheduler dies; a new one takes over once the old lease expires
            scheduler = Scheduler(sim.jobs, f"s{rng.randint(1, 10**6)}", clock=sim.clock)
            mishaps["scheduler killed"] += 1
        scheduler.tick()
        if roll < 0.2:  # a worker claims a job and dies mid-run; its lease lapses
            mishaps["worker killed"] += sim.jobs.claim(f"dead-{workers}", timedelta(milliseconds=1)) is not None
        workers += 1
        worker = Worker(sim.settings, sim.jobs, name=f"w{workers}")
        for _ in range(rng.randint(0, 3)):
            worker.run_one()
    drain(sim, scheduler, Worker(sim.settings, sim.jobs, name="final"), spec)  # windows past the limit wait planned
    with sim.jobs.engine.connect() as c:
        spans = [(r.window_start, r.window_end) for r in c.execute(
            sa.select(schedule_runs).order_by(schedule_runs.c.window_start)).all()]
    assert len(spans) > days * 24 - 5 and tiles(spans)
    assert {r["status"] for r in run_history(sim.jobs, spec.id, 1000, 0)} == {"completed"}
    seen = sim.exported()
    assert max(seen.values()) == 1, "an event was exported twice"
    assert set(seen) == sim.stored_before(spans[-1][1].replace(tzinfo=UTC)), "an event was missed"
    return mishaps


def test_seven_days_hourly_through_kills_and_downtime_export_each_event_once(tmp_path):
    mishaps = hourly_through_kills_and_downtime(tmp_path, 7, seed=7)
    assert mishaps["downtime"] >= 2 and mishaps["scheduler killed"] >= 3 and mishaps["worker killed"] >= 10, mishaps


@pytest.mark.slow
@pytest.mark.timeout(900)  # 720 windows through kills: near the default 300 s on a loaded 2-core machine
def test_thirty_days_hourly_through_kills_and_downtime_export_each_event_once(tmp_path):
    mishaps = hourly_through_kills_and_downtime(tmp_path, 30, seed=7)
    assert mishaps["downtime"] >= 5 and mishaps["scheduler killed"] >= 20 and mishaps["worker killed"] >= 50, mishaps


def test_backfill_exports_only_missing_windows_and_force_replaces(tmp_path):
    sim = Sim(tmp_path)
    spec = ScheduledExport(name="daily", schedule="0 1 * * *", date_range="last_day", time_field="timestamp")
    Schedules(sim.jobs).create("default", spec, sim.t)
    scheduler = Scheduler(sim.jobs, "s", clock=sim.clock)
    worker = Worker(sim.settings, sim.jobs)

    for _ in range(3):  # three daily runs: windows Oct 1, 2, 3
        sim.t += timedelta(days=1)
        sim.ingest(5)
        scheduler.tick()
    drain(sim, scheduler, worker, spec)
    files = sorted((sim.settings.export_dir / "default").iterdir())
    assert len(files) == 3
    counts = backfill(sim.jobs, "default", spec.id, datetime(2026, 9, 28, tzinfo=UTC), datetime(2026, 10, 4, tzinfo=UTC))
    assert counts == {"queued": 3, "skipped": 3}  # Sep 28-30 are new; Oct 1-3 completed already
    scheduler.tick()  # releases backfilled windows `backfill_concurrency` (2) at a time
    assert Counter(r["status"] for r in run_history(sim.jobs, spec.id, 100, 0)) == {
        "completed": 3, "pending": 2, "planned": 1}
    drain(sim, scheduler, worker, spec)
    assert len(list((sim.settings.export_dir / "default").iterdir())) == 6
    before = {p.name: p.stat().st_mtime_ns for p in (sim.settings.export_dir / "default").iterdir()}
    forced = backfill(sim.jobs, "default", spec.id, datetime(2026, 10, 2, tzinfo=UTC), datetime(2026, 10, 3, 12, tzinfo=UTC),
                      force=True)
    assert forced == {"queued": 2, "skipped": 0}
    drain(sim, scheduler, worker, spec)
    after = {p.name: p.stat().st_mtime_ns for p in (sim.settings.export_dir / "default").iterdir()}
    assert set(after) == set(before), "re-exported windows keep their names: no second copy"
    assert sum(after[n] != before[n] for n in after) == 2
    history = run_history(sim.jobs, spec.id, 100, 0)
    assert len(history) == 6 and all(r["status"] == "completed" for r in history)


def test_a_failing_schedule_pauses_itself(tmp_path):
    sim = Sim(tmp_path)
    sim.settings = Settings(data_dir=tmp_path, destination_allow=["127.0.0.1"],
                            export={"max_attempts": 1, "upload_retries": 0})
    spec = ScheduledExport(name="broken", schedule="0 * * * *", date_range="last_hour", max_failures=3,
                           destination={"type": "webhook", "url": "http://127.0.0.1:9/closed"})
    Schedules(sim.jobs).create("default", spec, sim.t)
    scheduler = Scheduler(sim.jobs, "s", clock=sim.clock)
    for _ in range(4):
        sim.t += timedelta(hours=1)
        scheduler.tick()
        while Worker(sim.settings, sim.jobs).run_one():
            pass
    view = Schedules(sim.jobs).get("default", spec.id)
    assert view["status"] == "paused" and "3 consecutive failed runs" in view["paused_reason"]
    assert "ConnectError" in view["paused_reason"] and view["schedule"]["next_run"] is None


SCHEDULER_PROCESS = textwrap.dedent("""
    import sys
    from datetime import datetime, timedelta, timezone
    from analytics_export.runtime.scheduler import Scheduler
    from analytics_export.store.jobs import JobStore
    jobs = JobStore(sys.argv[1])
    t = [datetime(2026, 10, 1, tzinfo=timezone.utc)]
    s = Scheduler(jobs, sys.argv[2], lease=timedelta(0), clock=lambda: t[0])  # no lease: both act, always
    for _ in range(300):
        t[0] += timedelta(minutes=10)
        s.tick()
""")


def test_two_scheduler_processes_never_create_a_run_twice(pg_url):
    jobs = JobStore(pg_url)
    jobs.migrate()
    spec = ScheduledExport(name="racy", schedule="*/10 * * * *", date_range="last_hour", delay_seconds=0)
    Schedules(jobs).create("default", spec, START)
    procs = [subprocess.Popen([sys.executable, "-c", SCHEDULER_PROCESS, pg_url, f"p{i}"]) for i in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    with jobs.engine.connect() as c:
        spans = [(r.window_start, r.window_end) for r in c.execute(
            sa.select(schedule_runs).order_by(schedule_runs.c.window_start)).all()]
        exports = c.execute(sa.text("SELECT count(*) FROM exports")).scalar_one()
        planned = c.execute(sa.text("SELECT count(*) FROM schedule_runs WHERE planned")).scalar_one()
    # 300 ticks of 10 minutes: the hours from the one before the first run (Sep 30 23:00) to 50:00
    assert spans[0][0] == START - timedelta(hours=1) and spans[-1][1] == START + timedelta(hours=50)
    assert len(spans) == 51 and tiles(spans)
    assert exports == 4 and planned == len(spans) - 4, "no worker ran: max_concurrent_exports (4) queued, the rest wait"


@pytest.mark.server
def test_schedule_api(tmp_path):
    svc = Service(tmp_path)
    try:
        with svc.client(create_key(tmp_path, "p")) as c:
            bad = c.post("/api/schedules", json={"name": "x", "schedule": "every day"})
            assert bad.status_code == 422 and "not a cron expression" in bad.json()["detail"]
            bad = c.post("/api/schedules", json={"name": "x", "schedule": "0 2 * * *", "timezone": "Moon/Base"})
            assert bad.status_code == 422 and "IANA time zone" in bad.json()["detail"]
            created = c.post("/api/schedules", json={"name": "nightly", "schedule": "0 2 * * *",
                                                     "timezone": "Europe/Berlin", "date_range": "last_day",
                                                     "format": "csv", "id": "mine", "next_run": "2001-01-01"})
            assert created.status_code == 201, created.text
            view = created.json()
            sid = view["schedule"]["id"]
            assert sid != "mine" and view["status"] == "active"
            next_run = datetime.fromisoformat(view["schedule"]["next_run"])
            assert next_run.astimezone(ZoneInfo("Europe/Berlin")).hour == 2 and next_run > datetime.now(UTC)
            assert c.get("/api/schedules").json()["total"] == 1
            patched = c.patch(f"/api/schedules/{sid}", json={"schedule": "30 3 * * *", "format": "parquet"})
            assert patched.status_code == 200 and patched.json()["schedule"]["format"] == "parquet"
            fixed = c.patch(f"/api/schedules/{sid}", json={"date_range": "last_week"})
            assert fixed.status_code == 422 and "create a new schedule" in fixed.json()["detail"]
            paused = c.post(f"/api/schedules/{sid}/pause").json()
            assert paused["status"] == "paused" and paused["schedule"]["next_run"] is None
            assert c.post(f"/api/schedules/{sid}/resume").json()["status"] == "active"
            filled = c.post(f"/api/schedules/{sid}/backfill", json={"start": "2026-10-01T00:00:00+02:00",
                                                                      "end": "2026-10-04T00:00:00+02:00"})
            assert filled.status_code == 202 and filled.json() == {"queued": 3, "skipped": 0}
            runs = c.get(f"/api/schedules/{sid}/runs").json()
            assert len(runs) == 3 and {r["status"] for r in runs} <= {"planned", "pending", "processing", "completed"}
            other = svc.client(create_key(tmp_path, "q"))
            assert other.get(f"/api/schedules/{sid}").status_code == 404
            assert other.post(f"/api/schedules/{sid}/backfill", json={"start": "2026-10-01",
                                                                       "end": "2026-10-02"}).status_code == 404
            assert c.delete(f"/api/schedules/{sid}").status_code == 204
            assert c.get(f"/api/schedules/{sid}").status_code == 404
    finally:
        svc.close()
