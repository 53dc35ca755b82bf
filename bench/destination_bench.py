"""Peak memory of one export to each destination, against the download destination in the same run.

Run from the project root:

    uv run python bench/destination_bench.py                          # 2M events, every destination
    uv run python bench/destination_bench.py --events 200000          # quick
    uv run python bench/destination_bench.py --only s3 sftp --compression zstd
    uv run python bench/destination_bench.py --data-dir DIR           # reuse DIR/events.duckdb if it has events

The issue's target: "peak RSS for a 2M-event export to each destination is within 50 MB of the
download destination's". This script generates N demo events (`analytics_export.demo.generate`,
the 90 days before 2026-11-01, as the tests do) into a temporary data dir (on /dev/shm when there
is room, so the disk's speed does not count), starts the real servers the tests use on 127.0.0.1
(tests/servers.py: moto S3 with a bucket, Azurite with a container, the GCS emulator with a bucket,
the asyncssh SFTP server; plus a webhook receiver here, a ThreadingHTTPServer that reads and
discards each body in chunks and answers 204), then runs ONE export of every event per
destination: download (the baseline) first, then s3, azure, gcs, sftp, webhook (`--only` picks
among these; download always runs).

Every export runs in a fresh interpreter (`--child SPEC`), the way a worker runs it:
`destination_for(Placement.for_export(request, project, settings, secrets))` with Settings(data_dir=...,
destination_allow=["127.0.0.1"]), explicit secrets (S3 keys, Azure account key, SFTP private key
and known_hosts line, a webhook signing secret), an explicit endpoint for every cloud client, and
STORAGE_EMULATOR_HOST set for the GCS child only; then `run_export(...)` with the settings' batch
size. Only `run_export` is timed. Peak RSS is the child's VmHWM (/proc/self/status), which starts
afresh at exec. `getrusage(RUSAGE_SELF).ru_maxrss` is shown in the per-run lines only: Linux carries
the parent's peak into a child started with vfork+exec (what subprocess does), and this parent
generates the events (DuckDB) and hosts moto (which holds each uploaded object until it is
checked), so ru_maxrss shows the parent's peak, not the export's.
After each run the parent checks the object's size on the server against the export's byte count
and deletes it.

It prints one line per run, then a table (seconds, events/s, MB written, RSS after setup, i.e.
after the destination's imports and connection, peak RSS, peak minus setup, peak minus the
download's with PASS/FAIL against 50 MB, and whether the object on the server has the export's
size) and an overall line. Exit code 1 if any destination FAILs (a failed export, a wrong object
size or a `--timeout` counts as FAIL). Peak RSS varies by about 10 MB between runs on a busy
machine; `--repeat` keeps the highest.
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DESTINATIONS = ("download", "s3", "azure", "gcs", "sftp", "webhook")
FORMATS = ("json", "json_lines", "csv", "parquet", "avro")
COMPRESSIONS = ("gzip", "zstd", "snappy", "lz4")
TARGET_DELTA_MB = 50.0
PROJECT = "default"
DEMO_END = datetime(2026, 11, 1, tzinfo=timezone.utc)  # as tests/conftest.py; events span the 90 days before
WINDOW = ("2026-08-01T00:00:00+00:00", "2026-11-01T00:00:00+00:00")
BUCKET = "bench"
SIGNING_SECRET = "bench-signing-secret"
READ_CHUNK = 1 << 20


# ---------------------------------------------------------------- child side: one export


def status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MB; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One export to `spec["destination"]`, in this process; returns its measurements."""
    from analytics_export import Settings, open_store
    from analytics_export.destinations import Placement, destination_for
    from analytics_export.destinations.guard import check_destination
    from analytics_export.formats import writer_class
    from analytics_export.models import ExportRequest
    from analytics_export.pipeline import run_export

    settings = Settings(data_dir=Path(spec["data_dir"]), destination_allow=["127.0.0.1"])
    request = ExportRequest(start_date=spec["start"], end_date=spec["end"], format=spec["format"],
                            compression=spec["compression"], destination=spec["destination"])
    writer_class(request.format)  # import the writer before the baseline RSS reading, as a worker has it
    check_destination(request.destination, settings.destination_allow)  # what the worker checks
    destination = destination_for(Placement.for_export(request, PROJECT, settings, spec["secrets"]))
    try:
        store = open_store(settings)
        try:
            rss_start = status_mb("VmRSS") or ru_maxrss_mb()
            started = time.perf_counter()
            result = run_export(request, store, destination, project=PROJECT, batch_size=settings.export.batch_size)
            seconds = time.perf_counter() - started
        finally:
            store.close()
    finally:
        destination.close()
    return {"events": result.total_events, "bytes": result.file_size, "seconds": seconds,
            "path": result.destination_path, "rss_start_mb": rss_start,
            "peak_rss_mb": status_mb("VmHWM") or ru_maxrss_mb(), "ru_maxrss_mb": ru_maxrss_mb()}


