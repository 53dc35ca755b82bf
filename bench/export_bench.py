"""Export throughput and memory benchmark: our export against baselines measured in the same run.

Run from the project root:

    uv run python bench/export_bench.py                       # 2M events, all formats, 5M-event RSS check
    uv run python bench/export_bench.py --events 500000 --rss-events 0 --formats parquet csv
    uv run python bench/export_bench.py --data-dir DIR        # reuse DIR/events.duckdb if it has events
    uv run python bench/export_bench.py --keep DIR            # keep the generated data and every output in DIR

It generates N demo events (`analytics_export.demo.generate`) into a temporary data dir, then for
each format (json, json_lines, csv, parquet, avro; parquet also with snappy and zstd) exports the
whole range with `analytics_export.export` and, over the same query and columns:

- `duckdb`: DuckDB's own `COPY (query) TO file (FORMAT ...)` (no Avro writer in DuckDB);
- `plain`:  a plain streaming writer fed from DuckDB's `to_arrow_reader` (pyarrow ParquetWriter /
            CSVWriter; for JSON, DuckDB's `to_json` in the SELECT with the bytes written as they
            come; for Avro, polars `write_avro` of the whole table, which is not streaming);
- `rows`:   a row-by-row Python loop (`fetchmany`, then json.dumps / csv.writer / fastavro.writer /
            per-row column lists) over the first `--row-events` events only.

Every measurement runs in a fresh subprocess (`--one SPEC`), so its peak RSS (VmHWM, else ru_maxrss)
is its own; only the export is timed, not interpreter start-up or imports, and every output is fsynced
(ours fsyncs on commit). It prints every measurement, then a summary table with the ratios and the
issue's targets marked PASS/FAIL, then (unless `--rss-events 0`) the peak RSS of our export in every
format at `--rss-events` events. It always exits 0: it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

# variant name -> (ExportFormat value, Compression value or None)
VARIANTS: dict[str, tuple[str, str | None]] = {
    "json": ("json", None),
    "json_lines": ("json_lines", None),
    "csv": ("csv", None),
    "parquet": ("parquet", None),
    "parquet_snappy": ("parquet", "snappy"),
    "parquet_zstd": ("parquet", "zstd"),
    "avro": ("avro", None),
}
KINDS = ("ours", "duckdb", "plain", "rows")
LABELS = {
    "ours": "analytics_export.export",
    "duckdb": "DuckDB COPY TO",
    "plain": "to_arrow_reader -> pyarrow writer",
    "rows": "fetchmany -> per-row Python",
}
PLAIN_LABELS = {  # what "plain" means where it is not a pyarrow writer
    "json": "to_arrow_reader(SELECT to_json(..)) -> raw bytes",
    "json_lines": "to_arrow_reader(SELECT to_json(..)) -> raw bytes",
    "avro": "polars write_avro, whole table (not streaming)",
}
ROW_LABELS = {
    "json": "fetchmany -> json.loads+json.dumps per row",
    "json_lines": "fetchmany -> json.loads+json.dumps per row",
    "csv": "fetchmany -> csv.writer.writerow per row",
    "avro": "fetchmany -> fastavro.writer, dict per row",
}
# rough absolute targets from the issue, events/s (JSON array has none)
RATE_TARGETS = {"json_lines": 430_000, "csv": 260_000, "parquet": 600_000, "avro": 540_000}
RATIO_TARGET = 1.0  # ours >= the faster of DuckDB COPY and the plain writer
ROWS_TARGET = 10.0  # ours >= 10x the row-by-row loop
RSS_TARGET_MB = 300.0  # at --rss-events events

PROJECT = "default"
BATCH = 65_536
RFC3339 = "%Y-%m-%dT%H:%M:%S.%fZ"
DUCKDB_SETTINGS = (  # the same as analytics_export's DuckDBEventStore
    "SET TimeZone = 'UTC'",
    "SET memory_limit = '256MB'",
    "SET threads = 2",
    "SET preserve_insertion_order = false",
    "SET enable_progress_bar = false",
)
EXTENSIONS = {"json": "json", "json_lines": "jsonl", "csv": "csv", "parquet": "parquet", "avro": "avro"}


# ---------------------------------------------------------------- child side: one measurement


@dataclass(frozen=True)
class Spec:
    """One measurement, passed to the child process as JSON."""

    kind: str
    variant: str
    data_dir: str
    out: str
    start: str
    end: str
    limit: int | None = None
    keep: bool = False

    @property
    def fmt(self) -> str:
        return VARIANTS[self.variant][0]

    @property
    def codec(self) -> str | None:
        return VARIANTS[self.variant][1]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    Linux's VmHWM, which starts afresh at exec; ru_maxrss (the fallback) is carried over from the
    parent across fork and exec, so it would report at least the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def fsync_path(path: str) -> None:
    """Flush a finished file to disk, as our local destination does on commit."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def connect(data_dir: str) -> Any:
    """A read-only DuckDB connection to the event store, configured like ours."""
    import duckdb

    con = duckdb.connect(str(Path(data_dir) / "events.duckdb"), read_only=True)
    for statement in DUCKDB_SETTINGS:
        con.execute(statement)
    return con


