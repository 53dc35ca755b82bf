"""Export speed and memory as a user meets them: the `analytics-export export` command as a whole process,
against baselines run as whole processes in the same run, on the same store file, query and columns.

Run from the project root:

    uv run python bench/export_bench.py                          # 5M demo events, every format, 3 runs each
    uv run python bench/export_bench.py --events 50000000        # 50M (generated once into --data-dir)
    uv run python bench/export_bench.py --events 300000 --repeat 1 --formats parquet_snappy json_lines
    uv run python bench/export_bench.py --data-dir DIR           # reuse DIR/events.duckdb if it has events
    uv run python bench/export_bench.py --rss-events 50000000    # also every format's peak at a second size
    uv run python bench/export_bench.py --via worker             # also each export through the service
    uv run python bench/export_bench.py --keep DIR               # work in DIR; keep its data and last outputs

Demo events come from `analytics-export demo --events N`. Each measurement is one fresh process, timed
from spawn to exit, with its own peak RSS and user+sys CPU seconds (`os.wait4`; "cores" is CPU / wall);
the median of `--repeat` runs is shown (peak RSS: the highest of any run), the kinds taking turns so a
slow minute of a shared machine hits each, every run writing a fresh file on local disk (`--out-dir`
moves them). This process imports nothing heavy: Linux starts a child's ru_maxrss at its parent's peak,
and the floor that sets is printed. Every kind exports the project's events in a window of whole days
holding them all. Kinds:

- `ours`:       `analytics-export export -f F [-c C] --start .. --end .. -o FILE`, with
                ANALYTICS_EXPORT_DATA_DIR a folder holding only `events.duckdb` (a link to the store):
                no jobs.sqlite, a first-time user's. The file is fsynced before its rename, as always.
                ANALYTICS_EXPORT_* variables pass through (`ANALYTICS_EXPORT_EXPORT__ENGINE_WRITES=false`
                measures the batch path) and are printed.
- `duckdb`:     `python -c` running DuckDB's own `COPY (our query) TO FILE (FORMAT ..)`: our WHERE and
                columns (`sources/duckdb.py`: timestamps as RFC 3339 text in text formats, `properties` as
                its JSON text, nested by DuckDB's JSON writer), tuned as the issue says
                (`preserve_insertion_order=false`, otherwise DuckDB's defaults: every core, 80% of RAM).
                No fsync.
- `duckdb@cap`: the same with our store's settings (its threads and its memory cap for a plain scan).
- `plain`:      `python -c` with a plain streaming writer over DuckDB's Arrow stream (tuned as `duckdb`):
                pyarrow's ParquetWriter and CSVWriter; DuckDB's `to_json` text for JSON. No fsync.
- Avro, which DuckDB does not write: `polars` (`write_avro` of the whole table, timestamps naive UTC:
                polars writes no zoned timestamp to Avro) and `fastavro` (`writer` over the Arrow batches'
                rows); the faster is the plain baseline.

Then, each with its target and PASS/FAIL: ours against DuckDB's tuned COPY (>= 1.0x; Avro against the
faster plain Avro writer), peak RSS (<= 300 MB), the disk's own cost (a file the size of ours written
and fsynced, against written and removed unsynced, as each baseline's file is), ours against a single-threaded
run of ours (`ANALYTICS_EXPORT_DUCKDB_THREADS=1`, >= 1.6x), an export of 0 events (<= 0.4 s, <= 120 MB)
in a first-time data dir and in one holding a job store with a policy (a served user's), `--help`
(<= 0.3 s), every format with a typical privacy policy (one run each, <= 300 MB), with `--rss-events`
every format's peak at a second size, and with `--via worker` each export through `analytics-export serve` (POST
/api/exports to `completed`, >= 1.0x DuckDB's COPY). It always exits 0: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

BIN = Path(sys.executable).with_name("analytics-export")
VARIANTS: dict[str, tuple[str, str | None]] = {
    "json": ("json", None), "json_lines": ("json_lines", None), "csv": ("csv", None),
    "parquet": ("parquet", None), "parquet_snappy": ("parquet", "snappy"), "parquet_zstd": ("parquet", "zstd"),
    "avro": ("avro", None),
}
EXTENSIONS = {"json": "json", "json_lines": "jsonl", "csv": "csv", "parquet": "parquet", "avro": "avro"}
RATIO_TARGET, RSS_TARGET, THREADS_TARGET = 1.0, 300.0, 1.6
ZERO_SECONDS, ZERO_MB, HELP_SECONDS = 0.4, 120.0, 0.3
THREAD_VARIANTS = ("parquet_snappy", "json_lines")
POLICY = {"pseudonymize_distinct_id": True, "deny_properties": ["price"],
          "redact": [{"properties": ["search_query"], "action": "mask", "mask": "***"}]}
"""A typical policy: every rule of it runs in the store's SQL."""

