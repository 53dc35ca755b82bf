"""End-to-end latency of a streaming export: POST /api/events -> the stream's webhook, at a steady rate.

Run from the project root:

    uv run python bench/stream_bench.py                        # 5,000 events/s for 20 s, server defaults
    uv run python bench/stream_bench.py --rate 2000 --seconds 10
    uv run python bench/stream_bench.py --settle 0.2 --max-batch-seconds 0.2    # tuned stream and server

It starts the real service (`analytics-export serve --workers N`, tests/service.py) on a fresh data
dir with `ANALYTICS_EXPORT_DESTINATION_ALLOW=["127.0.0.1"]` (and `--settle` when given), a webhook
receiver here (ThreadingHTTPServer, HTTP/1.1 keep-alive, answers 200), and one stream of every event
to it (`--max-batch-events`, `--max-batch-seconds`; default: the spec's defaults). Once a worker
runs the stream and one warm-up event has gone through it (not counted: the first ingest creates the
store, the first read loads its modules), `--senders` threads ingest `--rate` events/s for
`--seconds` through POST /api/events in batches of `--batch` events, on a fixed schedule (a batch
that is due goes out at once, however late the previous ones were; the lag behind the schedule is
reported). Each event's properties carry `sent`, the wall-clock time its POST started. A POST
answered 503 (the event store busy, Retry-After) is sent again at once with the same events (`sent`
stays the first try's start). The receiver records each event's arrival time. Latency is arrival -
sent: the ingest call, the settle time, the worker's poll, the batching, and the webhook POST.

After the run the service is stopped and the event store is read (DuckDB, read-only) for each
event's `inserted_at`, which splits the latency into ingest (sent -> stored: the POST's wait for the
event store's write lock and its insert) and stream (stored -> arrival: settle + poll + batching +
delivery). It prints a table of p50/p95/p99/max for each part, the ingest and delivered rates,
missing and duplicated events, and PASS/FAIL against the target: p99 end to end < 2 s.
Exit code 1 on FAIL, or if an event is missing.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from service import Service, cli  # noqa: E402  (the tests' real-server helper)

TARGET_P99_S = 2.0


class Receiver:
    """The stream's webhook: for each JSON Lines record, (uuid, sent, arrival)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[tuple[str, float, float]] = []
        self.requests = 0
        self.batch_sizes: list[int] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                arrived = time.time()
                rows = [json.loads(line) for line in body.splitlines()]
                with owner.lock:
                    owner.requests += 1
                    owner.batch_sizes.append(len(rows))
                    owner.arrivals += [(r["uuid"], r["properties"]["sent"], arrived) for r in rows]
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/stream"

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def warm_up(client: httpx.Client, receiver: Receiver) -> None:
    """One event sent and delivered before the measured run, then forgotten: the service's first ingest
    creates the store and the worker's first read loads what it needs, a one-time second or two."""
    now = time.time()
    event = {"uuid": str(uuid.uuid4()), "event": "warm-up", "distinct_id": "bench", "properties": {"sent": now},
             "timestamp": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    assert client.post("/api/events", json=[event]).status_code == 200
    deadline = time.monotonic() + 60
    while not receiver.count():
        assert time.monotonic() < deadline, "the warm-up event was never delivered"
        time.sleep(0.05)
    with receiver.lock:
        receiver.arrivals.clear()
        receiver.requests = 0
        receiver.batch_sizes.clear()


class Sender:
    """Ingest on a schedule: batch k is due at start + k * batch / rate; `senders` threads take due
    batches from a queue, so one slow POST does not hold the next back (up to `senders` at once)."""

    def __init__(self, url: str, key: str, rate: float, seconds: float, batch: int, senders: int) -> None:
        self.url, self.key, self.rate, self.seconds, self.batch, self.senders = url, key, rate, seconds, batch, senders
        self.calls: list[tuple[float, float, int]] = []  # (start, duration, status)
        self.behind: list[float] = []  # how late each POST started against its schedule
        self.uuids: list[str] = []
        self.retried = 0  # POSTs answered 503 and sent again
        self.lock = threading.Lock()

    def post(self, client: httpx.Client, due: float, seq: int) -> None:
        ids = [str(uuid.uuid4()) for _ in range(self.batch)]
        started = time.time()
        stamp = datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        events = [{"uuid": u, "event": "bench", "distinct_id": f"user-{(seq + i) % 1000}", "timestamp": stamp,
                   "properties": {"sent": started, "seq": seq, "i": i}} for i, u in enumerate(ids)]
        for _ in range(50):  # a 503 (the event store busy, Retry-After) is sent again at once: same uuids
            try:
                status = client.post(f"{self.url}/api/events", json=events).status_code
            except httpx.HTTPError:
                status = 0
            if status != 503:
                break
            with self.lock:
                self.retried += 1
            time.sleep(0.05)
        with self.lock:
            self.calls.append((started, time.time() - started, status))
            self.behind.append(started - due)
            if status == 200:
                self.uuids += ids

    def run(self) -> float:
        """Send everything; returns the seconds it took."""
        work: queue.Queue[tuple[float, int] | None] = queue.Queue()

        def worker() -> None:
            with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {self.key}"}) as client:
                while (item := work.get()) is not None:
                    self.post(client, *item)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.senders)]
        for t in threads:
            t.start()
        batches = int(self.rate * self.seconds / self.batch)
        start = time.time() + 0.2
        for k in range(batches):
            due = start + k * self.batch / self.rate
            time.sleep(max(0.0, due - time.time()))
            work.put((due, k))
        for _ in threads:
            work.put(None)
        for t in threads:
            t.join()
        return time.time() - start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<34} {'-':>8}"
    return (f"{name:<34} {pct(values, .5):8.3f} {pct(values, .95):8.3f} {pct(values, .99):8.3f} "
            f"{max(values):8.3f} {statistics.mean(values):8.3f}")


