"""An idle worker wakes when a job is queued (SQLite's data_version, PostgreSQL's LISTEN/NOTIFY), not at
its next look; a wait that learns nothing lasts its time, and a lost PostgreSQL connection costs only
the wake-ups until it is back."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import psycopg
import pytest

from analytics_export import Settings
from analytics_export.enums import ExportStatus
from analytics_export.models import ExportRequest
from analytics_export.runtime.worker import Worker
from analytics_export.store.jobs import JobStore
from analytics_export.store.wakeups import PostgresWakeup, SqliteWakeup, TimedWait, wakeup_for
from conftest import DEMO_END, with_demo_events

LONG = 60.0
"""A wait none of these tests should see out: each returns long before, or the wake-up failed."""


def an_export() -> ExportRequest:
    return ExportRequest(id=str(uuid.uuid4()), format="json", start_date=DEMO_END.replace(month=10),
                         end_date=DEMO_END)


def queued_after(jobs: JobStore, delay: float) -> threading.Thread:
    """A thread that queues an export on `jobs` (a connection other than the wait's) after `delay`."""
    thread = threading.Thread(target=lambda: (time.sleep(delay), jobs.create("default", an_export(), 100)))
    thread.start()
    return thread


def waited(wakeup, seconds: float) -> float:
    started = time.monotonic()
    wakeup.wait(threading.Event(), seconds)
    return time.monotonic() - started


@pytest.fixture(params=["sqlite", "postgresql"])
def jobs(request, tmp_path):
    store = (JobStore.for_data_dir(tmp_path) if request.param == "sqlite"
             else JobStore(request.getfixturevalue("pg_url")))
    store.migrate()
    yield store
    store.engine.dispose()


def test_a_wait_ends_once_a_job_is_queued(jobs):
    wakeup = wakeup_for(jobs.engine)
    assert isinstance(wakeup, SqliteWakeup if jobs.engine.dialect.name == "sqlite" else PostgresWakeup)
    try:
        assert waited(wakeup, 0.3) >= 0.3, "nothing queued: the wait lasts its time"
        thread = queued_after(jobs, 0.2)
        assert waited(wakeup, LONG) < LONG / 2
        thread.join()
        assert waited(wakeup, 0.3) >= 0.3, "the wake-up was used up"
    finally:
        wakeup.close()


def test_a_wait_ends_once_an_export_is_partitioned(jobs):
    job = jobs.create("default", an_export(), 100)
    assert jobs.claim("w1", timedelta(seconds=30)).id == job.id
    wakeup = wakeup_for(jobs.engine)
    try:
        waited(wakeup, 0.1)  # SQLite: the claim's commit
        thread = threading.Thread(target=lambda: (time.sleep(0.2), jobs.partition(
            job.id, "w1", [(job.request.start_date, DEMO_END.replace(day=15)),
                           (DEMO_END.replace(day=15), job.request.end_date)])))
        thread.start()
        assert waited(wakeup, LONG) < LONG / 2
        thread.join()
    finally:
        wakeup.close()


def test_a_lost_postgresql_connection_is_listened_on_again(pg_url):
    jobs = JobStore(pg_url)
    jobs.migrate()
    wakeup = wakeup_for(jobs.engine)
    try:
        with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [wakeup.con.info.backend_pid])
        assert waited(wakeup, 0.3) >= 0.3, "the loss waits out the time and does not raise"
        thread = queued_after(jobs, 0.2)
        assert waited(wakeup, LONG) < LONG / 2, "listening again"
        thread.join()
    finally:
        wakeup.close()
        jobs.engine.dispose()


def test_a_store_it_cannot_listen_on_gets_a_timed_wait():
    jobs = JobStore("postgresql+psycopg://postgres:secret@127.0.0.1:1/none")
    wakeup = wakeup_for(jobs.engine)
    assert isinstance(wakeup, TimedWait)
    assert waited(wakeup, 0.2) >= 0.2


def test_an_idle_worker_starts_a_queued_export_long_before_its_next_look(tmp_path):
    data = with_demo_events(tmp_path, 2_000)
    settings = Settings(data_dir=data)
    jobs = JobStore.for_data_dir(data)
    jobs.migrate()
    stop = threading.Event()
    worker = threading.Thread(target=Worker(settings, jobs).run, args=(stop, LONG))
    worker.start()
    try:
        time.sleep(1)  # idle, waiting
        job = jobs.create("default", an_export(), 100)
        deadline = time.monotonic() + LONG / 2
        while (done := jobs.get("default", job.id)).status is not ExportStatus.COMPLETED:
            assert done.status in (ExportStatus.PENDING, ExportStatus.PROCESSING), done.error
            assert time.monotonic() < deadline, "the worker was not woken"
            time.sleep(0.05)
        assert done.total_events > 0
    finally:
        stop.set()
        worker.join()

