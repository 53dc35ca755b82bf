"""Scale-out: one partitioned export run by 1 worker process (baseline), then by 2, per event store.

Run from the project root (PostgreSQL on 127.0.0.1:5432 with trust auth, as scripts/test sets up):

    uv run python bench/scale_bench.py                                  # 5M events, JSON Lines
    uv run python bench/scale_bench.py --events 1000000 --sources duckdb --format parquet

It generates demo events into a DuckDB file (and copies them into a throwaway PostgreSQL database
and a chDB directory), keeps jobs in a throwaway PostgreSQL job store, starts N
`analytics-export worker` processes, queues one export of every event cut into `--partitions`
windows, and times it from queueing to completion. Each store runs: one worker with partitioning
off (the whole export in one run), then 1 and 2 workers on the partitions; unpinned, then with
each worker pinned to its own core. It prints events/s, the cores the workers kept busy, and the
speedup of 2 workers over 1 measured in the same run (target >= 1.7x on the DuckDB file and on
PostgreSQL). Unpinned, one worker already overlaps scan, encoding and writing on both cores, so
the second worker can only add what the first leaves idle; pinned, each worker is one core.
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
from stores import copy_demo, generate_demo, store_urls

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
END = datetime(2026, 11, 1, tzinfo=timezone.utc)
DAYS = 90  # the demo's span


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(data: Path, env: dict[str, str], workers: int, fmt: str, jobs_url: str, events: int,
        pin: bool) -> tuple[float, float]:
    """Seconds from queueing the export to its completion with `workers` worker processes, and the
    CPU seconds the workers spent on it. With `pin`, worker i runs on core i only."""
    from analytics_export.enums import ExportStatus
    from analytics_export.models import ExportRequest
    from analytics_export.store.jobs import JobStore

    jobs = JobStore(jobs_url)
    cores = sorted(os.sched_getaffinity(0))
    procs = [subprocess.Popen([sys.executable, "-m", "analytics_export.cli", "--data-dir", str(data), "worker"],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=(lambda core=cores[i % len(cores)]: os.sched_setaffinity(0, {core}))
                              if pin else None)
             for i in range(workers)]
    try:
        time.sleep(5)  # every worker imported and polling
        request = ExportRequest(start_date=END - timedelta(days=DAYS), end_date=END, format=fmt)
        before = sum(cpu_seconds(p.pid) for p in procs)
        started = time.perf_counter()
        jobs.create("default", request)
        while (job := jobs.get("default", request.id)).status not in (ExportStatus.COMPLETED, ExportStatus.FAILED):
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        cpu = sum(cpu_seconds(p.pid) for p in procs) - before
        assert job.status is ExportStatus.COMPLETED, job.error
        assert job.total_events == events, (job.total_events, events)
        Path(job.destination_path).unlink()
        return seconds, cpu
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
    parser.add_argument("--threads", type=int, default=1, help="DuckDB threads per worker")
    parser.add_argument("--workers", default="0,1,2", help="worker counts to run; 0: one worker, no partitions")
    parser.add_argument("--pin", default="no,yes", help="runs unpinned and/or with each worker on its own core")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from analytics_export.store.jobs import JobStore

    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    suffix = uuid.uuid4().hex[:8]
    databases = [f"ae_scale_events_{suffix}", f"ae_scale_jobs_{suffix}"]
    for database in databases:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").exists() else None) as tmp:
            data = Path(tmp)
            print(f"generated {args.events:,} events in {generate_demo(data, args.events, END):.1f}s")
            urls = store_urls(data, databases[0])
            sources = args.sources.split(",")
            for name in sources:
                if name != "duckdb":
                    print(f"loaded them into {name} in {copy_demo(data, urls[name]):.1f}s")
            jobs_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{databases[1]}"
            JobStore(jobs_url).migrate()
            hours = DAYS * 24 / args.partitions
            print(f"\none export of {args.events:,} events as {args.format}, {args.partitions} partitions of "
                  f"{hours:g} h; PostgreSQL job store")
            print(f"{'store':<11} {'pinned':>6} {'workers':>7} {'seconds':>8} {'events/s':>10} {'cores used':>10} "
                  f"{'speedup vs 1':>12}")
            for name, pin in ((n, p) for n in sources for p in args.pin.split(",")):
                env = {"ANALYTICS_EXPORT_DATABASE_URL": jobs_url, "ANALYTICS_EXPORT_DUCKDB_THREADS": str(args.threads),
                       "ANALYTICS_EXPORT_EXPORT__MIN_PARTITION_EVENTS": "1"}
                if urls[name]:
                    env["ANALYTICS_EXPORT_EVENTS_URL"] = urls[name]
                base = None
                for workers in map(int, args.workers.split(",")):
                    hours_env = {"ANALYTICS_EXPORT_EXPORT__PARTITION_HOURS": str(hours if workers else 0)}
                    try:
                        seconds, cpu = run(data, {**env, **hours_env}, max(workers, 1), args.format, jobs_url,
                                           args.events, pin == "yes")
                    except (AssertionError, subprocess.SubprocessError) as exc:
                        print(f"{name:<11} {pin:>6} {workers:>7} failed: {exc}")
                        continue
                    if workers == 1:
                        base = seconds
                    label = workers if workers else "1 whole"
                    print(f"{name:<11} {pin:>6} {label:>7} {seconds:>8.2f} {args.events / seconds:>10,.0f} "
                          f"{cpu / seconds:>10.2f} {f'{base / seconds:.2f}x' if base else '':>12}")
    finally:
        for database in databases:
            admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