def select_sql(spec: Spec, columns: str) -> str:
    """The export query (whole window, all properties) with the given column list."""
    sql = (
        f"SELECT {columns} FROM events WHERE project_id = '{PROJECT}' "
        f"AND \"timestamp\" >= TIMESTAMPTZ '{spec.start}' AND \"timestamp\" < TIMESTAMPTZ '{spec.end}'"
    )
    return sql + (f" LIMIT {spec.limit}" if spec.limit else "")


TS_TEXT = f"strftime(\"timestamp\", '{RFC3339}') AS \"timestamp\""
COLUMNS = {  # per format: the same columns as our export produces
    "json": f"event, distinct_id, {TS_TEXT}, properties",  # properties stay JSON: nested
    "json_lines": f"event, distinct_id, {TS_TEXT}, properties",
    "csv": f"event, distinct_id, {TS_TEXT}, CAST(properties AS VARCHAR) AS properties",
    "parquet": 'event, distinct_id, "timestamp", CAST(properties AS VARCHAR) AS properties',
    "avro": 'event, distinct_id, "timestamp", CAST(properties AS VARCHAR) AS properties',
}
TO_JSON = (
    f"to_json(struct_pack(event := event, distinct_id := distinct_id, "
    f"\"timestamp\" := strftime(\"timestamp\", '{RFC3339}'), properties := properties))"
)


def setup_ours(spec: Spec) -> Callable[[], int]:
    """Our public export() into a directory; returns the number of events."""
    from analytics_export import Settings, export
    from analytics_export.formats import writer_class
    from analytics_export.models import ExportFormat

    writer_class(ExportFormat(spec.fmt))  # import the format's modules outside the timing
    settings = Settings(data_dir=Path(spec.data_dir))
    out_dir = Path(spec.out).parent / f"{Path(spec.out).stem}.d"

    def run() -> int:
        result = export(settings=settings, start_date=spec.start, end_date=spec.end, format=spec.fmt,
                        compression=spec.codec, output_dir=out_dir)
        Path(result.destination_path).replace(spec.out)
        out_dir.rmdir()
        return result.total_events

    return run


def setup_duckdb(spec: Spec) -> Callable[[], int]:
    """DuckDB's COPY TO for the same query, format and codec."""
    options = {
        "json": "FORMAT json, ARRAY true",
        "json_lines": "FORMAT json",
        "csv": "FORMAT csv, HEADER true, NEW_LINE '\\r\\n'",
        "parquet": f"FORMAT parquet, COMPRESSION {spec.codec or 'uncompressed'}",
    }[spec.fmt]

    def run() -> int:
        con = connect(spec.data_dir)
        (rows,) = con.execute(f"COPY ({select_sql(spec, COLUMNS[spec.fmt])}) TO '{spec.out}' ({options})").fetchone()
        con.close()
        fsync_path(spec.out)
        return int(rows)

    return run


