"""Workers survive crashes (a SIGKILLed worker's job is finished by another) and share a PostgreSQL
job store without ever running one job twice."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from analytics_export import Settings, open_store
from analytics_export.sources import EventQuery
from conftest import DEMO_END, with_demo_events
from helpers import read_records
from servers import HookServer
from service import CLI, Service, create_key, wait_for

pytestmark = pytest.mark.server  # the service and worker processes

ALL = {"start_date": "2026-07-01", "end_date": "2026-11-02"}
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def start_worker(data: Path, lease: float = 2.0, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "--data-dir", str(data), "worker", "--lease", str(lease)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def start_and_wait_for_progress(client, body: dict) -> str:
    """Create an export and return its id once a worker has reported progress on it."""
    export_id = client.post("/api/exports", json=body).json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/api/exports/{export_id}").json()["progress"]["events"] == 0:
        assert time.monotonic() < deadline, "the worker never reported progress"
        time.sleep(0.02)
    return export_id


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err.decode()


def test_killed_worker_job_is_finished_by_another(big_store):
    key = create_key(big_store, "default")
    svc = Service(big_store, workers=0)
    first = start_worker(big_store)
    second = None
    try:
        with svc.client(key) as c:
            export_id = start_and_wait_for_progress(c, {**ALL, "format": "json", "compression": "zstd"})
            first.send_signal(signal.SIGKILL)
            first.wait()
            killed_at = c.get(f"/api/exports/{export_id}").json()
            assert killed_at["status"] == "processing", "killed mid-export"
            folder = big_store / "exports" / "default"
            assert not list(folder.glob(f"export_{export_id}*")), "nothing final from the dead run"
            second = start_worker(big_store)
            done = wait_for(c, export_id, timeout=120)
            got = c.get(f"/api/exports/{export_id}/download")
            assert got.status_code == 200
        out = folder / "downloaded.json.zst"
        out.write_bytes(got.content)
        store = open_store(Settings(data_dir=big_store))
        try:
            expected = store.count(EventQuery(project="default", start=DEMO_END.replace(month=7),
                                              end=DEMO_END.replace(day=2)))
        finally:
            store.close()
        assert done["result"]["total_events"] == expected == len(read_records(out, "json", "zstd"))
        out.unlink()
        assert not [p for p in folder.iterdir() if p.name.endswith(".partial")], "the dead run's temp file is gone"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop(proc)
        svc.close()


def test_two_workers_on_postgresql_never_run_a_job_twice(tmp_path, pg_url):
    data = with_demo_events(tmp_path / "data", 20_000)
    env = {"ANALYTICS_EXPORT_DATABASE_URL": pg_url, "ANALYTICS_EXPORT_EXPORT__MAX_CONCURRENT_EXPORTS": "100",
           "ANALYTICS_EXPORT_EXPORT__PARTITION_HOURS": str(24 * 30), "ANALYTICS_EXPORT_EXPORT__MIN_PARTITION_EVENTS": "1",
           "ANALYTICS_EXPORT_EXPORT__PARTITION_EMBEDDED": "true"}  # half the exports run as 5 partitions
    key = create_key(data, "default", env)
    svc = Service(data, workers=0, env=env)
    workers = [start_worker(data, lease=10, env=env) for _ in range(2)]
    try:
        with svc.client(key) as c:
            ids = [c.post("/api/exports", json={**ALL, "format": f, **({"end_date": "2026-07-31"} if n % 2 else {})})
                   .json()["id"] for n, f in enumerate(["csv", "json", "parquet", "avro", "json_lines"] * 6)]
            results = [wait_for(c, i, timeout=120) for i in ids]
    finally:
        logs = [stop(w) for w in workers]
        svc.close()
    assert all(r["result"]["total_events"] == 20_000 for r in results[::2])
    assert len({r["result"]["total_events"] for r in results[1::2]}) == 1
    runs = Counter(m for log in logs for m in re.findall(r"export (\S+(?: partition \d+)?)(?:/\d+)? claimed by", log))
    partitions = {f"{i} partition {n}" for i in ids[::2] for n in range(1, 6)}
    assert set(runs) == partitions | set(ids[1::2]) and set(runs.values()) == {1}, "every job or partition ran once"
    assert all(re.search(r"claimed by", log) for log in logs), "both workers took jobs"
    with psycopg.connect(pg_url.replace("+psycopg", "")) as pg:
        attempts = pg.execute("SELECT attempts, count(*) FROM exports GROUP BY attempts").fetchall()
    assert attempts == [(1, len(ids))]


def test_cancel_stops_a_running_export_within_seconds(big_store):
    key = create_key(big_store, "default")
    svc = Service(big_store, workers=1)
    try:
        with svc.client(key) as c:
            # Avro with deflate is the slowest export here: seconds for 1M events, time to cancel it.
            export_id = start_and_wait_for_progress(c, {**ALL, "format": "avro", "compression": "gzip"})
            asked = time.monotonic()
            assert c.delete(f"/api/exports/{export_id}").status_code == 204
            failed = wait_for(c, export_id, "failed", timeout=10)
            assert time.monotonic() - asked < 5
            assert failed["result"]["error"] == "cancelled"
            folder = big_store / "exports" / "default"
            assert not list(folder.glob(f"*{export_id}*")), "no file, partial or final (nor a folder for them)"
            assert c.delete(f"/api/exports/{export_id}").status_code == 204, "a cancelled export can be deleted"
            assert c.get(f"/api/exports/{export_id}").status_code == 404
    finally:
        svc.close()


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def writes(pid: int, export_id: str) -> bool:
    """Whether process `pid` holds a file whose name has `export_id` in it open."""
    try:
        return any(export_id in os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def processes_below(pid: int) -> dict[int, str]:
    """Every process below `pid`, with its command line."""
    found, todo = {}, [pid]
    while todo:
        for child in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            for kid in map(int, child.read_text().split()):
                try:
                    found[kid] = Path(f"/proc/{kid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                todo.append(kid)
    return found


def test_an_export_whose_process_is_killed_is_retried_by_the_worker_that_lives_on(big_store):
    """Each export runs in a child process of its worker (`export.isolate`): killing that process (as the
    system does when it runs out of memory) fails the attempt, not the worker, which runs the export again."""
    env = {"ANALYTICS_EXPORT_EXPORT__RETRY_BACKOFF_SECONDS": "0"}
    key = create_key(big_store, "default", env)
    svc = Service(big_store, 1, env)
    try:
        with svc.client(key) as c:
            export_id = start_and_wait_for_progress(c, {**ALL, "format": "avro", "compression": "gzip"})
            below = processes_below(svc.proc.pid)
            workers = {pid for pid, line in below.items() if " worker " in line}
            servers = [pid for pid, line in below.items() if "multiprocessing.forkserver" in line and parent(pid) in workers]
            assert len(servers) == 1 and len(workers) == 1, below
            runs = [pid for pid in below if parent(pid) in servers and writes(pid, export_id)]
            assert len(runs) == 1, "the export's process: forked by the worker's server, writing the export's file"
            os.kill(runs[0], signal.SIGKILL)
            done = wait_for(c, export_id, timeout=120)
            now_below = processes_below(svc.proc.pid)
            assert {pid for pid, line in now_below.items() if " worker " in line} == workers, "the same worker"
            assert runs[0] not in now_below
        expected = read_records(Path(done["result"]["destination_path"]), "avro", "gzip")
        assert done["result"]["total_events"] == len(expected) > 0
        folder = big_store / "exports" / "default"
        assert not [p for p in folder.iterdir() if p.name.endswith(".partial")], "the killed run's temp file is gone"
    finally:
        svc.close()
    logs = svc.logs()
    assert "the export's process ended without finishing it (SIGKILL, the system may have run out of memory)" in logs
    assert "starting another" not in logs, "no worker died"
    with sqlite3.connect(big_store / "jobs.sqlite") as db:
        assert db.execute("SELECT attempts FROM exports WHERE id = ?", [export_id]).fetchone() == (2,)


def test_transient_failures_retry_with_backoff_then_fail(tmp_path):
    data = with_demo_events(tmp_path / "data", 1000)
    events = data / "events.duckdb"
    good = events.read_bytes()
    events.write_bytes(b"not a duckdb file" * 100)  # every attempt fails to open the store
    env = {"ANALYTICS_EXPORT_EXPORT__MAX_ATTEMPTS": "3", "ANALYTICS_EXPORT_EXPORT__RETRY_BACKOFF_SECONDS": "0.3",
           "ANALYTICS_EXPORT_EXPORT__PARTITION_HOURS": "0"}  # whole-export attempts (partitions: test_partitions)
    key = create_key(data, "default", env)
    svc = Service(data, workers=1, env=env)
    try:
        with svc.client(key) as c:
            export_id = c.post("/api/exports", json={**ALL, "format": "csv"}).json()["id"]
            failed = wait_for(c, export_id, "failed", timeout=30)
            assert "cannot open event store" in failed["result"]["error"]
            with sqlite3.connect(data / "jobs.sqlite") as db:
                assert db.execute("SELECT attempts FROM exports WHERE id = ?", (export_id,)).fetchone() == (3,)
            events.write_bytes(good)
            assert c.post(f"/api/exports/{export_id}/retry").status_code == 202
            assert wait_for(c, export_id)["result"]["total_events"] > 0
    finally:
        svc.close()


class WorkerKiller(HookServer):
    """A webhook receiver that SIGKILLs the worker sending to it: the export's lease owner, whose
    name holds its pid (`host:pid:suffix`), looked up in the job store by the X-Export-Id header."""

    def __init__(self, jobs: Path) -> None:
        self.killed: list[int] = []
        self.jobs = jobs
        super().__init__()

    def respond(self, headers: Any, body: bytes) -> tuple[int, dict[str, str]]:
        with sqlite3.connect(self.jobs) as db:
            owner, = db.execute("SELECT lease_owner FROM exports WHERE id = ?", (headers["X-Export-Id"],)).fetchone()
        pid = int(owner.split(":")[1])
        assert b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes(), "only ever a worker"
        self.killed.append(pid)
        os.kill(pid, signal.SIGKILL)
        return 204, {}  # to nobody: the sender is dead


def test_an_export_that_kills_its_worker_fails_after_max_attempts_and_the_queue_goes_on(tmp_path):
    """Each run of the first export kills its worker. Its death counts as a failed attempt: after
    max_attempts the export fails saying so, instead of killing every worker that takes it over,
    `serve` starts a worker again each time, and the next export in the queue completes."""
    data = with_demo_events(tmp_path / "data", 1000)
    env = {"ANALYTICS_EXPORT_EXPORT__MAX_ATTEMPTS": "3", "ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]',
           "ANALYTICS_EXPORT_EXPORT__PARTITION_HOURS": "0"}
    key = create_key(data, "default", env)
    killer = WorkerKiller(data / "jobs.sqlite")
    svc = Service(data, 1, env, "--lease", "1")
    try:
        with svc.client(key) as c:
            poison = c.post("/api/exports", json={**ALL, "format": "json_lines", "destination": {
                "type": "webhook", "url": killer.url}}).json()["id"]
            after = c.post("/api/exports", json={**ALL, "format": "csv"}).json()["id"]
            failed = wait_for(c, poison, "failed", timeout=120)
            done = wait_for(c, after, timeout=120)
    finally:
        svc.close()
        killer.shutdown()
    error = failed["result"]["error"]
    assert error.startswith("the worker running this export died") and "on attempt 3, and max_attempts is 3" in error
    assert len(set(killer.killed)) == 3, "three workers died, no more"
    assert done["result"]["total_events"] == 1000
    assert svc.logs().count("exited with status -9; starting another") == 3


def test_a_worker_killed_while_it_loads_sessions_leaves_each_once(big_store, pg_url):
    """A sessions export into a PostgreSQL table: the worker is killed while its rows flow into the table
    (the load's transaction dies with it), another worker runs it again: one row per session."""
    import psycopg

    env = {"ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]'}
    key = create_key(big_store, "default", env)
    svc = Service(big_store, workers=0, env=env)
    first, second = start_worker(big_store, env=env), None
    url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    body = {"model": "sessions", "start_date": "2026-10-01", "end_date": "2026-11-01",
            "destination": {"type": "postgres", "url": url, "table": "sessions"}}
    try:
        with svc.client(key) as c:
            export_id = start_and_wait_for_progress(c, body)
            first.send_signal(signal.SIGKILL)
            first.wait()
            assert c.get(f"/api/exports/{export_id}").json()["status"] == "processing", "killed mid-load"
            second = start_worker(big_store, env=env)
            done = wait_for(c, export_id, timeout=180)
        with psycopg.connect(url) as con:
            rows, keys = con.execute("SELECT count(*), count(DISTINCT session_id) FROM sessions").fetchone()
        assert rows == keys == done["result"]["total_events"] > 10_000
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop(proc)
        svc.close()