PROJECT = "default"
EMPTY = ("2000-01-01T00:00:00+00:00", "2000-01-02T00:00:00+00:00")
"""A window with no event."""
RFC3339 = "%Y-%m-%dT%H:%M:%S.%fZ"
TUNED = {"preserve_insertion_order": False}
Window = tuple[str, str]

STATS_SCRIPT = """
import duckdb, json, sys
from datetime import timedelta
from analytics_export.config import Settings
from analytics_export.sources.duckdb import READ_MEMORY_MB
with duckdb.connect(sys.argv[1], read_only=True) as con:
    con.execute("SET TimeZone = 'UTC'")
    n, low, high = con.execute('SELECT count(*), min("timestamp"), max("timestamp") FROM events '
                               "WHERE project_id = $1", [sys.argv[2]]).fetchall()[0]
day = lambda t: t.replace(hour=0, minute=0, second=0, microsecond=0)
print(json.dumps({"events": n, "window": [day(low).isoformat(), (day(high) + timedelta(days=1)).isoformat()] if n
                  else None, "threads": Settings.model_fields["duckdb_threads"].default, "memory": f"{READ_MEMORY_MB}MB"}))
"""
COPY_SCRIPT = """
import duckdb, json, sys
spec = json.loads(sys.argv[1])
con = duckdb.connect(spec["store"], read_only=True, config=spec["config"])
con.execute("SET TimeZone = 'UTC'")
print(con.execute(f"COPY ({spec['query']}) TO '{spec['out']}' ({spec['options']})").fetchall()[0][0])
"""
PLAIN_SCRIPT = """
import duckdb, json, sys
spec = json.loads(sys.argv[1])
writer, out, codec = spec["writer"], spec["out"], spec["codec"]
con = duckdb.connect(spec["store"], read_only=True, config=spec["config"])
con.execute("SET TimeZone = 'UTC'")
rows = 0
if writer == "polars":
    frame = con.sql(spec["query"]).pl()
    frame.write_avro(out, compression="uncompressed")
    rows = frame.height
elif writer == "fastavro":
    import fastavro
    stamp = {"type": "long", "logicalType": "timestamp-micros"}
    schema = fastavro.parse_schema({"type": "record", "name": "Event", "fields": [
        {"name": n, "type": ["null", stamp if n == "timestamp" else "string"]}
        for n in ("event", "distinct_id", "timestamp", "properties")]})
    def records():
        global rows
        for batch in con.sql(spec["query"]).to_arrow_reader(65536):
            rows += batch.num_rows
            yield from batch.to_pylist()
    with open(out, "wb") as f:
        fastavro.writer(f, schema, records(), codec="null")
elif writer == "json":
    array = spec["fmt"] == "json"
    with open(out, "wb") as f:
        f.write(b"[\\n" if array else b"")
        for batch in con.sql(spec["query"]).to_arrow_reader(65536):
            lines = batch.column(0)
            offsets = memoryview(lines.buffers()[1]).cast("q" if "large" in str(lines.type) else "i")
            f.write(memoryview(lines.buffers()[2])[offsets[lines.offset]:offsets[lines.offset + len(lines)]])
            rows += batch.num_rows
        if array:  # the last line's ",\\n" (or the opening's newline) makes way for the tail
            f.seek(f.tell() - (2 if rows else 1))
            f.write(b"\\n]\\n" if rows else b"]\\n")
else:
    import pyarrow.csv as csv, pyarrow.parquet as pq
    reader = con.sql(spec["query"]).to_arrow_reader(65536)
    sink = (pq.ParquetWriter(out, reader.schema, compression=codec or "none") if writer == "parquet"
            else csv.CSVWriter(out, reader.schema))
    for batch in reader:
        sink.write_batch(batch)
        rows += batch.num_rows
    sink.close()
print(rows)
"""
LABELS = {
    "ours": "analytics-export export (fsync, rename)",
    "duckdb": "DuckDB COPY, tuned, DuckDB's defaults",
    "duckdb@cap": "DuckDB COPY, our threads and memory cap",
    "plain": "Arrow stream -> pyarrow writer / to_json",
    "polars": "polars write_avro, whole table",
    "fastavro": "fastavro.writer over Arrow rows",
    "worker": "serve: POST /api/exports -> completed",
}