def string_bytes(array: Any) -> memoryview:
    """The concatenated values of a null-free (large_)string array, without copying."""
    if len(array) == 0:
        return memoryview(b"")
    _, offsets, data = array.buffers()
    pos = memoryview(offsets).cast("q" if str(array.type).startswith("large") else "i")
    return memoryview(data)[pos[array.offset]:pos[array.offset + len(array)]]


def plain_json(spec: Spec) -> int:
    """DuckDB encodes each row with to_json in the SELECT; the bytes go to the file as they come."""
    array = spec.fmt == "json"
    suffix = "',' || chr(10)" if array else "chr(10)"
    con = connect(spec.data_dir)
    reader = con.sql(select_sql(spec, f"{TO_JSON} || {suffix} AS line")).to_arrow_reader(BATCH)
    rows = 0
    with open(spec.out, "wb", buffering=1 << 20) as f:
        f.write(b"[\n" if array else b"")
        for batch in reader:
            f.write(string_bytes(batch.column(0)))
            rows += batch.num_rows
        if array:
            if rows:
                f.seek(-2, os.SEEK_CUR)
                f.truncate()
            f.write(b"\n]\n")
        f.flush()
        os.fsync(f.fileno())
    con.close()
    return rows


def plain_stream(spec: Spec, open_writer: Callable[[Any], Any]) -> int:
    """DuckDB's batches straight into a pyarrow writer that writes `spec.out` itself."""
    con = connect(spec.data_dir)
    reader = con.sql(select_sql(spec, COLUMNS[spec.fmt])).to_arrow_reader(BATCH)
    rows = 0
    with open_writer(reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    con.close()
    fsync_path(spec.out)
    return rows


def plain_csv(spec: Spec) -> int:
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=True, eol="\r\n", quoting_style="needed")
    return plain_stream(spec, lambda schema: pacsv.CSVWriter(spec.out, schema, write_options=options))


def plain_parquet(spec: Spec) -> int:
    import pyarrow.parquet as pq

    return plain_stream(spec, lambda schema: pq.ParquetWriter(spec.out, schema, compression=spec.codec or "none"))


def plain_avro(spec: Spec) -> int:
    """polars cannot append to an Avro file, so this encodes the whole table at once."""
    import polars as pl
    import pyarrow as pa

    con = connect(spec.data_dir)
    table = con.sql(select_sql(spec, COLUMNS["avro"])).to_arrow_table()
    con.close()
    table = table.set_column(2, "timestamp", table.column(2).cast(pa.timestamp("us")))  # polars: no tz
    pl.from_arrow(table).write_avro(spec.out, compression="uncompressed")
    fsync_path(spec.out)
    return table.num_rows


PRELOAD = {  # per kind and format: modules to import before the timing starts
    ("plain", "csv"): ["pyarrow.csv"],
    ("plain", "parquet"): ["pyarrow.parquet"],
    ("plain", "avro"): ["polars", "pyarrow"],
    ("rows", "parquet"): ["pyarrow.parquet"],
    ("rows", "avro"): ["fastavro"],
}


def preload(spec: Spec) -> None:
    """Import what this measurement needs, so that the timing excludes it (and RSS start includes it)."""
    import importlib

    for name in ["duckdb", *PRELOAD.get((spec.kind, spec.fmt), [])]:
        importlib.import_module(name)


def setup_plain(spec: Spec) -> Callable[[], int]:
    runner = {"json": plain_json, "json_lines": plain_json, "csv": plain_csv,
              "parquet": plain_parquet, "avro": plain_avro}[spec.fmt]
    return lambda: runner(spec)


def fetch_rows(spec: Spec, columns: str) -> Iterator[tuple]:
    """Rows of the query as Python tuples, fetched in chunks."""
    con = connect(spec.data_dir)
    con.execute(select_sql(spec, columns))
    while chunk := con.fetchmany(10_000):
        yield from chunk
    con.close()


