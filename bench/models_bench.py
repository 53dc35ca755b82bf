"""Derived models as a user meets them: `analytics-export export --model persons|sessions` to Parquet as a
whole process, on each event store, against the plain events export of the same window from the same
store in the same run.

Run from the project root (PostgreSQL on 127.0.0.1:5432 with trust auth, as scripts/test sets up):

    uv run python bench/models_bench.py                                   # 5M demo events, all three stores
    uv run python bench/models_bench.py --events 1000000 --stores duckdb,clickhouse --repeat 3
    uv run python bench/models_bench.py --cache DIR                       # where demo stores are kept
    uv run python bench/models_bench.py --models events --formats parquet,json_lines,csv --stores postgres,clickhouse

Demo events (`stores.generate_demo`, ending today 00:00 UTC) are made once per size into the cache
folder (`--cache`, default ~/.cache/analytics-export-bench/models-N): the DuckDB file, and a chDB
directory copied from it row for row. PostgreSQL gets a throwaway database, copied into each run and
dropped at the end. The window is [the store's end - 90 days, its end): every demo event, on the day
the store was made "90 days ago" to "today 00:00 UTC". Each export is one fresh process, timed from
spawn to exit, with its peak RSS and user+sys CPU seconds (`os.wait4`); the median of `--repeat` runs
is shown (peak RSS: the highest of any run), the models taking turns. "events read" is how many events
each model's rules read (docs/models.md: persons every event before the end, sessions those from 24 h
before the start to the gap after the end); events/s is those per second. The last column is the
time against the first export of the same store (the events export in the first of `--formats`).
`--models` picks the exports, `--formats` the events export's formats (rows `events/FORMAT`; derived
models are always Parquet): run at two `--events` sizes, the events export's peak on PostgreSQL and chDB,
read in pages (`sources/scanned.py`), shows whether it is flat in the export's size. This process
imports nothing heavy (Linux starts a child's ru_maxrss at its parent's peak). No targets: it always
exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from export_bench import BIN, Run, linked_dir, median, peak_mb, table

BENCH = Path(__file__).resolve().parent
STORES = ("duckdb", "postgres", "clickhouse")
MODELS = ("events", "persons", "sessions")
FORMATS = ("parquet", "json_lines", "csv", "json", "avro")
EXTENSIONS = {"json_lines": "jsonl"}
DAYS, GAP_MINUTES, LOOKBACK_HOURS = 90, 30, 24
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

GENERATE = """
import sys; sys.path.insert(0, sys.argv[1])
from datetime import datetime
from pathlib import Path
from stores import generate_demo
print(generate_demo(Path(sys.argv[2]), int(sys.argv[3]), end=datetime.fromisoformat(sys.argv[4])))
"""
COPY = """
import sys; sys.path.insert(0, sys.argv[1])
from pathlib import Path
from stores import copy_demo
print(copy_demo(Path(sys.argv[2]), sys.argv[3]))
"""
ADMIN = """
import psycopg, sys
with psycopg.connect(sys.argv[1], autocommit=True) as admin:
    admin.execute(sys.argv[2])
"""
COUNT = """
import duckdb, json, sys
spec = json.loads(sys.argv[1])
with duckdb.connect(spec["store"], read_only=True) as con:
    print(json.dumps({name: con.execute('SELECT count(*) FROM events WHERE project_id = $1 AND "timestamp" >= '
                                        'CAST($2 AS TIMESTAMPTZ) AND "timestamp" < CAST($3 AS TIMESTAMPTZ)',
                                        ["default", *bounds]).fetchone()[0] for name, bounds in spec["reads"].items()}))
"""


def child(script: str, *args: str) -> str:
    """`script` in a fresh Python; its last line of output. Heavy imports stay out of this process."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: {done.stderr[-3000:]}")
    return (done.stdout.strip().splitlines() or [""])[-1]