def stored_at(data: Path) -> dict[str, float]:
    """uuid -> inserted_at (epoch seconds) of every event, read once the service has stopped."""
    con = duckdb.connect(str(data / "events.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT CAST(uuid AS VARCHAR), epoch_us(inserted_at) FROM events").fetchall()
    finally:
        con.close()
    return {u: us / 1e6 for u, us in rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rate", type=float, default=5000, help="events per second ingested (default 5,000)")
    p.add_argument("--seconds", type=float, default=20, help="how long to ingest (default 20)")
    p.add_argument("--batch", type=int, default=250, help="events per POST /api/events (default 250: 20 POSTs/s)")
    p.add_argument("--senders", type=int, default=4, help="concurrent ingest clients (default 4)")
    p.add_argument("--workers", type=int, default=1, help="worker processes `serve` starts (default 1)")
    p.add_argument("--settle", type=float, help="ANALYTICS_EXPORT_STREAM_SETTLE_SECONDS (default: the server's, 0.5)")
    p.add_argument("--max-batch-events", type=int, help="the stream's max_batch_events (default: the spec's, 1000)")
    p.add_argument("--max-batch-seconds", type=float, help="the stream's max_batch_seconds (default: the spec's, 1.0)")
    p.add_argument("--drain", type=float, default=60, help="seconds to wait for the last events (default 60)")
    args = p.parse_args()

    env = {"ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]'}
    if args.settle is not None:
        env["ANALYTICS_EXPORT_STREAM_SETTLE_SECONDS"] = str(args.settle)
    receiver = Receiver()
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        data = Path(tmp)
        key = cli(data, "keys", "create", "--project", "default")
        svc = Service(data, args.workers, env)
        try:
            with svc.client(key) as c:
                spec = {"name": "bench", "destination": {"type": "webhook", "url": receiver.url}}
                if args.max_batch_events is not None:
                    spec["max_batch_events"] = args.max_batch_events
                if args.max_batch_seconds is not None:
                    spec["max_batch_seconds"] = args.max_batch_seconds
                created = c.post("/api/streams", json=spec)
                assert created.status_code == 201, created.text
                stream = created.json()
                stream_id = stream["stream"]["id"]
                deadline = time.monotonic() + 60
                while not c.get(f"/api/streams/{stream_id}", params={"lag": "false"}).json()["running_on"]:
                    assert time.monotonic() < deadline, "no worker took the stream"
                    time.sleep(0.1)
                warm_up(c, receiver)
                print(f"stream {stream_id}: max_batch_events={stream['stream']['max_batch_events']}, "
                      f"max_batch_seconds={stream['stream']['max_batch_seconds']}, settle="
                      f"{args.settle if args.settle is not None else 'server default (0 on the embedded store)'}, "
                      f"{args.workers} worker(s)", flush=True)
                sender = Sender(svc.url, key, args.rate, args.seconds, args.batch, args.senders)
                print(f"ingesting {args.rate:,.0f} events/s for {args.seconds:g} s in POSTs of {args.batch} "
                      f"({args.senders} senders) ...", flush=True)
                took = sender.run()
                sent = len(sender.uuids)
                drained = time.monotonic() + args.drain
                while receiver.count() < sent and time.monotonic() < drained:
                    time.sleep(0.1)
                final = c.get(f"/api/streams/{stream_id}").json()
        finally:
            svc.close()
        stored = stored_at(data)
    receiver.close()

    arrivals = receiver.arrivals
    first: dict[str, tuple[float, float]] = {}
    for u, sent_at, arrived in arrivals:
        first.setdefault(u, (sent_at, arrived))
    e2e = [a - s for s, a in first.values()]
    ingest = [stored[u] - s for u, (s, _) in first.items() if u in stored]
    stream_part = [a - stored[u] for u, (_, a) in first.items() if u in stored]
    calls = [d for _, d, _ in sender.calls]
    statuses = Counter(status for _, _, status in sender.calls)
    missing = len(set(sender.uuids) - set(first))
    duplicates = len(arrivals) - len(first)
    span = max(a for _, _, a in arrivals) - min(a for _, _, a in arrivals) if arrivals else 0.0

    print(f"\n{'seconds':<34} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'mean':>8}")
    print(row("end to end (POST start -> arrival)", e2e))
    print(row("  ingest (POST start -> stored)", ingest))
    print(row("  stream (stored -> arrival)", stream_part))
    print(row("POST /api/events (with 503 retries)", calls))
    print(row("POST start behind schedule", sender.behind))
    print()
    print(f"ingested      {sent:,} events in {took:.1f} s = {sent / took:,.0f} events/s "
          f"(offered {args.rate:,.0f}/s; POST statuses {dict(statuses)}, {sender.retried} answered 503 "
          "and sent again)")
    print(f"delivered     {len(first):,} events in {receiver.requests:,} webhook requests "
          f"(mean {statistics.mean(receiver.batch_sizes) if receiver.batch_sizes else 0:,.0f} per request) "
          f"over {span:.1f} s = {len(first) / span if span else 0:,.0f} events/s")
    print(f"missing {missing:,}, duplicated {duplicates:,}; stream at the end: status {final['status']}, "
          f"lag {final['lag']}, delivered_events {final['delivered_events']:,}, "
          f"delivered_batches {final['delivered_batches']:,}")
    p99 = pct(e2e, .99)
    verdict = "PASS" if p99 < TARGET_P99_S and not missing else "FAIL"
    print(f"\np99 end to end {p99:.3f} s (target < {TARGET_P99_S:.0f} s): {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