def rows_json(spec: Spec) -> int:
    array = spec.fmt == "json"
    n = 0
    with open(spec.out, "w", encoding="utf-8", buffering=1 << 20) as f:
        f.write("[\n" if array else "")
        for event, distinct_id, ts, props in fetch_rows(spec, COLUMNS["csv"]):
            line = json.dumps({"event": event, "distinct_id": distinct_id, "timestamp": ts,
                               "properties": json.loads(props)}, ensure_ascii=False, separators=(",", ":"))
            f.write((",\n" if array and n else "") + line + ("" if array else "\n"))
            n += 1
        f.write("\n]\n" if array and n else ("]\n" if array else ""))
        f.flush()
        os.fsync(f.fileno())
    return n


def rows_csv(spec: Spec) -> int:
    import csv

    n = 0
    with open(spec.out, "w", encoding="utf-8", newline="", buffering=1 << 20) as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(["event", "distinct_id", "timestamp", "properties"])
        for row in fetch_rows(spec, COLUMNS["csv"]):
            writer.writerow(row)
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


EPOCH_COLUMNS = 'event, distinct_id, epoch_us("timestamp") AS ts, CAST(properties AS VARCHAR) AS properties'


def rows_avro(spec: Spec) -> int:
    import fastavro

    ts = {"type": "long", "logicalType": "timestamp-micros"}
    schema = fastavro.parse_schema({"type": "record", "name": "Event", "fields": [
        {"name": "event", "type": ["null", "string"]}, {"name": "distinct_id", "type": ["null", "string"]},
        {"name": "timestamp", "type": ["null", ts]}, {"name": "properties", "type": ["null", "string"]}]})
    counter = [0]

    def records() -> Iterator[dict]:
        for event, distinct_id, micros, props in fetch_rows(spec, EPOCH_COLUMNS):
            counter[0] += 1
            yield {"event": event, "distinct_id": distinct_id, "timestamp": micros, "properties": props}

    with open(spec.out, "wb", buffering=1 << 20) as f:
        fastavro.writer(f, schema, records(), codec="null")
        f.flush()
        os.fsync(f.fileno())
    return counter[0]


def rows_parquet(spec: Spec) -> int:
    """Per-row appends to column lists, one row group per BATCH rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("event", pa.string()), ("distinct_id", pa.string()),
                        ("timestamp", pa.timestamp("us", tz="UTC")), ("properties", pa.string())])
    columns: list[list] = [[], [], [], []]
    n = 0
    with pq.ParquetWriter(spec.out, schema, compression=spec.codec or "none") as writer:
        for row in fetch_rows(spec, EPOCH_COLUMNS):
            for column, value in zip(columns, row):
                column.append(value)
            n += 1
            if n % BATCH == 0:
                writer.write_table(pa.table(columns, schema=schema))
                columns = [[], [], [], []]
        if columns[0]:
            writer.write_table(pa.table(columns, schema=schema))
    fsync_path(spec.out)
    return n


def setup_rows(spec: Spec) -> Callable[[], int]:
    runner = {"json": rows_json, "json_lines": rows_json, "csv": rows_csv,
              "parquet": rows_parquet, "avro": rows_avro}[spec.fmt]
    return lambda: runner(spec)


SETUPS: dict[str, Callable[[Spec], Callable[[], int]]] = {
    "ours": setup_ours, "duckdb": setup_duckdb, "plain": setup_plain, "rows": setup_rows,
}


def run_one(spec: Spec) -> dict[str, Any]:
    """Run one measurement in this process; only `run()` is timed."""
    preload(spec)
    run = SETUPS[spec.kind](spec)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    events = run()
    seconds = time.perf_counter() - started
    size = Path(spec.out).stat().st_size
    if not spec.keep:
        Path(spec.out).unlink()
    return {"kind": spec.kind, "variant": spec.variant, "events": events, "seconds": seconds,
            "bytes": size, "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb()}


# ---------------------------------------------------------------- parent side: orchestration


@dataclass
class Result:
    kind: str
    variant: str
    events: int = 0
    seconds: float = 0.0
    bytes: int = 0
    rss_before_mb: float = 0.0
    peak_rss_mb: float = 0.0
    error: str | None = None

    @property
    def rate(self) -> float | None:
        return self.events / self.seconds if self.error is None and self.seconds > 0 else None


def measure_best(spec: Spec, repeat: int) -> Result:
    """The fastest of `repeat` runs of `spec`, with the highest peak RSS seen in any of them."""
    runs = [measure(spec) for _ in range(max(1, repeat))]
    ok = [r for r in runs if r.error is None]
    if not ok:
        return runs[-1]
    best = min(ok, key=lambda r: r.seconds)
    best.peak_rss_mb = max(r.peak_rss_mb for r in ok)
    return best


def measure(spec: Spec) -> Result:
    """Run `spec` in a fresh interpreter and read its JSON line."""
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec.__dict__)],
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        message = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return Result(spec.kind, spec.variant, error=message[:200])
    return Result(**json.loads(lines[-1]))


def generate(data_dir: Path, events: int) -> None:
    """N demo events into `data_dir`, through the project's own store and generator."""
    from analytics_export import Settings, open_store
    from analytics_export.demo import generate as demo_generate

    store = open_store(Settings(data_dir=data_dir), read_only=False)
    try:
        demo_generate(store, events, PROJECT)
    finally:
        store.close()