@dataclass
class Run:
    seconds: float = 0.0
    mb: float = 0.0
    cpu: float = 0.0
    bytes: int = 0
    error: str | None = None

    @property
    def cores(self) -> float:
        return self.cpu / self.seconds if self.seconds else 0.0


def measure(command: list[str], env: dict[str, str] | None = None, out: Path | None = None,
            expect: int | None = None, keep: bool = False) -> Run:
    """One whole process: wall seconds from spawn to exit, its peak RSS and CPU seconds. Its last line
    of output says how many events it wrote, checked against `expect`. `out` is measured, then removed
    unless `keep`."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
        run = Run(time.perf_counter() - started, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        printed, errors = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    if out is not None and out.exists():
        run.bytes = out.stat().st_size
        if not keep:
            out.unlink()
    if proc.returncode:
        run.error = (errors.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
    elif expect is not None:
        last = (printed.strip().splitlines() or ["-1"])[-1]
        wrote = int(json.loads(last)["total_events"] if last.startswith("{") else last)
        if wrote != expect:
            run.error = f"wrote {wrote:,} events, not {expect:,}"
    return run


def median(runs: list[Run]) -> Run:
    """The median run by wall time, with the highest peak RSS of any run; the last error if all failed."""
    ok = [r for r in runs if r.error is None]
    if not ok:
        return runs[-1]
    pick = sorted(ok, key=lambda r: r.seconds)[len(ok) // 2]
    return Run(pick.seconds, max(r.mb for r in ok), pick.cpu, pick.bytes)


def where(window: Window) -> str:
    """Our export's WHERE: the project and the window (`sources/duckdb.py` binds the same values)."""
    return (f"project_id = '{PROJECT}' AND \"timestamp\" >= TIMESTAMPTZ '{window[0]}' "
            f"AND \"timestamp\" < TIMESTAMPTZ '{window[1]}'")


def columns(fmt: str, kind: str) -> str:
    """Our export's columns (`sources/duckdb.py` SqlBuilder) as each baseline selects them."""
    ts = f"strftime(\"timestamp\", '{RFC3339}')" if fmt in ("json", "json_lines", "csv") else '"timestamp"'
    if kind == "polars":
        ts = 'CAST("timestamp" AS TIMESTAMP)'  # naive UTC, the session's time zone
    elif kind == "fastavro":
        ts = 'epoch_us("timestamp")'  # timestamp-micros
    props = "properties" if fmt in ("json", "json_lines") else "CAST(properties AS VARCHAR)"
    return f'event, distinct_id, {ts} AS "timestamp", {props} AS properties'


def baseline(kind: str, store: Path, variant: str, out: Path, window: Window, caps: dict, expect: int,
             keep: bool = False) -> Run:
    fmt, codec = VARIANTS[variant]
    query = f"SELECT {columns(fmt, kind)} FROM events WHERE {where(window)}"
    spec = {"store": str(store), "out": str(out), "fmt": fmt, "codec": codec, "config": TUNED, "query": query}
    if kind in ("duckdb", "duckdb@cap"):
        options = {"json": "FORMAT json, ARRAY true", "json_lines": "FORMAT json", "csv": "FORMAT csv, HEADER true",
                   "parquet": f"FORMAT parquet, COMPRESSION {codec or 'uncompressed'}"}[fmt]
        spec.update(options=options, config={**TUNED, **caps} if kind == "duckdb@cap" else TUNED)
        return measure([sys.executable, "-c", COPY_SCRIPT, json.dumps(spec)], out=out, expect=expect, keep=keep)
    if kind == "plain" and fmt in ("json", "json_lines"):
        line = ("to_json({'event': event, 'distinct_id': distinct_id, 'timestamp': \"timestamp\", "
                "'properties': properties}) || " + ("',' || chr(10)" if fmt == "json" else "chr(10)"))
        spec["query"] = f"SELECT {line} AS line FROM ({query})"
    spec["writer"] = {"plain": "json" if fmt in ("json", "json_lines") else fmt}.get(kind, kind)
    return measure([sys.executable, "-c", PLAIN_SCRIPT, json.dumps(spec)], out=out, expect=expect, keep=keep)