# ---------------------------------------------------------------- parent side: data, servers, runs


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def count_events(data_dir: Path) -> int:
    """Events of the project in the benchmark's window, 0 when there is no store yet."""
    import duckdb

    path = data_dir / "events.duckdb"
    if not path.exists():
        return 0
    con = duckdb.connect(str(path), read_only=True)
    try:
        return int(con.execute('SELECT count(*) FROM events WHERE project_id = ? AND "timestamp" >= ? '
                               'AND "timestamp" < ?', [PROJECT, *WINDOW]).fetchone()[0])
    except duckdb.Error:
        return 0
    finally:
        con.close()


def prepare(data_dir: Path, events: int) -> int:
    """Reuse the events in `data_dir`, or generate `events` there; returns how many there are."""
    found = count_events(data_dir)
    if found:
        log(f"reusing {found:,} events in {data_dir}")
        return found
    from analytics_export import Settings, open_store
    from analytics_export.demo import generate

    began = time.perf_counter()
    store = open_store(Settings(data_dir=data_dir), read_only=False)
    try:
        generate(store, events, PROJECT, end=DEMO_END)
    finally:
        store.close()
    found = count_events(data_dir)
    log(f"generated {found:,} events in {time.perf_counter() - began:.1f}s ({data_dir})")
    return found