def event_stats(data_dir: Path) -> tuple[int, datetime, datetime]:
    """How many events the store holds for the project, and a whole-day window covering them all."""
    path = data_dir / "events.duckdb"
    if not path.exists():
        return 0, datetime.now(timezone.utc), datetime.now(timezone.utc)
    con = connect(str(data_dir))
    try:
        n, low, high = con.execute(
            f"SELECT count(*), min(\"timestamp\"), max(\"timestamp\") FROM events WHERE project_id = '{PROJECT}'"
        ).fetchone()
    except Exception:  # no events table
        return 0, datetime.now(timezone.utc), datetime.now(timezone.utc)
    finally:
        con.close()
    if not n:
        return 0, datetime.now(timezone.utc), datetime.now(timezone.utc)
    start = datetime(low.year, low.month, low.day, tzinfo=timezone.utc)
    end = datetime(high.year, high.month, high.day, tzinfo=timezone.utc) + timedelta(days=1)
    return int(n), start, end


def prepare_here(data_dir: Path, events: int) -> dict[str, Any]:
    """Reuse `data_dir`'s events if it has any, else generate `events` there; returns count and window."""
    n, start, end = event_stats(data_dir)
    generated = None
    if not n:
        began = time.perf_counter()
        generate(data_dir, events)
        generated = time.perf_counter() - began
        n, start, end = event_stats(data_dir)
    return {"events": n, "start": start.isoformat(), "end": end.isoformat(), "generated_s": generated}


def prepare_data(data_dir: Path, events: int) -> tuple[int, datetime, datetime]:
    """prepare_here in a child process, so this parent stays small (children inherit its ru_maxrss)."""
    proc = subprocess.run([sys.executable, __file__, "--prepare", json.dumps([str(data_dir), events])],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"cannot prepare the event store in {data_dir}:\n{proc.stderr}")
    info = json.loads(proc.stdout.splitlines()[-1])
    if info["generated_s"] is None:
        log(f"reusing {info['events']:,} events in {data_dir}")
    else:
        log(f"generated {info['events']:,} events in {info['generated_s']:.1f}s ({data_dir})")
    return info["events"], datetime.fromisoformat(info["start"]), datetime.fromisoformat(info["end"])


def default_out_dir(work: Path, keep: bool) -> Path:
    """A fresh folder on tmpfs when there is one, so timings measure encoding rather than the disk."""
    shm = Path("/dev/shm")
    if keep or not shm.is_dir() or shutil.disk_usage(shm).free < 8 << 30:
        return work / "out"
    return Path(tempfile.mkdtemp(prefix="export-bench-out-", dir=shm))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def kinds_for(variant: str) -> list[str]:
    return [k for k in KINDS if not (k == "duckdb" and VARIANTS[variant][0] == "avro")]