def export(data: Path, env: dict[str, str], model: str, fmt: str, window: tuple[str, str],
           out: Path) -> tuple[Run, int]:
    """One `analytics-export export --model M -f F` as a whole process: its Run and the rows it wrote."""
    command = [str(BIN), "export", "--model", model, "-f", fmt, "--start", window[0], "--end", window[1],
               "-o", str(out)]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(command, env={**os.environ, "ANALYTICS_EXPORT_DATA_DIR": str(data), **env},
                                stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
        run = Run(time.perf_counter() - started, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)
        stdout.seek(0)
        stderr.seek(0)
        printed, errors = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    if out.exists():
        run.bytes = out.stat().st_size
        out.unlink()
    if os.waitstatus_to_exitcode(status):
        run.error = (errors.strip().splitlines() or [f"exit {os.waitstatus_to_exitcode(status)}"])[-1][:300]
        return run, 0
    return run, json.loads(printed.strip().splitlines()[-1])["total_events"]


def demo_store(cache: Path, events: int) -> datetime:
    """`cache/events.duckdb` holding `events` demo events (made unless there); the end of their 90 days."""
    stamp = cache / "end"
    if stamp.exists() and (cache / "events.duckdb").exists():
        return datetime.fromisoformat(stamp.read_text())
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    end = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    print(f"generating {events:,} demo events into {cache} ...", flush=True)
    took = float(child(GENERATE, str(BENCH), str(cache), str(events), end.isoformat()))
    print(f"generated in {took:.0f} s", flush=True)
    stamp.write_text(end.isoformat())
    return end


def load(cache: Path, name: str, url: str) -> None:
    """Copy the demo events into store `name` at `url`: chDB once per cache (a `chdb.done` mark), PostgreSQL
    each run (its database is new)."""
    mark = cache / "chdb.done"
    if name == "clickhouse" and mark.exists():
        return
    if name == "clickhouse":
        shutil.rmtree(cache / "chdb", ignore_errors=True)
    print(f"copying the demo events into {name} ...", flush=True)
    took = float(child(COPY, str(BENCH), str(cache), url))
    print(f"copied in {took:.0f} s", flush=True)
    if name == "clickhouse":
        mark.touch()


def reads(store: Path, window: tuple[datetime, datetime]) -> dict[str, int]:
    """How many events each model's rules read in `window` (docs/models.md), counted in the DuckDB file:
    every store holds the same events."""
    start, end = window
    bounds = {"events": (start, end), "persons": (datetime(1970, 1, 1, tzinfo=timezone.utc), end),
              "sessions": (start - timedelta(hours=LOOKBACK_HOURS), end + timedelta(minutes=GAP_MINUTES))}
    spec = {"store": str(store), "reads": {k: [t.isoformat() for t in v] for k, v in bounds.items()}}
    return json.loads(child(COUNT, json.dumps(spec)))


def warm(store: Path) -> None:
    """The DuckDB file in the page cache and our modules compiled before anything is timed."""
    with open(store, "rb") as f:
        while f.read(1 << 20):
            pass
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(BENCH.parent / "src")], check=True)