def ours(data: Path, variant: str, out: Path, window: Window, expect: int, env: dict[str, str] | None = None,
         keep: bool = False, first_time: bool = True) -> Run:
    """`analytics-export export` on `data`; a `first_time` data dir must hold no job store, before or after."""
    fmt, codec = VARIANTS[variant]
    command = [str(BIN), "export", "-f", fmt, "--start", window[0], "--end", window[1], "-o", str(out)]
    run = measure(command + (["-c", codec] if codec else []), {"ANALYTICS_EXPORT_DATA_DIR": str(data), **(env or {})},
                  out, expect, keep)
    if first_time and (data / "jobs.sqlite").exists():  # the export made one: the next run would not be a first
        (data / "jobs.sqlite").unlink()
        run.error = run.error or "the export created jobs.sqlite in its data dir"
    return run


def kinds(variant: str) -> list[str]:
    return ["ours", "polars", "fastavro"] if variant == "avro" else ["ours", "duckdb", "duckdb@cap", "plain"]


def stats(store: Path) -> dict:
    """The project's events in `store` and a window of whole days holding them, and our store's DuckDB
    settings, read in a child: this process must stay small."""
    if not store.exists():
        return {"events": 0}
    done = subprocess.run([sys.executable, "-c", STATS_SCRIPT, str(store), PROJECT], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"cannot read {store}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def prepare(data: Path, events: int) -> dict:
    """`data`'s store: its own events if it has some, else `events` made by `analytics-export demo`."""
    found = stats(data / "events.duckdb")
    if found["events"] or not events:
        return found
    data.mkdir(parents=True, exist_ok=True)
    print(f"generating {events:,} demo events into {data} ...", flush=True)
    began = time.perf_counter()
    subprocess.run([str(BIN), "demo", "--events", str(events)], env={**os.environ, "ANALYTICS_EXPORT_DATA_DIR":
                                                                     str(data)}, check=True, capture_output=True)
    print(f"generated in {time.perf_counter() - began:.0f} s", flush=True)
    return stats(data / "events.duckdb")


def linked_dir(folder: Path, store: Path) -> Path:
    """A fresh data dir holding only `events.duckdb`, a link to `store` (which stays untouched)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "events.duckdb").symlink_to(store.resolve())
    return folder


def warm(store: Path) -> None:
    """The store in the page cache and every module compiled, ours too, before anything is timed: where
    .pyc files are never written (PYTHONDONTWRITEBYTECODE), each command would compile from source."""
    with open(store, "rb") as f:
        while f.read(1 << 20):
            pass
    measure([sys.executable, "-m", "compileall", "-q", str(Path(__file__).parents[1] / "src")])
    measure([sys.executable, "-c", "import duckdb, pyarrow.parquet, pyarrow.csv, polars, fastavro"])


def disk_cost(size: int, scratch: Path) -> tuple[float, float]:
    """Seconds to write a file of `size` bytes without fsync (then removed, as each baseline's file is:
    its pages never reach the disk), and to write and fsync one (as ours is before its rename)."""
    probe, chunk, took = scratch / "disk-probe", os.urandom(1 << 20), []
    for durable in (False, True):
        started = time.perf_counter()
        with open(probe, "wb") as f:
            for offset in range(0, size, len(chunk)):
                f.write(chunk[:size - offset])
            f.flush()
            if durable:
                os.fsync(f.fileno())
        took.append(time.perf_counter() - started)
        probe.unlink()
    return took[0], took[1]


def filesystem(path: Path) -> str:
    """The type of the file system holding `path` (/proc/mounts), e.g. ext4 or tmpfs."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        point, fs = line.split()[1:3]
        if str(path.resolve()).startswith(point) and len(point) > len(best):
            best, kind = point, fs
    return kind


def peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, store: Path, info: dict) -> None:
        self.args, self.work, self.store = args, work, store
        self.events, self.window = info["events"], tuple(info["window"])
        self.caps = {"threads": info["threads"], "memory_limit": info["memory"]}
        self.out_dir = (args.out_dir or work / "out").absolute()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.clean = linked_dir(work / "first-time", store)
        self.results: dict[tuple[str, str], Run] = {}
        self.count = 0

    def out(self, name: str, variant: str) -> Path:
        """A fresh output path: replacing a big file would add an unlink to the timing."""
        self.count += 1
        return self.out_dir / f"{name}.{self.count}.{EXTENSIONS[VARIANTS[variant][0]]}"

    def ours(self, variant: str, name: str, env: dict[str, str] | None = None) -> Run:
        return median([ours(self.clean, variant, self.out(name, variant), self.window, self.events, env)
                       for _ in range(self.args.repeat)])

    def run(self, kind: str, variant: str, last: bool) -> Run:
        """One run of `kind`; with --keep, the last run's file stays, named after its kind and variant."""
        keep = last and self.args.keep is not None
        name = f"{kind.replace('@', '-')}-{variant}"
        out = self.out_dir / f"{name}.{EXTENSIONS[VARIANTS[variant][0]]}" if keep else self.out(name, variant)
        out.unlink(missing_ok=True)
        if kind == "ours":
            return ours(self.clean, variant, out, self.window, self.events, keep=keep)
        return baseline(kind, self.store, variant, out, self.window, self.caps, self.events, keep)

    def show(self, variant: str, kind: str, r: Run) -> None:
        shown = f"{r.seconds:7.2f} s {self.events / r.seconds:>11,.0f} ev/s" if r.error is None else f"ERROR {r.error}"
        if r.error is None and kind != "worker":
            shown += f" {r.mb:6.0f} MB {r.cores:4.2f} cores {r.bytes / 1e6:8,.1f} MB out"
        print(f"  {variant:15} {kind:11} {LABELS[kind]:41} {shown}", flush=True)

    def main_runs(self) -> None:
        for variant in self.args.formats:
            runs: dict[str, list[Run]] = {k: [] for k in kinds(variant)}
            for i in range(self.args.repeat):
                for kind in kinds(variant):  # taking turns
                    runs[kind].append(self.run(kind, variant, i == self.args.repeat - 1))
            for kind, got in runs.items():
                self.results[kind, variant] = median(got)
                self.show(variant, kind, self.results[kind, variant])

    def rate(self, r: Run | None) -> str:
        return "-" if r is None else "ERROR" if r.error else f"{self.events / r.seconds:,.0f}"

    def base(self, variant: str) -> tuple[str, Run | None]:
        """The baseline ours is held to: DuckDB's tuned COPY, or the faster plain Avro writer."""
        if variant != "avro":
            return "duckdb", self.results.get(("duckdb", variant))
        found = [(k, self.results[k, variant]) for k in ("polars", "fastavro") if not self.results[k, variant].error]
        return min(found, key=lambda kr: kr[1].seconds) if found else ("polars", self.results["polars", variant])

    @staticmethod
    def ratio(mine: Run | None, base: Run | None) -> str:
        if mine is None or base is None or mine.error or base.error:
            return "-"
        ratio = base.seconds / mine.seconds
        return f"{ratio:.2f}x {verdict(ratio >= RATIO_TARGET)}"

    def summary(self, worker: dict[str, Run]) -> str:
        rows = []
        for variant in self.args.formats:
            o = self.results["ours", variant]
            name, base = self.base(variant)
            plain = base if variant == "avro" else self.results["plain", variant]
            row = [variant, self.rate(o), self.rate(self.results.get(("duckdb", variant))),
                   self.rate(self.results.get(("duckdb@cap", variant))),
                   self.rate(plain) + (f" ({name})" if variant == "avro" else ""), self.ratio(o, base),
                   "-" if o.error else f"{o.mb:.0f} {verdict(o.mb <= RSS_TARGET)}",
                   "-" if o.error else f"{o.cores:.2f}"]
            if self.args.via == "worker":
                row += [self.rate(worker.get(variant)), self.ratio(worker.get(variant), base)]
            rows.append(row)
        header = ["format", "ours ev/s", "DuckDB COPY ev/s (tuned)", "DuckDB COPY ev/s (our settings)", "plain ev/s",
                  f"ours/DuckDB (>= {RATIO_TARGET}x)", f"our peak MB (<= {RSS_TARGET:.0f})", "cores used"]
        if self.args.via == "worker":
            header += ["worker ev/s", f"worker/DuckDB (>= {RATIO_TARGET}x)"]
        return (f"\n## {self.events:,} events, the CLI as a whole process, median of {self.args.repeat} "
                f"(Avro: against the faster plain Avro writer)\n\n" + table(header, rows))

    def extras(self) -> list[list[str]]:
        rows = []
        mine = {v: self.results["ours", v] for v in self.args.formats if not self.results["ours", v].error}
        if mine:
            variant = max(mine, key=lambda v: mine[v].mb)
            rows.append([f"our peak RSS, {len(mine)} formats", f"{mine[variant].mb:.0f} MB ({variant})",
                         f"<= {RSS_TARGET:.0f} MB", verdict(mine[variant].mb <= RSS_TARGET)])
            probe = next((v for v in ("parquet", "parquet_snappy", "parquet_zstd") if v in mine), next(iter(mine)))
            for variant in dict.fromkeys([probe, max(mine, key=lambda v: mine[v].bytes)]):
                ran = mine[variant]
                plain, durable = disk_cost(ran.bytes, self.out_dir)
                rows.append([f"the disk: a file the size of our {variant} ({ran.bytes / 1e6:,.0f} MB) written and "
                             "fsynced, against written and removed unsynced (a baseline's)",
                             f"{durable:.2f} s against {plain:.2f} s",
                             f"{100 * (durable - plain) / ran.seconds:.0f}% of our export ({ran.seconds:.2f} s)",
                             "kept: durability"])
        for variant in THREAD_VARIANTS:
            two = self.results.get(("ours", variant)) or self.ours(variant, "ours")
            one = self.ours(variant, "one-thread", {"ANALYTICS_EXPORT_DUCKDB_THREADS": "1"})
            label = f"{variant}: ours against ours on 1 DuckDB thread"
            if one.error or two.error:
                rows.append([label, f"ERROR {one.error or two.error}", "", "FAIL"])
                continue
            rows.append([label, f"{one.seconds / two.seconds:.2f}x", f"1 thread {one.seconds:.2f} s ({one.cores:.2f} "
                         f"cores) -> {two.seconds:.2f} s ({two.cores:.2f} cores); >= {THREADS_TARGET}x",
                         verdict(one.seconds / two.seconds >= THREADS_TARGET)])
        guarded = self.guarded()
        zeros = [(f"an export of 0 events ({variant})", self.clean, True, variant) for variant in self.args.formats]
        for label, data, first_time, variant in zeros + [
                ("an export of 0 events (parquet), in a data dir with a job store and the policy below", guarded, False,
                 "parquet")]:
            zero = median([ours(data, variant, self.out("zero", variant), EMPTY, 0, first_time=first_time)
                           for _ in range(max(self.args.repeat, 3))])
            rows.append([label, f"ERROR {zero.error}" if zero.error else f"{zero.seconds:.2f} s, {zero.mb:.0f} MB",
                         f"<= {ZERO_SECONDS} s, <= {ZERO_MB:.0f} MB",
                         verdict(not zero.error and zero.seconds <= ZERO_SECONDS and zero.mb <= ZERO_MB)])
        shown = median([measure([str(BIN), "--help"]) for _ in range(max(self.args.repeat, 3))])
        rows.append(["analytics-export --help", f"{shown.seconds:.2f} s, {shown.mb:.0f} MB", f"<= {HELP_SECONDS} s",
                     verdict(not shown.error and shown.seconds <= HELP_SECONDS)])
        return rows + [self.privacy(guarded, variant) for variant in self.args.formats]

    def guarded(self) -> Path:
        """A data dir of its own whose job store holds POLICY (the project's secret made by a first export)."""
        guarded = linked_dir(self.work / "policy", self.store)
        policy = self.work / "policy.json"
        policy.write_text(json.dumps(POLICY))
        env = {**os.environ, "ANALYTICS_EXPORT_DATA_DIR": str(guarded)}
        subprocess.run([str(BIN), "privacy", "set", str(policy)], env=env, check=True, capture_output=True)
        subprocess.run([str(BIN), "export", "-f", "parquet", "--start", EMPTY[0], "--end", EMPTY[1], "-o",
                        str(self.out("zero", "parquet"))], env=env, check=True, capture_output=True)
        return guarded

    def privacy(self, guarded: Path, variant: str) -> list[str]:
        """Ours with POLICY on, in `guarded`: one run (its peak and time against the median without)."""
        private = ours(guarded, variant, self.out("policy", variant), self.window, self.events, first_time=False)
        label = f"{variant} with a privacy policy (pseudonymise distinct_id, deny price, mask search_query)"
        plain = self.results["ours", variant]
        if private.error or plain.error:
            return [label, f"ERROR {private.error or plain.error}", "", "FAIL"]
        return [label, f"{self.events / private.seconds:,.0f} ev/s, {private.seconds:.2f} s, {private.mb:.0f} MB",
                f"{private.seconds / plain.seconds:.2f}x the time without; <= {RSS_TARGET:.0f} MB",
                verdict(private.mb <= RSS_TARGET)]

    def second_size(self) -> list[list[str]]:
        """Every format's peak at the second size (--rss-events, --big-data-dir), one run each."""
        data = (self.args.big_data_dir or self.work / "big").absolute()
        info = prepare(data, self.args.rss_events)
        if not info["events"]:
            return [["second size", f"no events in {data}: give --rss-events", "", "FAIL"]]
        linked = linked_dir(self.work / "first-time-big", data / "events.duckdb")
        rows = []
        for variant in self.args.formats:
            run = ours(linked, variant, self.out("big", variant), tuple(info["window"]), info["events"])
            small = self.results["ours", variant]
            rows.append([f"{variant} at {info['events']:,} events",
                         f"ERROR {run.error}" if run.error else f"{info['events'] / run.seconds:,.0f} ev/s, {run.mb:.0f} MB",
                         f"{small.mb:.0f} MB at {self.events:,}; <= {RSS_TARGET:.0f} MB",
                         verdict(not run.error and run.mb <= RSS_TARGET)])
        return rows


