"""Scale-out: one partitioned export run by 1 worker process (baseline), then by 2, per event store.

Run from the project root (PostgreSQL on 127.0.0.1:5432 with trust auth, as scripts/test sets up):

    uv run python bench/scale_bench.py                                  # 5M events, JSON Lines
    uv run python bench/scale_bench.py --events 1000000 --sources duckdb --format parquet

It generates demo events into a DuckDB file (and copies them into a throwaway PostgreSQL database
and a chDB directory), keeps jobs in a throwaway PostgreSQL job store, starts N
`analytics-export worker` processes, queues one export of every event cut into `--partitions`
windows, and times it from queueing to completion. It prints events/s and the speedup of 2
workers over 1 measured in the same run (target >= 1.7x on the DuckDB file and on PostgreSQL).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
END = datetime(2026, 11, 1, tzinfo=timezone.utc)
DAYS = 90  # the demo's span


def run(data: Path, env: dict[str, str], workers: int, fmt: str, jobs_url: str, events: int) -> float:
    """Seconds from queueing the export to its completion with `workers` worker processes."""
    from analytics_export.jobs.store import JobStore
    from analytics_export.models import ExportRequest, ExportStatus

    jobs = JobStore(jobs_url)
    procs = [subprocess.Popen([sys.executable, "-m", "analytics_export.cli", "--data-dir", str(data), "worker"],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(workers)]
    try:
        time.sleep(5)  # every worker imported and polling
        request = ExportRequest(start_date=END - timedelta(days=DAYS), end_date=END, format=fmt)
        started = time.perf_counter()
        jobs.create("default", request)
        while (job := jobs.get("default", request.id)).status not in (ExportStatus.COMPLETED, ExportStatus.FAILED):
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        assert job.status is ExportStatus.COMPLETED, job.error
        assert job.total_events == events, (job.total_events, events)
        Path(job.destination_path).unlink()
        return seconds
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        jobs.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--format", default="json_lines")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--sources", default="duckdb,postgres,clickhouse")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from analytics_export import Settings, open_store
    from analytics_export.demo import generate
    from analytics_export.jobs.store import JobStore

    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    suffix = uuid.uuid4().hex[:8]
    databases = [f"ae_scale_events_{suffix}", f"ae_scale_jobs_{suffix}"]
    for database in databases:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").exists() else None) as tmp:
            data = Path(tmp)
            started = time.perf_counter()
            store = open_store(Settings(data_dir=data), read_only=False)
            generate(store, args.events, "default", end=END)
            store.close()
            print(f"generated {args.events:,} events in {time.perf_counter() - started:.1f}s")
            urls = {"duckdb": "", "postgres": f"postgresql://postgres@127.0.0.1:5432/{databases[0]}",
                    "clickhouse": f"chdb://{data / 'chdb'}"}
            sources = args.sources.split(",")
            for name in sources:
                if name == "duckdb":
                    continue
                started = time.perf_counter()
                store = open_store(Settings(data_dir=data, events_url=urls[name]), read_only=False)
                store.execute(f"ATTACH '{data / 'events.duckdb'}' AS demo (READ_ONLY)", [])
                store.insert("SELECT * FROM demo.events")
                store.close()
                print(f"loaded them into {name} in {time.perf_counter() - started:.1f}s")
            jobs_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{databases[1]}"
            JobStore(jobs_url).migrate()
            hours = DAYS * 24 / args.partitions
            print(f"\none export of {args.events:,} events as {args.format}, {args.partitions} partitions of "
                  f"{hours:g} h; PostgreSQL job store")
            print(f"{'store':<11} {'workers':>7} {'seconds':>8} {'events/s':>10} {'speedup':>8}")
            for name in sources:
                env = {"ANALYTICS_EXPORT_DATABASE_URL": jobs_url, "ANALYTICS_EXPORT_EXPORT__PARTITION_HOURS": str(hours),
                       "ANALYTICS_EXPORT_DUCKDB_THREADS": "1"}
                if urls[name]:
                    env["ANALYTICS_EXPORT_EVENTS_URL"] = urls[name]
                base = None
                for workers in (1, 2):
                    seconds = run(data, env, workers, args.format, jobs_url, args.events)
                    base = base or seconds
                    print(f"{name:<11} {workers:>7} {seconds:>8.2f} {args.events / seconds:>10,.0f} "
                          f"{base / seconds:>7.2f}x")
    finally:
        for database in databases:
            admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
