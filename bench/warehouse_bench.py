"""Loading tables: 1M demo events into each table type, each load a whole process, against writing the
same events to a local Parquet file in the same run.

Run from the project root (after `scripts/bootstrap --dev`, which installs the emulators):

    uv run python bench/warehouse_bench.py                    # 1M demo events, every table type, 3 runs each
    uv run python bench/warehouse_bench.py --events 200000 --repeat 1 --kinds delta iceberg
    uv run python bench/warehouse_bench.py --data-dir DIR     # reuse DIR/events.duckdb if it has events

Each load is `analytics_export.export()` in a fresh process (`LOAD_SCRIPT`), the window of every event,
into a new table; timed from spawn to exit, with its peak RSS (`os.wait4`). Tables: PostgreSQL (the
machine's, a throwaway database), ClickHouse (chDB, in-process), Delta Lake and Iceberg (local folders),
Snowflake (fakesnow) and BigQuery (bqemulator), the emulators started as the tests start them. The
emulators run on this machine's 2 cores beside the load, on DuckDB: their absolute numbers only
indicate; the ratio to the local Parquet file in the same run is the measure. It always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' emulators

from export_bench import Run, linked_dir, measure, median, prepare, table  # noqa: E402

KINDS = ["postgres", "clickhouse", "delta", "iceberg", "snowflake", "bigquery"]
LOAD_SCRIPT = """
import json, sys
from analytics_export import Settings, export
spec = json.loads(sys.argv[1])
settings = Settings(data_dir=spec["data"], destination_allow=["127.0.0.1"])
result = export(start_date=spec["window"][0], end_date=spec["window"][1], destination=spec["destination"],
                format="parquet", settings=settings, output=spec.get("output"), secrets=spec["secrets"])
print(result.total_events)
"""


def destinations(kind: str, servers: dict) -> tuple[dict, dict]:
    """A new table of `kind` (its settings) and the secrets of its connection."""
    name = f"t{uuid.uuid4().hex[:10]}"
    if kind == "postgres":
        return {"type": "postgres", "url": servers["postgres"], "table": name}, {}
    if kind == "clickhouse":
        return {"type": "clickhouse", "url": f"chdb:{name}", "table": "events"}, {}
    if kind == "delta":
        return {"type": "delta", "uri": name}, {}
    if kind == "iceberg":
        return {"type": "iceberg", "table": f"bench.{name}", "warehouse": name}, {}
    if kind == "snowflake":
        server = servers["snowflake"]
        return ({"type": "snowflake", "account": server.account, "user": server.user, "url": server.url,
                 "table": f"{server.make_schema('BENCH', name.upper())}.EVENTS"}, {"password": server.password})
    server = servers["bigquery"]
    return {"type": "bigquery", "project": server.project, "table": f"{server.make_dataset(name)}.events"}, {}


def start_servers(kinds: list[str], stack) -> dict:
    """The servers the kinds need, stopped when `stack` closes."""
    import psycopg
    from servers import BigQueryServer, DiskGCSServer, SnowflakeServer

    servers: dict = {}
    if "postgres" in kinds:  # a throwaway database on the machine's PostgreSQL (scripts/postgres starts it)
        name = f"ae_bench_{uuid.uuid4().hex[:10]}"
        admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
        admin.execute(f'CREATE DATABASE "{name}"')
        servers["postgres"] = f"postgresql://postgres@127.0.0.1:5432/{name}"
        stack.callback(admin.close)
        stack.callback(lambda: admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)'))
    if "snowflake" in kinds:
        servers["snowflake"] = stack.enter_context(SnowflakeServer())
    if "bigquery" in kinds:
        servers["bigquery"] = stack.enter_context(BigQueryServer(stack.enter_context(DiskGCSServer())))
        os.environ["BIGQUERY_EMULATOR_HOST"] = servers["bigquery"].endpoint
    return servers


def main(argv: list[str] | None = None) -> int:
    from contextlib import ExitStack

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="demo events to generate (default 1,000,000)")
    p.add_argument("--data-dir", type=Path, help="data dir whose events.duckdb is reused if it has events")
    p.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS, help="table types (default all)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each; the median is shown (default 3)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="warehouse-bench-"))
    data = (args.data_dir or work / "data").absolute()
    info = prepare(data, args.events)
    events, window = info["events"], info["window"]
    with ExitStack() as stack:
        servers = start_servers(args.kinds, stack)
        linked = linked_dir(work / "loads", data / "events.duckdb")

        def load(destination: dict, secrets: dict, output: str | None = None) -> Run:
            spec = {"data": str(linked), "window": window, "destination": destination, "secrets": secrets,
                    "output": output}
            return measure([sys.executable, "-c", LOAD_SCRIPT, json.dumps(spec)], expect=events)

        results: dict[str, list[Run]] = {kind: [] for kind in ["parquet file", *args.kinds]}
        for _ in range(args.repeat):  # the kinds take turns, so a slow minute hits each
            out = work / "local.parquet"
            results["parquet file"].append(load({"type": "download"}, {}, str(out)))
            out.unlink(missing_ok=True)
            for kind in args.kinds:
                results[kind].append(load(*destinations(kind, servers)))
    base = median(results["parquet file"])
    rows = []
    for kind, runs in results.items():
        run = median(runs)
        if run.error:
            rows.append([kind, f"ERROR {run.error}", "", ""])
            continue
        ratio = base.seconds / run.seconds if not base.error else float("nan")
        rows.append([kind, f"{events / run.seconds:,.0f}", f"{ratio:.2f}x", f"{run.mb:.0f} MB"])
    print(f"{events:,} events, [{window[0]}, {window[1]}), each load a whole process, median of {args.repeat}\n")
    print(table(["table", "events/s", "against the local Parquet file", "peak RSS"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