# ---------------------------------------------------------------- through the service


def via_worker(bench: Bench) -> tuple[dict[str, Run], dict[str, float]]:
    """Each variant exported through `analytics-export serve --workers 1` on a data dir of its own linking the
    store, after one export of no event (the worker's imports): seconds from POST /api/exports to the status
    `completed` (polled every 20 ms); and the peak RSS over them all of the worker and of the largest process
    it ran an export in (`export.isolate`), sampled every 20 ms."""
    data = linked_dir(bench.work / "service", bench.store)
    env = {**os.environ, "ANALYTICS_EXPORT_DATA_DIR": str(data)}
    key = subprocess.run([str(BIN), "keys", "create", "--project", PROJECT], env=env, check=True,
                         capture_output=True, text=True).stdout.split()[-1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(data / "serve.log", "wb")
    serve = subprocess.Popen([str(BIN), "serve", "--port", str(port), "--workers", "1"], env=env,
                             stdout=subprocess.DEVNULL, stderr=log)
    call = api(port, key)
    results: dict[str, Run] = {}
    peaks: dict[int, tuple[float, str]] = {}
    sampled = threading.Event()

    def sample() -> None:
        while not sampled.wait(0.02):
            for pid in descendants(serve.pid):
                mb, line = peaks.get(pid, (0.0, ""))
                peaks[pid] = (max(mb, hwm_mb(pid)), line or command_line(pid))

    threading.Thread(target=sample, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                call("GET", "/healthz", None)
                break
            except OSError:
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not start: {(data / 'serve.log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        warm_up = through_api(call, {"start_date": EMPTY[0], "end_date": EMPTY[1], "format": "parquet"}, 0)
        if warm_up.error:
            raise RuntimeError(f"an export of no event failed: {warm_up.error}")
        for variant in bench.args.formats:
            fmt, codec = VARIANTS[variant]
            body = {"start_date": bench.window[0], "end_date": bench.window[1], "format": fmt, "compression": codec}
            runs = []
            for _ in range(bench.args.repeat):
                runs.append(through_api(call, body, bench.events))
                shutil.rmtree(data / "exports", ignore_errors=True)
            results[variant] = median(runs)
            bench.show(variant, "worker", results[variant])
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        print(f"  worker: ERROR {exc}", flush=True)
    finally:
        sampled.set()
        serve.terminate()
        try:
            serve.wait(timeout=15)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()
    kinds = {"the worker": " worker ", "the largest process an export ran in": "runtime.isolated"}
    return results, {kind: max((mb for mb, line in peaks.values() if part in line), default=0.0)
                     for kind, part in kinds.items()}


def api(port: int, key: str) -> Callable[[str, str, dict | None], dict]:
    """A JSON call to the service on `port` with `key`, one connection each (http.client: this process
    stays small)."""
    import http.client

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: dict | None) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, path, json.dumps(body) if body else None, headers)
            return json.loads(conn.getresponse().read() or b"{}")
        finally:
            conn.close()

    return call


def through_api(call: Callable[[str, str, dict | None], dict], body: dict, expect: int) -> Run:
    started = time.perf_counter()
    view = call("POST", "/api/exports", body)
    if "id" not in view:
        return Run(error=f"POST refused: {json.dumps(view)[:300]}")
    while view.get("status") not in ("completed", "failed", "expired"):
        time.sleep(0.02)
        view = call("GET", f"/api/exports/{view['id']}", None)
    run = Run(seconds=time.perf_counter() - started)
    if view["status"] != "completed":
        run.error = f"{view['status']}: {json.dumps(view.get('result') or view)[:300]}"
    elif view["result"]["total_events"] != expect:
        run.error = f"wrote {view['result']['total_events']:,} events, not {expect:,}"
    return run


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found += (kids := children.get(todo.pop(), []))
        todo += kids
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def hwm_mb(pid: int) -> float:
    """A live process's peak RSS so far (VmHWM), in MB; 0 if it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:")), 0.0)


def worker_rss(peaks: dict[str, float]) -> list[list[str]]:
    """The service's worker and its export processes, peak over every export."""
    if not any(peaks.values()):
        return [["the service's worker, peak over every export", "ERROR: not measured", "", "FAIL"]]
    return [[f"{kind} below serve, peak over every export", f"{mb:.0f} MB" if mb else "none (export.isolate off)",
             f"<= {RSS_TARGET:.0f} MB", verdict(mb <= RSS_TARGET)] for kind, mb in peaks.items()]


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=5_000_000,
                   help="demo events to generate when the data dir has none (default 5,000,000; 50,000,000 works)")
    p.add_argument("--data-dir", type=Path, help="data dir whose events.duckdb is reused if it has events (else "
                   "generated there); nothing else in it is read or written")
    p.add_argument("--formats", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="FORMAT",
                   help=f"variants (default all: {' '.join(VARIANTS)})")
    p.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is shown (default 3)")
    p.add_argument("--out-dir", type=Path, help="where outputs go (default: the work dir, on local disk)")
    p.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it: generated data, the policy's "
                   "data dir and the last output of each kind")
    p.add_argument("--rss-events", type=int, default=0, help="also export every format once at this second size "
                   "(e.g. 50000000; default off), made in --big-data-dir or the work dir, to show a flat peak RSS")
    p.add_argument("--big-data-dir", type=Path, help="the second size's data dir, reused if it has events")
    p.add_argument("--via", choices=["cli", "worker"], default="cli", help="worker: also run each export through "
                   "`analytics-export serve` (one worker), POST /api/exports to completed")
    args = p.parse_args(argv)
    args.repeat = max(1, args.repeat)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = (args.keep or Path(tempfile.mkdtemp(prefix="export-bench-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = (args.data_dir or work / "data").absolute()
        info = prepare(data, args.events)
        if not info["events"]:
            sys.exit(f"no events in {data / 'events.duckdb'}")
        bench = Bench(args, work, data / "events.duckdb", info)
        warm(bench.store)
        passed = "".join(f"; {k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("ANALYTICS_EXPORT_"))
        print(f"{bench.events:,} events in {bench.store}, [{bench.window[0]}, {bench.window[1]}); {os.cpu_count()} "
              f"cores; median of {args.repeat}; every kind a whole process; outputs in {bench.out_dir} "
              f"({filesystem(bench.out_dir)})\nours: ANALYTICS_EXPORT_DATA_DIR={bench.clean}, holding only "
              f"events.duckdb (a link): no jobs.sqlite, a first-time user's{passed}", flush=True)
        bench.main_runs()
        worker, peaks = via_worker(bench) if args.via == "worker" else ({}, {})
        print(bench.summary(worker))
        extra = bench.extras()
        if args.rss_events or args.big_data_dir:
            extra += bench.second_size()
        if args.via == "worker":
            extra += worker_rss(peaks)
        print("\n" + table(["measurement", "value", "against", "target"], extra))
        print(f"\nthis bench's own peak RSS: {peak_mb():.0f} MB (a floor under every child's, which Linux carries "
              f"over at exec)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