def run_all(args: argparse.Namespace, data_dir: Path, out_dir: Path,
            window: tuple[datetime, datetime]) -> list[Result]:
    results = []
    for variant in args.formats:
        for kind in kinds_for(variant):
            ext = EXTENSIONS[VARIANTS[variant][0]]
            spec = Spec(kind=kind, variant=variant, data_dir=str(data_dir), out=str(out_dir / f"{variant}.{kind}.{ext}"),
                        start=window[0].isoformat(), end=window[1].isoformat(),
                        limit=args.row_events if kind == "rows" else None, keep=args.keep is not None)
            result = measure_best(spec, 1 if kind == "rows" else args.repeat)
            log(f"  {variant:<15} {kind:<7} " + (f"{fmt_rate(result.rate)} ev/s, {result.peak_rss_mb:.0f} MB"
                                                  if result.error is None else f"ERROR {result.error}"))
            results.append(result)
    return results


# ---------------------------------------------------------------- report


def fmt_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate / 1000:,.0f}k"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def measurements_table(results: list[Result]) -> str:
    rows = []
    for r in results:
        label = {"plain": PLAIN_LABELS.get(VARIANTS[r.variant][0], LABELS["plain"]),
                 "rows": ROW_LABELS.get(VARIANTS[r.variant][0], "fetchmany -> per-row lists -> ParquetWriter")
                 }.get(r.kind, LABELS[r.kind])
        if r.error is not None:
            rows.append([r.variant, r.kind, label, "-", "-", "-", "-", "-", "-", f"ERROR {r.error}"])
            continue
        rows.append([r.variant, r.kind, label, f"{r.events:,}", f"{r.seconds:.2f}", fmt_rate(r.rate),
                     f"{r.bytes / r.seconds / 1e6:.0f}", f"{r.bytes / 1e6:,.1f}", f"{r.rss_before_mb:.0f}",
                     f"{r.peak_rss_mb:.0f}"])
    return table(["format", "kind", "what", "events", "s", "ev/s", "MB/s out", "file MB", "RSS start MB",
                  "peak RSS MB"], rows)


def summary_row(variant: str, by_kind: dict[str, Result]) -> list[str]:
    rate = lambda k: by_kind[k].rate if k in by_kind else None
    ours = rate("ours")
    baselines = [k for k in ("duckdb", "plain") if rate(k) is not None]
    best = max(baselines, key=lambda k: rate(k)) if baselines else None
    vs_best = f"{ours / rate(best):.2f}x {verdict(ours >= RATIO_TARGET * rate(best))}" if ours and best else "-"
    vs_rows = f"{ours / rate('rows'):.1f}x {verdict(ours >= ROWS_TARGET * rate('rows'))}" \
        if ours and rate("rows") else "-"
    target = RATE_TARGETS.get(VARIANTS[variant][0])
    absolute = f">={fmt_rate(target)} {verdict(ours >= target)}" if ours and target else "-"
    ours_rss = f"{by_kind['ours'].peak_rss_mb:.0f}" if ours else "-"
    base_rss = f"{by_kind[best].peak_rss_mb:.0f} ({best})" if best else "-"
    return [variant, fmt_rate(ours), fmt_rate(rate("duckdb")), fmt_rate(rate("plain")), fmt_rate(rate("rows")),
            vs_best, vs_rows, absolute, ours_rss, base_rss]


def summary_table(results: list[Result], variants: list[str]) -> str:
    rows = [summary_row(v, {r.kind: r for r in results if r.variant == v}) for v in variants]
    return table(["format", "ours ev/s", "duckdb COPY", "plain writer", "row-by-row",
                  f"ours/max(duckdb,plain) >={RATIO_TARGET:.1f}x", f"ours/rows >={ROWS_TARGET:.0f}x",
                  "issue rate target", "ours RSS MB", "best baseline RSS MB"], rows)


def rss_table(results: list[Result]) -> str:
    rows = [[r.variant, f"{r.events:,}", fmt_rate(r.rate), f"{r.rss_before_mb:.0f}", f"{r.peak_rss_mb:.0f}",
             f"<={RSS_TARGET_MB:.0f} {verdict(r.peak_rss_mb <= RSS_TARGET_MB)}"] if r.error is None
            else [r.variant, "-", "-", "-", "-", f"ERROR {r.error}"] for r in results]
    return table(["format", "events", "ours ev/s", "RSS start MB", "peak RSS MB", "target"], rows)


