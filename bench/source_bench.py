"""Event stores compared: the same events exported from DuckDB (baseline), PostgreSQL and ClickHouse.

Run from the project root (PostgreSQL on 127.0.0.1:5432 with trust auth, as scripts/test sets up):

    uv run python bench/source_bench.py                     # 1M events, JSON Lines and Parquet
    uv run python bench/source_bench.py --events 200000 --formats csv

It generates demo events into a DuckDB file, copies them row for row into a throwaway PostgreSQL
database and a chDB directory (ClickHouse's engine in-process), then runs each export in a fresh
process and prints seconds, events/s and peak RSS (VmHWM), each as a ratio to DuckDB's in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
from stores import copy_demo, generate_demo, store_urls

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

CHILD = """
import json, sys, time
from analytics_export import Settings, export
settings = Settings(data_dir=sys.argv[1], events_url=sys.argv[2] or None)
started = time.perf_counter()
result = export(settings=settings, start_date="2000-01-01", end_date="2100-01-01", format=sys.argv[3],
                output=sys.argv[4])
seconds = time.perf_counter() - started
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"events": result.total_events, "seconds": seconds, "peak_mb": hwm / 1024}))
"""


def run(data: Path, url: str, fmt: str, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(data), url, fmt, str(out)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--formats", default="json_lines,parquet")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))

    admin = psycopg.connect(PG_ADMIN, autocommit=True)
    database = f"ae_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{database}"')
    try:
        with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").exists() else None) as tmp:
            data = Path(tmp)
            generate_demo(data, args.events)
            urls = store_urls(data, database)
            for name in ("postgres", "clickhouse"):
                print(f"loaded {args.events:,} events into {name} in {copy_demo(data, urls[name]):.1f}s")
            print(f"\n{'store':<11} {'format':<11} {'seconds':>8} {'events/s':>10} {'peak MB':>8} "
                  f"{'time x duckdb':>14} {'memory x duckdb':>16}")
            for fmt in args.formats.split(","):
                base = None
                for name, url in urls.items():
                    r = run(data, url, fmt, data / f"out-{name}.{fmt}")
                    assert r["events"] == args.events, r
                    base = base or r
                    print(f"{name:<11} {fmt:<11} {r['seconds']:>8.2f} {r['events'] / r['seconds']:>10,.0f} "
                          f"{r['peak_mb']:>8.0f} {r['seconds'] / base['seconds']:>14.2f} "
                          f"{r['peak_mb'] / base['peak_mb']:>16.2f}")
    finally:
        admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
