"""Export before deletion: 90 days of events, archived and deleted past 30 days; a run interrupted at
any step and run again loses nothing and archives nothing twice."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import write_jsonl
from service import CLI

from analytics_export import Settings, open_store
from analytics_export.connections import Sealer
from analytics_export.demo import generate
from analytics_export.ingest import ingest_file
from analytics_export.models import RetentionPolicy
from analytics_export.privacy.rules import PrivacyRules
from analytics_export.runtime.retention import Interrupted, Retention, cutoff, set_policy
from analytics_export.sources import IDS, EventQuery
from analytics_export.store.jobs import JobStore
from analytics_export.store.policies import PrivacyStore

END = datetime(2026, 6, 1, tzinfo=timezone.utc)
POLICY = RetentionPolicy(days=30)


def key(event: str, distinct_id: str, ts: datetime, properties: str, uuid: str) -> tuple:
    """An event as compared between store and archive: its uuid too, as the archive keeps it."""
    return (event, distinct_id, ts.astimezone(timezone.utc).isoformat(),
            json.dumps(json.loads(properties), sort_keys=True), uuid)


def stored(settings: Settings, project: str = "default") -> Counter:
    store = open_store(settings)
    try:
        query = EventQuery(project=project, start=datetime(2000, 1, 1, tzinfo=timezone.utc), end=END, ids=IDS)
        rows = [r for b in store.batches(query, 10_000) for r in b.to_pylist()]
    finally:
        store.close()
    return Counter(key(r["event"], r["distinct_id"], r["timestamp"], r["properties"], r["uuid"]) for r in rows)


def archived(settings: Settings) -> Counter:
    found: Counter = Counter()
    for path in sorted((settings.data_dir / "archive" / "default").glob("date=*/*.parquet")):
        for r in pq.read_table(path).to_pylist():
            found[key(r["event"], r["distinct_id"], r["timestamp"], r["properties"], r["uuid"])] += 1
    return found


@pytest.fixture()
def ninety_days(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data")
    store = open_store(settings, read_only=False)
    try:
        generate(store, 6_000, "default", end=END)
        generate(store, 500, "other", end=END)
    finally:
        store.close()
    jobs = JobStore.for_data_dir(settings.data_dir)
    jobs.migrate()
    return settings, jobs


def run(settings: Settings, jobs: JobStore, stop_at: tuple[str, int] | None = None) -> list[dict]:
    seen: Counter = Counter()

    def checkpoint(step: str) -> None:
        seen[step] += 1
        if stop_at is not None and (step, seen[step]) == stop_at:
            raise Interrupted(step)

    return Retention(settings, jobs, "default", checkpoint).run(POLICY, at=END)


def test_dry_run_then_archive_and_delete_past_the_cutoff(ninety_days):
    settings, jobs = ninety_days
    original, others = stored(settings), stored(settings, "other")
    old = sum(n for k, n in original.items() if k[2] < cutoff(POLICY, END).isoformat())
    plan = Retention(settings, jobs, "default").run(POLICY, dry_run=True, at=END)
    assert sum(r["events"] for r in plan) == old and len(plan) >= 59
    assert stored(settings) == original and archived(settings) == Counter(), "a dry run changes nothing"

    reports = run(settings, jobs)
    assert all(r["action"] == "archived and deleted" for r in reports), reports
    assert archived(settings) + stored(settings) == original
    assert all(k[2] < cutoff(POLICY, END).isoformat() for k in archived(settings))
    assert all(k[2] >= cutoff(POLICY, END).isoformat() for k in stored(settings))
    assert stored(settings, "other") == others, "other projects are untouched"
    folders = sorted(p.name for p in (settings.data_dir / "archive" / "default").iterdir())
    assert folders[0].startswith("date=2026-03-0") and len(folders) == len(plan), "Hive-style day folders"
    assert run(settings, jobs) == [], "a second run has nothing to do"
    store = open_store(settings, read_only=False)
    try:
        for path in sorted((settings.data_dir / "archive" / "default").glob("date=*/*.parquet")):
            ingest_file(store, path, "default", restore=True)
    finally:
        store.close()
    assert stored(settings) == original, "the archives ingest back as the very events deleted (uuids kept)"


@pytest.mark.parametrize("step", ["archived", "verified", "deleted"])
@pytest.mark.parametrize("occurrence", [1, 7])
def test_interrupted_at_any_step_loses_nothing_and_archives_once(ninety_days, step, occurrence):
    settings, jobs = ninety_days
    original = stored(settings)
    with pytest.raises(Interrupted):
        run(settings, jobs, (step, occurrence))
    assert archived(settings) + stored(settings) >= original, "nothing lost at the interruption"
    run(settings, jobs)
    assert archived(settings) + stored(settings) == original, "rerun: nothing lost, nothing archived twice"
    assert max(archived(settings).values()) == 1


def test_late_events_go_to_a_second_generation(ninety_days, tmp_path):
    settings, jobs = ninety_days
    run(settings, jobs)
    late = [{"event": "late", "distinct_id": "u-late", "timestamp": "2026-03-10T12:00:00Z", "properties": {"n": 1}}]
    store = open_store(settings, read_only=False)
    try:
        ingest_file(store, write_jsonl(tmp_path / "late.jsonl", late), "default")
    finally:
        store.close()
    reports = run(settings, jobs)
    assert [(r["day"], r["action"], r["archived"]) for r in reports] == [("2026-03-10", "archived and deleted", 1)]
    assert (settings.data_dir / "archive/default/date=2026-03-10/events-g002.parquet").exists()
    assert not any(k[0] == "late" for k in stored(settings))


def test_a_failed_verification_leaves_the_events(ninety_days):
    settings, jobs = ninety_days
    original = stored(settings)

    def tamper(step: str) -> None:
        if step == "archived":
            for path in (settings.data_dir / "archive" / "default").glob("date=*/*.parquet"):
                path.write_bytes(path.read_bytes() + b"x")

    reports = Retention(settings, jobs, "default", tamper).run(POLICY, at=END)
    assert reports and all(r["action"] == "failed, events left in place" for r in reports)
    assert "checksum" in reports[0]["error"]
    assert stored(settings) == original


def test_archives_apply_the_privacy_policy_and_count_suppressed_events(ninety_days):
    settings, jobs = ninety_days
    policies = PrivacyStore(jobs, Sealer(settings.signing_key()))
    policies.set_policy("default", PrivacyRules(deny_properties=["plan"]))
    policies.suppress("default", ["user_1", "user_2", "user_3"])
    original = stored(settings)
    suppressed = sum(n for k, n in original.items() if k[1] in ("user_1", "user_2", "user_3")
                     and k[2] < cutoff(POLICY, END).isoformat())
    reports = run(settings, jobs)
    assert all(r["action"] == "archived and deleted" for r in reports)
    assert sum(r["archived"] for r in reports) + suppressed == sum(r["events"] for r in reports)
    assert not any("plan" in json.loads(k[3]) for k in archived(settings))


@pytest.mark.server
def test_a_killed_run_resumes_without_loss_or_a_second_archive(ninety_days):
    """SIGKILL the CLI's run at two moments, then run it to the end (the cutoff is 30 days before
    today: every demo event, from March to May, is past it)."""
    settings, jobs = ninety_days
    set_policy(jobs, "default", POLICY, 300)
    original = stored(settings)
    env = {**os.environ, "ANALYTICS_EXPORT_RETENTION_LEASE_SECONDS": "1"}
    for delay in (1.0, 2.5):
        proc = subprocess.Popen([*CLI, "--data-dir", str(settings.data_dir), "retention", "run"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        assert archived(settings) + stored(settings) >= original
        time.sleep(1.1)  # the killed run's lease lapses
    done = subprocess.run([*CLI, "--data-dir", str(settings.data_dir), "retention", "run"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert archived(settings) == original and stored(settings) == Counter()


def test_retention_on_a_postgresql_store(tmp_path, pg_url):
    settings = Settings(data_dir=tmp_path / "data", events_url=pg_url)
    store = open_store(settings, read_only=False)
    try:
        generate(store, 3_000, "default", end=END)
    finally:
        store.close()
    jobs = JobStore.for_data_dir(settings.data_dir)
    jobs.migrate()
    original = stored(settings)
    with pytest.raises(Interrupted):
        run(settings, jobs, ("verified", 3))
    assert archived(settings) + stored(settings) >= original
    reports = run(settings, jobs)
    assert reports and all(r["action"] == "archived and deleted" for r in reports)
    assert archived(settings) + stored(settings) == original and max(archived(settings).values()) == 1
    assert all(k[2] >= cutoff(POLICY, END).isoformat() for k in stored(settings))


def test_a_run_that_cannot_start_says_why_on_its_policy(tmp_path):
    from analytics_export.runtime.retention import get_policy, run_due, run_now

    settings = Settings(data_dir=tmp_path / "data", events_url=f"chdb://{tmp_path / 'chdb'}")
    jobs = JobStore.for_data_dir(settings.data_dir)
    jobs.migrate()
    set_policy(jobs, "default", POLICY, 300)
    assert run_now(jobs, "default")
    assert run_due(settings, jobs) == 1
    _, row = get_policy(jobs, "default")
    assert "ClickHouse use a table TTL" in row.last_error and row.last_run is not None


def test_two_runs_of_one_project_never_overlap(ninety_days):
    settings, jobs = ninety_days
    other = Retention(settings, jobs, "default")

    def second_run(step: str) -> None:
        if step == "archived":
            with pytest.raises(Exception, match="in progress; this one did nothing"):
                other.run(POLICY, at=END)

    Retention(settings, jobs, "default", second_run).run(POLICY, at=END)
    assert max(archived(settings).values()) == 1