# ---------------------------------------------------------------- main


def rss_check(args: argparse.Namespace, work: Path, out: Path, main_data: Path, main_events: int) -> list[Result]:
    """Our export in every format at --rss-events events, for the 300 MB target."""
    data_dir = main_data if main_events == args.rss_events else work / "rss-data"
    log(f"RSS check at {args.rss_events:,} events")
    n, start, end = prepare_data(data_dir, args.rss_events)
    results = []
    for variant in ("json", "json_lines", "csv", "parquet", "avro"):
        spec = Spec(kind="ours", variant=variant, data_dir=str(data_dir), out=str(out / f"rss.{variant}"),
                    start=start.isoformat(), end=end.isoformat(), keep=args.keep is not None)
        results.append(measure_best(spec, 1))
        log(f"  {variant:<15} ours    {fmt_rate(results[-1].rate)} ev/s, {results[-1].peak_rss_mb:.0f} MB")
    if data_dir != main_data and args.keep is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000, help="demo events to generate (default 2,000,000)")
    p.add_argument("--formats", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="FORMAT",
                   help=f"variants to measure (default all: {' '.join(VARIANTS)})")
    p.add_argument("--data-dir", type=Path, help="data dir whose events.duckdb is reused if it has events "
                   "(else generated there and kept)")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="work in DIR and keep the generated data and every output file there")
    p.add_argument("--row-events", type=int, default=300_000,
                   help="events the row-by-row baselines export (the first ones; default 300,000)")
    p.add_argument("--repeat", type=int, default=2,
                   help="runs of each ours/duckdb/plain measurement; the fastest counts, with the highest "
                   "peak RSS of any run (default 2; row-by-row runs once)")
    p.add_argument("--rss-events", type=int, default=5_000_000,
                   help="run one extra export of this many events in every format to check the "
                   "300 MB peak-RSS target (default 5,000,000; 0 skips it)")
    p.add_argument("--out-dir", type=Path, metavar="DIR",
                   help="where outputs are written (default: a fresh folder in /dev/shm when it exists, else "
                        "under the work dir): a shared VM's disk speed varies 2x between runs, and this "
                        "benchmark compares encoders, not disks")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one measurement (JSON Spec) and exit
    p.add_argument("--prepare", help=argparse.SUPPRESS)  # internal: [data_dir, events] -> JSON stats
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(Spec(**json.loads(args.one)))), flush=True)
        return 0
    if args.prepare:
        data_dir, events = json.loads(args.prepare)
        print(json.dumps(prepare_here(Path(data_dir), events)), flush=True)
        return 0
    work = args.keep.absolute() if args.keep else Path(tempfile.mkdtemp(prefix="export-bench-"))
    out = args.out_dir or default_out_dir(work, keep=args.keep is not None)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = (args.data_dir or work / "data").absolute()
    began = time.perf_counter()
    try:
        events, start, end = prepare_data(data_dir, args.events)
        log(f"measuring {', '.join(args.formats)} over {events:,} events [{start:%Y-%m-%d}, {end:%Y-%m-%d})")
        log(f"writing outputs to {out}")
        results = run_all(args, data_dir, out, (start, end))
        rss = rss_check(args, work, out, data_dir, events) if args.rss_events > 0 else []
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
            if args.out_dir is None:
                shutil.rmtree(out, ignore_errors=True)
    print(f"\nEvery measurement ({events:,} events; row-by-row: first {args.row_events:,}; each in a fresh process; "
          f"best of {args.repeat} except row-by-row)")
    print(measurements_table(results))
    print(f"\nSummary ({events:,} events). Targets: ours >= {RATIO_TARGET:.1f}x the faster of DuckDB COPY and the "
          f"plain writer, >= {ROWS_TARGET:.0f}x row-by-row, rough absolute rates from the issue.")
    print(summary_table(results, args.formats))
    if rss:
        print(f"\nPeak RSS at {args.rss_events:,} events (target <= {RSS_TARGET_MB:.0f} MB)")
        print(rss_table(rss))
    print(f"\ntotal wall time {time.perf_counter() - began:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