def bench(args: argparse.Namespace, cache: Path, urls: dict[str, str], work: Path,
          window: tuple[str, str], read: dict[str, int]) -> list[list[str]]:
    """Every (store, export) run `--repeat` times, exports taking turns; the table's rows."""
    rows = []
    kinds = [("events", f) for f in args.formats if "events" in args.models]
    kinds += [(m, "parquet") for m in args.models if m != "events"]
    for name in args.stores:
        if name == "duckdb":
            data, env = linked_dir(work / "duckdb", cache / "events.duckdb"), {}
        else:
            data, env = work / name, {"ANALYTICS_EXPORT_EVENTS_URL": urls[name]}
            data.mkdir(exist_ok=True)
        runs: dict[tuple[str, str], list[tuple[Run, int]]] = {k: [] for k in kinds}
        for i in range(args.repeat):
            for model, fmt in kinds:
                out = args.out_dir / f"{name}-{model}-{i}.{EXTENSIONS.get(fmt, fmt)}"
                runs[model, fmt].append(export(data, env, model, fmt, window, out))
        results = {k: median([r for r, _ in got]) for k, got in runs.items()}
        base = results[kinds[0]]
        for model, fmt in kinds:
            r = results[model, fmt]
            out = next((n for run, n in runs[model, fmt] if run.error is None), 0)
            if model == "events" and r.error is None and out != read["events"]:
                r.error = f"wrote {out:,} events, not {read['events']:,}"
            shown = ([f"ERROR {r.error}"] + [""] * 4 if r.error else
                     [f"{r.seconds:.2f}", f"{read[model] / r.seconds:,.0f}", f"{r.mb:.0f}", f"{r.cpu / r.seconds:.2f}",
                      "-" if base.error else f"{r.seconds / base.seconds:.2f}x"])
            label = model if fmt == "parquet" else f"{model}/{fmt}"
            rows.append([name, label, f"{read[model]:,}", f"{out:,}", *shown])
            print(f"  {' | '.join(rows[-1])}", flush=True)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=5_000_000, help="demo events (default 5,000,000)")
    p.add_argument("--stores", default=",".join(STORES), help=f"comma-separated, of {', '.join(STORES)} (default all)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)} (default all)")
    p.add_argument("--formats", default="parquet", help=f"comma-separated formats of the events export, of "
                   f"{', '.join(FORMATS)} (default parquet)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each export; the median is shown (default 1)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "analytics-export-bench",
                   help="folder of demo stores, one per size, reused (default ~/.cache/analytics-export-bench)")
    p.add_argument("--out-dir", type=Path, help="where the exported files go, each removed once measured "
                   "(default: a temporary folder on local disk)")
    args = p.parse_args(argv)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if unknown := set(args.stores) - set(STORES):
        p.error(f"unknown stores: {', '.join(sorted(unknown))}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if unknown := set(args.models) - set(MODELS) or set(args.formats) - set(FORMATS):
        p.error(f"unknown models or formats: {', '.join(sorted(unknown))}")
    if not args.models or not args.formats:
        p.error("no export to run")
    args.repeat = max(1, args.repeat)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = (args.cache / f"models-{args.events}").absolute()
    end = demo_store(cache, args.events)
    window = (end - timedelta(days=DAYS), end)
    read = reads(cache / "events.duckdb", window)
    work = Path(tempfile.mkdtemp(prefix="models-bench-"))
    args.out_dir = (args.out_dir or work / "out").absolute()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    database = f"ae_bench_{uuid.uuid4().hex[:8]}"
    urls = {"postgres": f"postgresql://postgres@127.0.0.1:5432/{database}", "clickhouse": f"chdb://{cache / 'chdb'}"}
    made = False
    try:
        if "postgres" in args.stores:
            child(ADMIN, PG_ADMIN, f'CREATE DATABASE "{database}"')
            made = True
        for name in args.stores:
            if name != "duckdb":
                load(cache, name, urls[name])
        warm(cache / "events.duckdb")
        print(f"{read['events']:,} events, [{window[0].isoformat()}, {window[1].isoformat()}); {os.cpu_count()} "
              f"cores, load average {os.getloadavg()[0]:.1f}; median of {args.repeat}; every export a whole process, "
              f"files in {args.out_dir}",
              flush=True)
        rows = bench(args, cache, urls, work, (window[0].isoformat(), window[1].isoformat()), read)
        header = ["store", "export", "events read", "rows out", "seconds", "events/s", "peak RSS MB", "cores",
                  "x first export"]
        print(f"\n## {read['events']:,} demo events, the CLI as a whole process, median of {args.repeat}\n")
        print(table(header, rows))
        print(f"\nthis bench's own peak RSS: {peak_mb():.0f} MB (a floor under every child's); load average "
              f"{os.getloadavg()[1]:.1f} over the last 5 minutes (above the cores: other work shared them)")
    finally:
        if made:
            child(ADMIN, PG_ADMIN, f'DROP DATABASE "{database}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