def work_dir(events: int) -> Path:
    """A fresh folder on tmpfs when it has room for the store and one output (about 2 KB an event
    together, with margin), else under the system temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > events * 2_000 + (2 << 30):
        return Path(tempfile.mkdtemp(prefix="destination-bench-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="destination-bench-"))


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver: reads each POST body in chunks, discards it, answers 204; counts bytes."""

    daemon_threads = True

    def __init__(self) -> None:
        self.bytes = 0
        self.requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = 0
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while (length := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                        size += self._discard(length)
                        self.rfile.readline()  # CRLF after the chunk
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                else:
                    size = self._discard(int(self.headers.get("Content-Length") or 0))
                with server.lock:
                    server.bytes += size
                    server.requests += 1
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _discard(self, length: int) -> int:
                done = 0
                while done < length and (chunk := self.rfile.read(min(READ_CHUNK, length - done))):
                    done += len(chunk)
                return done

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def take(self) -> tuple[int, int]:
        """(bytes, requests) received since the last call."""
        with self.lock:
            counts = (self.bytes, self.requests)
            self.bytes = self.requests = 0
        return counts


class Servers:
    """The servers the chosen destinations need; per destination, the request's destination, the
    secrets, extra environment for the child, and how to check and delete what a run wrote."""

    def __init__(self, stack: ExitStack, names: list[str], work: Path) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        import servers  # the tests' real-server helpers

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request

        self.s3 = self.azurite = self.gcs = self.sftp = self.receiver = None
        if "s3" in names:
            self.s3 = stack.enter_context(servers.S3Server())
            self.s3.make_bucket(BUCKET)
        if "azure" in names:
            self.azurite = stack.enter_context(servers.AzuriteServer())
            self.azurite.make_container(BUCKET)
        if "gcs" in names:
            self.gcs = stack.enter_context(servers.GCSServer())
            self.gcs.make_bucket(BUCKET)
        if "sftp" in names:
            root = work / "sftp-root"
            root.mkdir()
            self.sftp = stack.enter_context(servers.SFTPServer(root))
        if "webhook" in names:
            self.receiver = stack.enter_context(Receiver())

    def spec(self, name: str) -> tuple[dict, dict, dict]:
        """(destination, secrets, extra child environment) for `name`."""
        if name == "download":
            return {"type": "download"}, {}, {}
        if name == "s3":
            return ({"type": "s3", "bucket": BUCKET, "endpoint_url": self.s3.endpoint, "region": self.s3.region},
                    {"access_key_id": self.s3.access_key, "secret_access_key": self.s3.secret_key}, {})
        if name == "azure":
            return ({"type": "azure", "container": BUCKET, "account_url": self.azurite.account_url},
                    {"account_name": self.azurite.account_name, "account_key": self.azurite.account_key}, {})
        if name == "gcs":  # the emulator takes no credentials; the env var makes the client anonymous
            return ({"type": "gcs", "bucket": BUCKET, "endpoint_url": self.gcs.endpoint}, {},
                    {"STORAGE_EMULATOR_HOST": self.gcs.endpoint})
        if name == "sftp":
            return ({"type": "sftp", "host": self.sftp.host, "port": self.sftp.port,
                     "username": self.sftp.username, "path": "/drop"},
                    {"private_key": self.sftp.client_key_pem, "known_hosts": self.sftp.known_hosts_line}, {})
        if name == "webhook":
            self.receiver.take()
            return {"type": "webhook", "url": self.receiver.url}, {"signing_secret": SIGNING_SECRET}, {}
        raise ValueError(name)

    def stored(self, name: str, path: str | None, expected: int) -> str:
        """Check that what the run wrote is on the server with `expected` bytes, then delete it."""
        try:
            size = self._size_and_delete(name, path)
        except Exception as exc:
            return f"check failed: {type(exc).__name__}: {str(exc)[:100]}"
        return "ok" if size == expected else f"size {size:,} != {expected:,}"

    def _size_and_delete(self, name: str, path: str | None) -> int:
        if name == "webhook":
            size, requests = self.receiver.take()
            return size if requests else -1
        where = urlsplit(path or "")
        key = where.path.lstrip("/")
        if name == "download":
            local = Path(path)
            size = local.stat().st_size
            local.unlink()
            return size
        if name == "s3":
            client = self.s3.client()
            size = client.head_object(Bucket=where.netloc, Key=key)["ContentLength"]
            client.delete_object(Bucket=where.netloc, Key=key)
            if client.list_multipart_uploads(Bucket=where.netloc).get("Uploads"):
                raise RuntimeError("multipart uploads left pending")
            return size
        if name == "azure":
            with self.azurite.client() as service:
                blob = service.get_blob_client(where.netloc, key)
                size = blob.get_blob_properties().size
                blob.delete_blob()
            return size
        if name == "gcs":
            blob = self.gcs.client().bucket(where.netloc).get_blob(key)
            size = blob.size
            blob.delete()
            return size
        if name == "sftp":
            local = self.sftp.root / where.path.lstrip("/")
            size = local.stat().st_size
            local.unlink()
            return size
        raise ValueError(name)


@dataclass
class Result:
    destination: str
    events: int = 0
    bytes: int = 0
    seconds: float = 0.0
    rss_start_mb: float = 0.0
    peak_rss_mb: float = 0.0
    ru_maxrss_mb: float = 0.0
    path: str | None = None
    check: str = "-"
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def peak_of(pid: int) -> float:
    """VmHWM of a running process, in MB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_one(name: str, servers: Servers, args: argparse.Namespace, data_dir: Path) -> Result:
    """One export to `name` in a fresh interpreter; the object it wrote is checked and deleted."""
    destination, secrets, extra_env = servers.spec(name)
    spec = {"data_dir": str(data_dir), "start": WINDOW[0], "end": WINDOW[1], "format": args.format,
            "compression": args.compression, "destination": destination, "secrets": secrets}
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
           "AWS_EC2_METADATA_DISABLED": "true", **extra_env}
    if name != "gcs":
        env.pop("STORAGE_EMULATOR_HOST", None)
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        peak = peak_of(proc.pid)
        proc.kill()
        proc.communicate()
        return Result(name, peak_rss_mb=peak, error=f"TIMEOUT after {args.timeout:g}s (peak so far {peak:.0f} MB)")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        message = (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return Result(name, error=message[:300])
    result = Result(name, **json.loads(lines[-1]))
    result.check = servers.stored(name, result.path, result.bytes)
    return result


def run_best(name: str, servers: Servers, args: argparse.Namespace, data_dir: Path) -> Result:
    """`--repeat` runs: the fastest counts, with the highest peak RSS of any run."""
    runs = [run_one(name, servers, args, data_dir) for _ in range(args.repeat)]
    ok = [r for r in runs if r.error is None]
    if not ok:
        return runs[-1]
    best = min(ok, key=lambda r: r.seconds)
    best.peak_rss_mb = max(r.peak_rss_mb for r in ok)
    best.check = next((r.check for r in ok if r.check != "ok"), best.check)
    return best


# ---------------------------------------------------------------- report


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def verdict(result: Result, baseline: Result | None) -> tuple[str, str]:
    """(delta vs download, PASS/FAIL) for one destination."""
    if result.error is not None or baseline is None or baseline.error is not None:
        return "-", "FAIL"
    delta = result.peak_rss_mb - baseline.peak_rss_mb
    ok = delta <= TARGET_DELTA_MB and result.check == "ok"
    return f"{delta:+.0f}", "PASS" if ok else "FAIL"


def report(results: list[Result]) -> tuple[str, bool]:
    baseline = next((r for r in results if r.destination == "download"), None)
    rows, passed = [], True
    for r in results:
        delta, mark = verdict(r, baseline)
        passed &= mark == "PASS"
        if r.error is not None:
            rows.append([r.destination, "-", "-", "-", "-", f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "-",
                         "-", "-", mark, f"ERROR {r.error}"])
            continue
        rows.append([r.destination, f"{r.seconds:.1f}", f"{r.rate / 1000:,.0f}k", f"{r.bytes / 1e6:,.1f}",
                     f"{r.rss_start_mb:.0f}", f"{r.peak_rss_mb:.0f}", f"{r.peak_rss_mb - r.rss_start_mb:.0f}", delta,
                     mark, r.check])
    return table(["destination", "seconds", "events/s", "MB written", "RSS start MB", "peak RSS MB",
                  "peak-start MB", f"delta vs download MB (<= {TARGET_DELTA_MB:.0f})", "verdict", "object on server"],
                 rows), passed


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000, help="demo events to generate (default 2,000,000)")
    p.add_argument("--only", nargs="+", choices=DESTINATIONS[1:], metavar="DEST",
                   help=f"destinations to measure besides download (default all: {' '.join(DESTINATIONS[1:])})")
    p.add_argument("--format", choices=FORMATS, default="json_lines", help="export format (default json_lines)")
    p.add_argument("--compression", choices=COMPRESSIONS, help="compression (default none)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per destination; the fastest counts, with the highest peak RSS (default 1)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds one export may take before it is killed and counted as FAIL (default 1800)")
    p.add_argument("--data-dir", type=Path,
                   help="data dir whose events.duckdb is reused if it has events (else generated there and kept)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one export (JSON spec), print JSON
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0
    names = ["download", *[d for d in DESTINATIONS[1:] if args.only is None or d in args.only]]
    work = work_dir(args.events if args.data_dir is None else 0)
    data_dir = (args.data_dir or work / "data").absolute()
    began = time.perf_counter()
    results: list[Result] = []
    try:
        events = prepare(data_dir, args.events)
        with ExitStack() as stack:
            log(f"starting servers for {', '.join(names[1:]) or 'nothing (download only)'}")
            servers = Servers(stack, names, work)
            what = args.format + (f" + {args.compression}" if args.compression else "")
            log(f"exporting {events:,} events as {what}, one fresh process per export, data in {data_dir}")
            for name in names:
                result = run_best(name, servers, args, data_dir)
                results.append(result)
                log(f"  {name:<9} " + (f"{result.seconds:6.1f}s  {result.rate / 1000:5,.0f}k ev/s  "
                                       f"{result.bytes / 1e6:8,.1f} MB  RSS start {result.rss_start_mb:4.0f} MB  "
                                       f"peak {result.peak_rss_mb:4.0f} MB  (ru_maxrss {result.ru_maxrss_mb:.0f})  "
                                       f"{result.check}" if result.error is None else f"ERROR {result.error}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a --data-dir is kept; each run's output was deleted after its check
    text, passed = report(results)
    compression = args.compression or "no compression"
    print(f"\nOne export of {events:,} events ({args.format}, {compression}) per destination, each in a fresh "
          f"process; peak RSS = the child's VmHWM. Placement: peak within {TARGET_DELTA_MB:.0f} MB of download's.")
    print(text)
    baseline = results[0] if results else None
    failed = [r.destination for r in results if verdict(r, baseline)[1] == "FAIL"]
    print(f"\noverall: {'PASS' if passed else 'FAIL'}" + (f" ({', '.join(failed)} failed)" if failed else "")
          + f"; total wall time {time.perf_counter() - began:.0f}s")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
