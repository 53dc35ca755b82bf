"""Streaming exports end to end, through the real service (`analytics-export serve`, its worker
processes) on 127.0.0.1: the /api/streams routes, delivery to a webhook made here, NATS JetStream,
RabbitMQ and S3 (moto) while the service is SIGKILLed and started again, a failing destination,
pause/resume, and the project's privacy policy on what leaves.

What arrived is read back independently of the code under test: the webhook's request bodies,
the JetStream stream through nats-py, the queue through aiormq, the bucket through boto3.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from brokers import Jet, Queue
from service import Service, create_key
from support import read_table

from analytics_export import Settings

HOST = "127.0.0.1"
ENV = {"ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]', "ANALYTICS_EXPORT_STREAM_SETTLE_SECONDS": "0.2",
       "ANALYTICS_EXPORT_STREAMS_PER_WORKER": "12"}  # the crash run's ten streams on one worker
MAX_BATCH = 100
MIN_INGESTED = 2_000  # the kill run goes on ingesting until at least this many events were stored
BATCH_SECONDS = 0.3
KILLS = int(os.environ.get("STREAM_TEST_KILLS", 2))  # each costs a 30 s lease before another worker takes over
SEED = int(os.environ.get("STREAM_TEST_SEED", random.randrange(1 << 30)))
TABLES = {"postgres": {"type": "postgres", "url": "set by crash_run", "table": "public.streamed"},
          "clickhouse": {"type": "clickhouse", "url": "chdb:streamed", "table": "events"},
          "delta": {"type": "delta", "uri": "lake/streamed"},
          "iceberg": {"type": "iceberg", "table": "raw.streamed", "warehouse": "iceberg"},
          "snowflake": {"type": "snowflake", "account": "set by crash_run", "user": "loader",
                        "table": "set by crash_run", "connection": "snowflake"},
          "bigquery": {"type": "bigquery", "project": "set by crash_run", "table": "set by crash_run"}}
HEX64 = re.compile(r"[0-9a-f]{64}")
BUSY: Counter = Counter()
"""503s (Retry-After) answered to GET /api/streams/{id} and POST /api/events, by cause: retried."""


# ---------------------------------------------------------------- the service, killable


class KillableService(Service):
    """`serve` leading a process group of its own, so that the API and its worker processes can be
    SIGKILLed at once (a crash: no lease released, no batch finished), which Service cannot do
    (its `serve` shares pytest's process group)."""

    def __init__(self, data_dir: Path, workers: int = 1, env: dict | None = None) -> None:
        super().__init__(data_dir, workers, {**ENV, **(env or {})}, own_group=True)

    def kill(self) -> None:
        """SIGKILL `serve`, uvicorn and every worker process together."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def close(self) -> None:
        super().close()
        self.kill()  # any worker still there


# ---------------------------------------------------------------- a webhook receiver


class Receiver:
    """An HTTP server taking stream batches: answers `status` (200 by default) `ack_delay` seconds
    after it has read a request; keeps what it took with 2xx, whole bodies only (a request cut by a
    crash is not a delivery, one whose answer a crash kept from the sender is)."""

    def __init__(self, ack_delay: float = 0.0, host: str = HOST, port: int = 0) -> None:
        self.status = 200
        self.ack_delay = ack_delay
        self.lock = threading.Lock()
        self.taken: list[tuple[float, dict[str, str], bytes]] = []
        self.refused = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                status = owner.status
                if len(body) != length:
                    return
                with owner.lock:
                    if status < 300:
                        owner.taken.append((time.time(), dict(self.headers), body))
                    else:
                        owner.refused += 1
                time.sleep(owner.ack_delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://{HOST}:{self.server.server_port}{path}"

    def records(self, path: str | None = None) -> list[dict[str, Any]]:
        """Every JSON Lines record taken (of requests to `path`), in arrival order."""
        with self.lock:
            taken = list(self.taken)
        out = []
        for _, headers, body in taken:
            if path is not None and headers.get("X-Path", path) != path:
                continue
            text = body.decode()
            assert text.endswith("\n"), text[-100:]
            out += [json.loads(line) for line in text.split("\n")[:-1]]
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- events and ingestion


def ts_text(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_events(batch: int, size: int, tag: str = "t", users: Callable[[int], str] = lambda i: f"user-{i % 7}"
                ) -> list[dict[str, Any]]:
    stamp = datetime(2026, 10, 15, 12, tzinfo=timezone.utc) + timedelta(seconds=batch, microseconds=batch)
    return [{"uuid": str(uuid.uuid4()), "event": f"stream_{tag}", "distinct_id": users(i),
             "timestamp": ts_text(stamp), "properties": {"batch": batch, "i": i, "tag": tag}}
            for i in range(size)]


def post_events(url: str, key: str, events: list[dict[str, Any]]) -> None:
    """POST the events; a 503 (the event store busy: Retry-After) is sent again."""
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(50):
            r = client.post(f"{url}/api/events", json=events)
            if r.status_code != 503:
                break
            BUSY[f"POST events: {r.json()['detail'][:200]}"] += 1
            time.sleep(0.1)
        assert r.status_code == 200 and r.json()["ingested"] == len(events), r.text


class Ingester(threading.Thread):
    """Ingests `size`-event batches through POST /api/events every `interval` seconds until stopped,
    into whichever service `url()` names now: a request cut by a kill is sent again (same uuids)."""

    def __init__(self, url: Callable[[], str], key: str, size: int = 50, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.size, self.interval = url, key, size, interval
        self.stop = threading.Event()
        self.sent: dict[str, dict[str, Any]] = {}
        self.batch_of: dict[str, int] = {}
        self.retries = 0
        self.calls: list[tuple[float, float, str]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {self.key}"}) as client:
                batch = 0
                while not self.stop.is_set():
                    events = make_events(batch, self.size, "crash")
                    deadline = time.monotonic() + 90
                    while True:
                        began = time.monotonic()
                        try:
                            r = client.post(f"{self.url()}/api/events", json=events)
                            self.calls.append((began, time.monotonic() - began, str(r.status_code)))
                            if r.status_code == 200:
                                break
                            assert r.status_code == 503, r.text  # the store busy: retry
                            BUSY[f"POST events: {r.json()['detail'][:200]}"] += 1
                        except httpx.TransportError as exc:
                            self.calls.append((began, time.monotonic() - began, type(exc).__name__))
                        assert time.monotonic() < deadline, "ingest did not get through for 90 s"
                        self.retries += 1
                        time.sleep(0.2)
                    for e in events:
                        self.sent[e["uuid"]] = e
                        self.batch_of[e["uuid"]] = batch
                    batch += 1
                    self.stop.wait(self.interval)
        except BaseException as exc:  # reported by the test
            self.error = exc


def expected_record(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object a stream delivers for an ingested event."""
    return {"event": event["event"], "distinct_id": event["distinct_id"], "timestamp": event["timestamp"],
            "properties": event["properties"], "uuid": event["uuid"]}


# ---------------------------------------------------------------- API helpers


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def create_stream(client: httpx.Client, destination: dict, **spec: Any) -> dict:
    body = {"name": "s", "destination": destination, "max_batch_events": MAX_BATCH,
            "max_batch_seconds": BATCH_SECONDS, **spec}
    r = client.post("/api/streams", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def view(client: httpx.Client, stream_id: str) -> dict:
    """GET the stream (with its lag); a 503 (the event store busy: Retry-After) is asked again."""
    for _ in range(50):
        r = client.get(f"/api/streams/{stream_id}")
        if r.status_code != 503:
            break
        BUSY[f"GET stream: {r.json()['detail'][:200]}"] += 1
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    return r.json()


def caught_up(client: httpx.Client, stream_id: str, timeout: float = 60) -> dict:
    """The stream's view once nothing is left to deliver."""
    return wait_until(lambda: (v := view(client, stream_id))["lag"]["events"] == 0 and v, timeout,
                      f"stream {stream_id} catching up")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def svc(make_service: Callable[..., Service], tmp_path_factory: pytest.TempPathFactory) -> Service:
    return make_service(tmp_path_factory.mktemp("streams"), 1, projects=("default", "other", "private"),
                        kind=KillableService)


@pytest.fixture()
def client(svc: KillableService) -> Iterator[httpx.Client]:
    with svc.client(svc.key) as c:
        yield c


# ---------------------------------------------------------------- 1. the API


def test_create_list_get_patch_pause_resume_delete(svc, client, receiver):
    destination = {"type": "webhook", "url": receiver.url("/crud"), "headers": {"X-Path": "/crud"}}
    created = client.post("/api/streams", json={"id": "mine", "name": "crud", "destination": destination,
                                                "events": ["stream_crud"], "max_batch_events": 7})
    assert created.status_code == 201, created.text
    body = created.json()
    stream_id = body["stream"]["id"]
    assert stream_id != "mine" and uuid.UUID(stream_id)
    assert body["status"] == "active" and body["cursor_uuid"] == ""
    assert body["delivered_events"] == 0 and body["delivered_batches"] == 0 and body["last_error"] is None
    assert body["stream"]["max_batch_events"] == 7 and body["stream"]["max_batch_seconds"] == 1.0
    assert body["stream"]["destination"]["url"] == receiver.url("/crud")
    cursor = datetime.fromisoformat(body["cursor"].replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - cursor).total_seconds()) < 5, "from now on by default"

    listed = client.get("/api/streams").json()
    assert stream_id in [i["stream"]["id"] for i in listed["items"]] and listed["total"] >= 1
    assert len(client.get("/api/streams", params={"limit": 1}).json()["items"]) == 1

    got = view(client, stream_id)
    assert got["lag"] == {"events": 0, "seconds": 0.0}
    running = wait_until(lambda: (v := view(client, stream_id))["running_on"] and v, 20, "a worker claiming it")
    assert running["status"] == "active"

    patched = client.patch(f"/api/streams/{stream_id}", json={"name": "renamed", "max_batch_events": 3})
    assert patched.status_code == 200, patched.text
    spec = patched.json()["stream"]
    assert (spec["id"], spec["name"], spec["max_batch_events"], spec["events"]) == (
        stream_id, "renamed", 3, ["stream_crud"])

    # the patched batch size is what the worker uses: 10 events in batches of at most 3
    post_events(svc.url, svc.key, make_events(0, 10, "crud"))
    done = wait_until(lambda: (v := view(client, stream_id))["delivered_events"] == 10 and v, 30, "delivery")
    assert done["delivered_batches"] >= 4
    assert [len(b.decode().splitlines()) <= 3 for _, h, b in receiver.taken if h.get("X-Path") == "/crud"] == [
        True] * done["delivered_batches"]

    paused = client.post(f"/api/streams/{stream_id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    wait_until(lambda: view(client, stream_id)["running_on"] is None, 10, "the worker letting go")
    assert view(client, stream_id)["status"] == "paused"
    assert next(i for i in client.get("/api/streams").json()["items"] if i["stream"]["id"] == stream_id)[
        "status"] == "paused"
    resumed = client.post(f"/api/streams/{stream_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "active"

    assert client.delete(f"/api/streams/{stream_id}").status_code == 204
    assert client.get(f"/api/streams/{stream_id}").status_code == 404
    assert client.delete(f"/api/streams/{stream_id}").status_code == 404
    assert stream_id not in [i["stream"]["id"] for i in client.get("/api/streams").json()["items"]]


BAD_SPECS = [
    ({"destination": {"type": "ftp", "url": "ftp://x"}}, "destination"),
    ({"destination": {"type": "webhook", "url": "not a url"}}, "url must be an absolute http"),
    ({"destination": {"type": "webhook", "url": "http://127.0.0.2:9/hook"}}, "ANALYTICS_EXPORT_DESTINATION_ALLOW"),
    ({"destination": {"type": "webhook", "url": "http://127.0.0.1:9/", "batch_max_events": 5}},
     "use max_batch_events"),
    ({"destination": {"type": "webhook", "url": "http://127.0.0.1:9/", "connection": "nope"}}, "no connection 'nope'"),
    ({"destination": {"type": "webhook", "url": "http://127.0.0.1:9/", "headers": {"X-Name": "café"}}},
     "header 'X-Name': the value has a non-ASCII character"),
    ({"destination": {"type": "webhook", "url": "http://127.0.0.1:9/", "headers": {"X-Soh": "a\u0001"}}},
     "control character U+0001"),
    ({"destination": {"type": "webhook", "url": "http://127.0.0.1:9/", "headers": {"X-Nul": "a\u0000"}}},
     "destination.headers.X-Nul: text may not hold NUL"),
    ({"destination": {"type": "webhook", "url": "http://127.0.0.1:9/", "headers": {"X-Batch-Id": "1"}}},
     "set by analytics-export"),
    ({"destination": {"type": "webhook", "url": "http://[64:ff9b::7f00:1]:9/"}}, "NAT64 form of 127.0.0.1"),
    ({"destination": {"type": "s3", "bucket": "bkt", "path_template": "year={year}"}},
     "may only lay them out by each event's own values"),
    ({"destination": {"type": "s3", "bucket": "bkt", "max_events_per_file": 10}}, "use max_batch_events"),
    ({"destination": {"type": "nats", "subject": "events.*"}}, "subject must be dot-separated tokens"),
    ({"destination": {"type": "nats", "subject": "a..b"}}, "subject must be dot-separated tokens"),
    ({"destination": {"type": "nats", "subject": "ok", "url": "nats://user:pw@127.0.0.1:4222"}},
     "credentials go in a connection"),
    ({"destination": {"type": "rabbitmq", "queue": "bad queue"}}, "queue must be 1-255"),
    ({"destination": {"type": "delta", "uri": "lake/t"}, "properties": ["plan", "uuid"]},
     "property 'uuid' would be a column of the table"),
    ({"destination": {"type": "delta", "uri": "../outside"}}, "uri"),
    ({"destination": {"type": "postgres", "url": "postgresql://u:pw@127.0.0.1/db", "table": "t"}},
     "put the password in a connection"),
    ({"max_batch_events": 0}, "max_batch_events"),
    ({"max_batch_seconds": 0}, "max_batch_seconds"),
    ({"failing_after_seconds": 0.5}, "failing_after_seconds"),
    ({"filters": [{"property": "x", "operator": "like", "value": 1}]}, "operator"),
    ({"nmae": "typo"}, "nmae: Extra inputs are not permitted"),
    ({"name": ""}, "name"),
]


@pytest.mark.parametrize("change, message", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_specs_are_422_saying_what_is_wrong(client, receiver, change, message):
    body = {"name": "bad", "destination": {"type": "webhook", "url": receiver.url("/bad")}, **change}
    r = client.post("/api/streams", json=body)
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_patch_is_checked_like_create(client, receiver):
    stream_id = create_stream(client, {"type": "webhook", "url": receiver.url("/patch")},
                              events=["none"])["stream"]["id"]
    try:
        for change, message in [({"id": "other"}, "id: fixed when the stream is created"),
                                ({"start": "2020-01-01T00:00:00Z"}, "start: fixed when the stream is created"),
                                ({"destination": {"type": "s3", "bucket": "bkt", "path_template": "x"}},
                                 "may only lay them out by each event's own values"),
                                ({"destination": {"type": "nats", "subject": "a.>"}}, "subject must be"),
                                ({"max_batch_events": 1_000_000}, "max_batch_events"),
                                ({"destination": {"type": "webhook", "url": "http://127.0.0.3/"}},
                                 "ANALYTICS_EXPORT_DESTINATION_ALLOW")]:
            r = client.patch(f"/api/streams/{stream_id}", json=change)
            assert r.status_code == 422 and message in r.json()["detail"], (change, r.text)
        unchanged = view(client, stream_id)["stream"]
        assert unchanged["destination"]["url"] == receiver.url("/patch") and unchanged["max_batch_events"] == MAX_BATCH
    finally:
        client.delete(f"/api/streams/{stream_id}")


def test_filter_on_a_denied_property_is_422(svc, receiver):
    with svc.client(svc.keys["other"]) as c:
        policy = c.put("/api/projects/other/privacy", json={"deny_properties": ["email"]})
        assert policy.status_code == 200, policy.text
        try:
            body = {"name": "f", "destination": {"type": "webhook", "url": receiver.url("/deny")},
                    "filters": [{"property": "email", "operator": "eq", "value": "a@b.c"}]}
            r = c.post("/api/streams", json=body)
            assert r.status_code == 422, r.text
            assert "filter on property 'email'" in r.json()["detail"] and "remove the filter" in r.json()["detail"]
            ok = c.post("/api/streams", json={**body, "filters": [{"property": "plan", "operator": "eq",
                                                                    "value": "pro"}]})
            assert ok.status_code == 201, ok.text
            stream_id = ok.json()["stream"]["id"]
            patched = c.patch(f"/api/streams/{stream_id}", json={"filters": body["filters"]})
            assert patched.status_code == 422 and "filter on property 'email'" in patched.json()["detail"]
            assert c.delete(f"/api/streams/{stream_id}").status_code == 204
        finally:
            c.delete("/api/projects/other/privacy")


def test_projects_cannot_see_each_others_streams(svc, client, receiver):
    stream_id = create_stream(client, {"type": "webhook", "url": receiver.url("/mine")},
                              events=["none"])["stream"]["id"]
    try:
        with svc.client(svc.keys["other"]) as other:
            for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/pause"), ("POST", "/resume")]:
                r = other.request(method, f"/api/streams/{stream_id}{path}", json={"name": "x"} if method == "PATCH"
                                  else None)
                assert r.status_code == 404 and r.json()["detail"] == f"no stream {stream_id}", (method, path, r.text)
            assert stream_id not in [i["stream"]["id"] for i in other.get("/api/streams").json()["items"]]
            r = other.put("/api/projects/default/privacy", json={"deny_properties": ["x"]})
            assert r.status_code == 403 and "belongs to project 'other'" in r.json()["detail"]
        with svc.client(None) as anonymous:
            assert anonymous.get(f"/api/streams/{stream_id}").status_code == 401
            assert anonymous.post("/api/streams", json={}).status_code == 401
        after = view(client, stream_id)
        assert after["status"] == "active" and after["stream"]["name"] == "s", "untouched by the other project"
    finally:
        client.delete(f"/api/streams/{stream_id}")


JUNK = [
    ("POST", "", b"{not json"),
    ("POST", "", b"[]"),
    ("POST", "", b"null"),
    ("POST", "", b'"text"'),
    ("POST", "", b'{"name": "x", "destination": null}'),
    ("POST", "", b'{"name": "x", "destination": {"type": "webhook"}}'),
    ("POST", "", b'{"name": "x", "destination": {"type": "nats", "subject": "ok"}, "failing_after_seconds": 1e400}'),
    ("POST", "", b'{"name": "x", "destination": {"type": "nats", "subject": "ok"}, "max_batch_seconds": NaN}'),
    ("POST", "", b'{"name": "x", "destination": {"type": "nats", "subject": "ok"}, "start": "yesterday"}'),
    ("POST", "", b'{"name": "x", "destination": {"type": "nats", "subject": "ok"}, "max_batch_events": 1e30}'),
    ("POST", "", b'{"name": ["x"], "destination": {"type": "nats", "subject": "ok"}, "events": "all"}'),
    ("POST", "", '{"name": "\u00e9\u0000", "destination": {"type": "rabbitmq", "queue": "\u00e9"}}'.encode()),
    ("PATCH", "/{id}", b"[]"),
    ("PATCH", "/{id}", b'{"destination": "webhook"}'),
    ("PATCH", "/{id}", b'{"failing_after_seconds": 1e400}'),
    ("PATCH", "/{id}", b'{"stream": {"name": "x"}}'),
    ("GET", "?limit=0", b""),
    ("GET", "?limit=abc", b""),
    ("GET", "?offset=-1", b""),
    ("GET", "/{id}?lag=maybe", b""),
    ("GET", "/no-such-stream", b""),
    ("POST", "/no-such-stream/pause", b""),
    ("DELETE", "/%00", b""),
]


def test_never_a_500(client, receiver):
    stream_id = create_stream(client, {"type": "webhook", "url": receiver.url("/junk")},
                              events=["none"])["stream"]["id"]
    created = []
    try:
        for method, path, body in JUNK:
            r = client.request(method, f"/api/streams{path.replace('{id}', stream_id)}", content=body or None,
                               headers={"content-type": "application/json"} if body else {})
            assert r.status_code in (404, 405, 422), (method, path, body, r.status_code, r.text)
            if r.status_code == 201:
                created.append(r.json()["stream"]["id"])
        # and the stream (and the listing) can still be read: nothing unreadable was stored
        assert view(client, stream_id)["stream"]["failing_after_seconds"] == 300
        assert client.get("/api/streams").status_code == 200
    finally:
        for i in [stream_id, *created]:
            client.delete(f"/api/streams/{i}")


# ---------------------------------------------------------------- 2. delivery through crashes


@dataclass
class CrashRun:
    sent: dict[str, dict[str, Any]]
    batch_of: dict[str, int]
    received: dict[str, list[dict[str, Any]]]
    views: dict[str, dict]
    kills: int
    log: list[str] = field(default_factory=list)
    store: Path | None = None

    def where(self, missing: set[str]) -> str:
        """Where the store holds `missing` events: their `inserted_at`s, for a failure's message."""
        import duckdb

        with duckdb.connect(str(self.store), read_only=True) as con:
            rows = con.execute("SELECT CAST(uuid AS VARCHAR), inserted_at FROM events WHERE CAST(uuid AS VARCHAR) "
                               "IN (SELECT unnest($1))", [sorted(missing)]).fetchall()
        stamps = Counter(f"{at.astimezone(timezone.utc):%H:%M:%S.%f}" for _, at in rows)
        return f"{len(rows)} of them stored, inserted_at (UTC): {dict(stamps)}"


def jetstream_records(jet: Jet) -> list[dict[str, Any]]:
    messages = jet.read()
    for m in messages:
        assert m.headers["Nats-Msg-Id"] == json.loads(m.data)["uuid"]
    return [json.loads(m.data) for m in messages]


def queue_records(queue: Queue) -> list[dict[str, Any]]:
    async def count() -> int:
        connection, channel = await queue._channel()
        try:
            return (await channel.queue_declare(queue.name, passive=True)).message_count
        finally:
            await connection.close()
    messages = queue.consume(asyncio.run(count()))
    for m in messages:
        assert m.header.properties.message_id == json.loads(m.body)["uuid"]
    return [json.loads(m.body) for m in messages]


def table_records(data: Path, spec: dict) -> list[dict[str, Any]]:
    """A table's rows as the records a stream delivers (properties parsed, timestamps as text)."""
    out = []
    for row in read_table(Settings(data_dir=data), spec):
        props = row["properties"]
        out.append({"event": row["event"], "distinct_id": row["distinct_id"], "timestamp": ts_text(row["timestamp"]
                    if row["timestamp"].tzinfo else row["timestamp"].replace(tzinfo=timezone.utc)),
                    "properties": json.loads(props) if isinstance(props, str) else props, "uuid": str(row["uuid"])})
    return out


def bucket_records(s3, bucket: str) -> list[dict[str, Any]]:
    client = s3.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    out = []
    for key in sorted(keys):  # named after the range each holds: in key order is in stream order
        assert key.startswith("streamed/") and key.endswith(".jsonl"), key
        text = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        out += [json.loads(line) for line in text.split("\n")[:-1]]
    return out


@pytest.fixture(scope="module")
def crash_run(tmp_path_factory, s3_server, nats_url, rabbitmq_url, pg_url_module, snowflake_server,
              bigquery_server) -> Iterator[CrashRun]:
    """One service, ten streams (webhook, NATS, RabbitMQ, S3, and PostgreSQL, ClickHouse (chDB), Delta Lake,
    Iceberg, Snowflake (fakesnow) and BigQuery (bqemulator) tables) of the same events; events ingested
    all along, the whole service SIGKILLed KILLS times at random moments while the streams deliver,
    started again on the same data dir each time; then everything delivered is collected."""
    rng = random.Random(SEED)
    log = [f"seed {SEED} (STREAM_TEST_SEED={SEED} repeats it)"]
    data = tmp_path_factory.mktemp("crash")
    key = create_key(data, "default")
    receiver, jet, queue = Receiver(ack_delay=0.2), Jet(nats_url), Queue(rabbitmq_url)  # a slow ack: kills
    # land between the webhook taking a batch and the stream's checkpoint of it
    bucket = s3_server.make_bucket(f"streams-{uuid.uuid4().hex[:12]}")
    emulators = {"BIGQUERY_EMULATOR_HOST": bigquery_server.endpoint}
    patched = pytest.MonkeyPatch()
    patched.setenv("BIGQUERY_EMULATOR_HOST", bigquery_server.endpoint)  # reading the table back, here
    service = KillableService(data, 1, emulators)
    current = {"url": service.url}
    ingester = Ingester(lambda: current["url"], key, size=50, interval=0.25)
    try:
        with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            r = c.post("/api/connections", json={"name": "s3", "type": "s3", "secrets": {
                "access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key}})
            assert r.status_code == 201, r.text
            r = c.post("/api/connections", json={"name": "snowflake", "type": "snowflake", "secrets": {
                "password": snowflake_server.password}})
            assert r.status_code == 201, r.text
            snowflake = {"account": snowflake_server.account, "url": snowflake_server.url,
                         "table": f"{snowflake_server.make_schema('STREAMS', f'S{uuid.uuid4().hex[:12]}')}.EVENTS"}
            bigquery = {"project": bigquery_server.project,
                        "table": f"{bigquery_server.make_dataset(f's{uuid.uuid4().hex[:12]}')}.events"}
            destinations = {
                "webhook": {"type": "webhook", "url": receiver.url()},
                "nats": {"type": "nats", "url": nats_url, "subject": jet.subject, "stream": jet.stream},
                "rabbitmq": {"type": "rabbitmq", "url": rabbitmq_url, "queue": queue.name},
                "s3": {"type": "s3", "bucket": bucket, "endpoint_url": s3_server.endpoint, "region": "us-east-1",
                       "connection": "s3", "prefix": "streamed"},
                **TABLES, "postgres": {**TABLES["postgres"], "url": pg_url_module.replace("+psycopg", "")},
                "snowflake": {**TABLES["snowflake"], **snowflake}, "bigquery": {**TABLES["bigquery"], **bigquery},
            }
            ids = {name: create_stream(c, d, name=name)["stream"]["id"] for name, d in destinations.items()}
        ingester.start()
        started = time.monotonic()
        log.append(f"  0.0s: {datetime.now(timezone.utc):%H:%M:%S.%f} UTC")
        owners: dict[str, str | None] = {}
        for kill in range(KILLS + 1):
            with service.client(key) as c:
                base = {n: view(c, i)["delivered_events"] for n, i in ids.items()}  # a dead worker's lease holds

                def delivering() -> dict[str, dict] | None:
                    views = {n: view(c, i) for n, i in ids.items()}
                    return views if all(v["running_on"] not in (None, owners.get(n)) and
                                        v["delivered_events"] > base[n] for n, v in views.items()) else None

                views = wait_until(delivering, 60, "every stream running on a live worker and delivering",
                                   every=0.05)
            owners = {n: v["running_on"] for n, v in views.items()}
            ingester.interval = 0.1
            log.append(f"{time.monotonic() - started:5.1f}s: all delivering on {set(owners.values())} "
                       f"({ {n: v['delivered_events'] for n, v in views.items()} })")
            if kill == KILLS:
                break
            time.sleep(rng.uniform(0.5, 2.0))
            service.kill()
            ingester.interval = 0.5  # slower until a worker of the next service takes the streams over
            log.append(f"{time.monotonic() - started:5.1f}s: SIGKILLed (ingested so far: {len(ingester.sent)})")
            service = KillableService(data, 1, emulators)
            current["url"] = service.url
        wait_until(lambda: len(ingester.sent) >= MIN_INGESTED, 180, f"{MIN_INGESTED} events ingested", every=0.5)
        time.sleep(1)
        ingester.stop.set()
        ingester.join(120)
        assert ingester.error is None, ingester.error
        log.append(f"{time.monotonic() - started:5.1f}s: ingested {len(ingester.sent)} events "
                   f"({ingester.retries} retried posts)")
        refused = Counter(what for _, _, what in ingester.calls if what != "200")
        log.append("   cut or refused at: " + ", ".join(f"{t - started:.2f}s+{d:.2f}s {what}" for t, d, what in
                                                        ingester.calls if what not in ("200", "ConnectError")))
        log.append(f"   ingest calls refused or cut (sent again): {dict(refused)}; slowest: " + ", ".join(
            f"{d:.1f}s at {t - started:.0f}s" for t, d, _ in sorted(ingester.calls, key=lambda c: -c[1])[:5]))
        with service.client(key) as c:
            views = {name: caught_up(c, i, 90) for name, i in ids.items()}
        log.append(f"{time.monotonic() - started:5.1f}s: caught up; 503s retried: {dict(BUSY)}")
        service.close()  # the worker lets go of the chDB table
        received = {"webhook": receiver.records(), "nats": jetstream_records(jet), "rabbitmq": queue_records(queue),
                    "s3": bucket_records(s3_server, bucket),
                    **{name: table_records(data, destinations[name]) for name in TABLES}}
        yield CrashRun(ingester.sent, ingester.batch_of, received, views, KILLS, log, data / "events.duckdb")
    finally:
        ingester.stop.set()
        service.close()
        receiver.close()
        jet.delete()
        queue.delete()
        patched.undo()
        print("\n".join(log))


@pytest.mark.parametrize("destination", ["webhook", "nats", "rabbitmq", "s3", *TABLES])
def test_every_event_arrives_through_kills(crash_run: CrashRun, destination: str):
    got = crash_run.received[destination]
    sent = crash_run.sent
    counts = Counter(r["uuid"] for r in got)
    assert len(sent) >= MIN_INGESTED, "enough events ingested to kill mid-stream"
    unknown = set(counts) - set(sent)
    assert not unknown, f"{len(unknown)} delivered events were never ingested"
    missing = set(sent) - set(counts)
    assert not missing, (f"{len(missing)} of {len(sent)} events never arrived ({crash_run.where(missing)}): "
                         f"{crash_run.log}")
    for record in got:
        assert record == expected_record(sent[record["uuid"]])
    duplicated = [u for u, n in counts.items() if n > 1]
    print(f"{destination}: {len(got)} delivered, {len(duplicated)} duplicated uuids, {crash_run.kills} kills")
    assert len(duplicated) <= MAX_BATCH * crash_run.kills, "more redelivered than was unacknowledged at the kills"
    assert max(counts.values()) <= 1 + crash_run.kills
    if destination in TABLES:
        assert not duplicated, "a batch appended again replaces its earlier copy: exactly one of each event"
    else:
        firsts = [crash_run.batch_of[u] for u in dict.fromkeys(r["uuid"] for r in got)]
        assert firsts == sorted(firsts), "first deliveries in ingestion order"
    final = crash_run.views[destination]
    assert final["lag"] == {"events": 0, "seconds": 0.0}
    assert final["status"] == "active" and final["last_error"] is None
    assert final["delivered_events"] == len(sent), "each event checkpointed exactly once"


# ---------------------------------------------------------------- 3. a failing destination


def test_failing_webhook_shows_failing_then_recovers(svc, client):
    hook = Receiver()
    hook.status = 503
    stream_id = create_stream(client, {"type": "webhook", "url": hook.url()}, events=["stream_failing"],
                              failing_after_seconds=2)["stream"]["id"]
    try:
        events = [e for b in range(3) for e in make_events(b, 100, "failing")]
        post_events(svc.url, svc.key, events)
        seen: list[tuple[str, bool]] = []

        def failing() -> dict | None:
            v = view(client, stream_id)
            state = (v["status"], bool(v["last_error"]))
            if not seen or seen[-1] != state:
                seen.append(state)
            return v if v["status"] == "failing" else None

        started = time.monotonic()
        v = wait_until(failing, 30, "status failing", every=0.05)
        assert time.monotonic() - started >= 2
        assert ("active", True) in seen, f"an error shown before failing_after_seconds passed: {seen}"
        assert "503" in v["last_error"] and hook.url() in v["last_error"]
        assert v["lag"]["events"] == 300 and v["lag"]["seconds"] >= 2 and v["delivered_events"] == 0
        assert hook.refused >= 2 and not hook.taken

        hook.status = 200
        done = wait_until(lambda: (x := view(client, stream_id))["status"] == "active" and x["lag"]["events"] == 0
                          and x, 45, "recovery")
        assert done["last_error"] is None and done["delivered_events"] == 300
        got = Counter(r["uuid"] for r in hook.records())
        assert got == Counter(e["uuid"] for e in events), "each event exactly once, none lost"
    finally:
        client.delete(f"/api/streams/{stream_id}")
        hook.close()


# ---------------------------------------------------------------- 4. pause and resume


def test_events_stored_while_paused_are_delivered_after_resume(svc, client):
    hook = Receiver()
    stream_id = create_stream(client, {"type": "webhook", "url": hook.url()}, events=["stream_pause"])["stream"]["id"]
    try:
        before = make_events(0, 120, "pause")
        post_events(svc.url, svc.key, before)
        wait_until(lambda: view(client, stream_id)["delivered_events"] == 120, 30, "first events delivered")
        assert client.post(f"/api/streams/{stream_id}/pause").json()["status"] == "paused"
        wait_until(lambda: view(client, stream_id)["running_on"] is None, 10, "the worker letting go")
        during = [e for b in range(1, 6) for e in make_events(b, 60, "pause")]
        for b in range(5):
            post_events(svc.url, svc.key, during[b * 60:(b + 1) * 60])
        time.sleep(1.5)
        paused = view(client, stream_id)
        assert paused["status"] == "paused" and paused["running_on"] is None
        assert paused["lag"]["events"] == 300 and paused["delivered_events"] == 120
        assert len(hook.records()) == 120, "nothing delivered while paused"

        assert client.post(f"/api/streams/{stream_id}/resume").json()["status"] == "active"
        done = caught_up(client, stream_id, 30)
        assert done["delivered_events"] == 420
        got = Counter(r["uuid"] for r in hook.records())
        assert got == Counter(e["uuid"] for e in before + during)
        order = [r["properties"]["batch"] for r in hook.records()]
        assert order == sorted(order)
    finally:
        client.delete(f"/api/streams/{stream_id}")
        hook.close()


# ---------------------------------------------------------------- 5. privacy


def test_privacy_policy_applies_to_what_streams_deliver(svc):
    hook = Receiver()
    users = lambda i: "user-suppressed" if i % 5 == 0 else f"user-{i % 4}"  # noqa: E731
    with svc.client(svc.keys["private"]) as c:
        policy = c.put("/api/projects/private/privacy", json={"deny_properties": ["email"],
                                                               "pseudonymize_distinct_id": True})
        assert policy.status_code == 200, policy.text
        assert c.post("/api/projects/private/suppressions",
                      json={"distinct_ids": ["user-suppressed"]}).json()["added"] == 1
        stream_id = create_stream(c, {"type": "webhook", "url": hook.url()})["stream"]["id"]
        try:
            events = [e for b in range(4) for e in make_events(b, 50, "private", users)]
            for e in events:
                e["properties"]["email"] = f"{e['distinct_id']}@example.com"
            post_events(svc.url, svc.keys["private"], events)
            done = caught_up(c, stream_id, 30)
            kept = [e for e in events if e["distinct_id"] != "user-suppressed"]
            assert done["delivered_events"] == len(kept) == 160
            got = hook.records()
            assert Counter(r["uuid"] for r in got) == Counter(e["uuid"] for e in kept), "suppressed user left out"
            by_uuid = {e["uuid"]: e for e in kept}
            pseudonyms: dict[str, set[str]] = {}
            for r in got:
                sent = by_uuid[r["uuid"]]
                assert "email" not in r["properties"]
                assert r["properties"] == {k: v for k, v in sent["properties"].items() if k != "email"}
                assert HEX64.fullmatch(r["distinct_id"]), r["distinct_id"]
                pseudonyms.setdefault(sent["distinct_id"], set()).add(r["distinct_id"])
            assert all(len(p) == 1 for p in pseudonyms.values()), "one pseudonym per user"
            assert len({next(iter(p)) for p in pseudonyms.values()}) == len(pseudonyms) == 4
            assert "@example.com" not in json.dumps(got)
        finally:
            c.delete(f"/api/streams/{stream_id}")
            c.delete("/api/projects/private/privacy")
            hook.close()


def test_a_user_suppressed_while_a_stream_runs_is_left_out_from_then_on(svc):
    hook = Receiver()
    with svc.client(svc.keys["private"]) as c:
        stream_id = create_stream(c, {"type": "webhook", "url": hook.url()}, events=["stream_later"])["stream"]["id"]
        try:
            first = make_events(0, 40, "later", lambda i: f"late-{i % 2}")
            post_events(svc.url, svc.keys["private"], first)
            wait_until(lambda: view(c, stream_id)["delivered_events"] == 40, 30, "first events delivered")
            assert c.post("/api/projects/private/suppressions", json={"distinct_ids": ["late-0"]}).status_code == 200
            second = make_events(1, 40, "later", lambda i: f"late-{i % 2}")
            post_events(svc.url, svc.keys["private"], second)
            caught_up(c, stream_id, 30)
            time.sleep(BATCH_SECONDS + 0.5)
            leaked = [r["uuid"] for r in hook.records() if r["distinct_id"] == "late-0"
                      and r["properties"]["batch"] == 1]
            assert not leaked, f"{len(leaked)} events of a suppressed user streamed after the suppression"
            assert len(hook.records()) == 60
        finally:
            c.delete(f"/api/streams/{stream_id}")
            hook.close()


# ---------------------------------------------------------------- the event store's lock


def test_lag_read_and_ingest_in_one_process_wait_for_each_other(tmp_path, monkeypatch):
    """What the API process does at once: open the event store read-only for a stream's lag, and
    read-write for an ingest. DuckDB refuses the second open while the first is attaching the file,
    with the error below (seen as 503s from both routes while a stream runs); it must be waited out
    like another process's lock, not fail."""
    import duckdb

    from analytics_export import Settings, open_store
    from analytics_export.sources import duckdb as source

    settings = Settings(data_dir=tmp_path)
    open_store(settings, read_only=False).close()
    real, calls = duckdb.connect, []

    def racing(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("read_only"))
        if len(calls) == 1:
            raise duckdb.ResourceInUseException(
                f'Resource In Use Error: Unique file handle conflict: Cannot attach "events" - the database file '
                f'"{settings.events_path}" is already attached by database "events"')
        return real(*args, **kwargs)

    monkeypatch.setattr(source.duckdb, "connect", racing)
    for read_only in (True, False):
        calls.clear()
        open_store(settings, read_only=read_only).close()
        assert calls == [read_only, read_only]


def test_lag_before_any_event_is_zero_and_makes_no_store(tmp_path):
    """GET /api/streams/{id} on a server without events yet: reading the lag must not create the
    event store (that raced the first ingest creating it, and the GET answered 500)."""
    from analytics_export import Settings
    from analytics_export.runtime.lag import lag
    from analytics_export.store.jobs import JobStore
    from analytics_export.store.streams import StreamStore
    from analytics_export.streaming.spec import StreamSpec

    settings = Settings(data_dir=tmp_path)
    jobs = JobStore.for_data_dir(tmp_path)
    jobs.migrate()
    stream = StreamStore(jobs).create("default", StreamSpec(name="s", destination={
        "type": "webhook", "url": "http://127.0.0.1:9/"}))
    assert lag(settings, jobs, stream) == (0, 0.0)
    assert not settings.events_path.exists()


def test_stream_webhooks_post_to_the_address_the_guard_checked(tmp_path, monkeypatch, receiver):
    """DNS rebinding: a name that resolves to an allowed address when the guard checks it, then to a
    private one, must not steer the batch there (the sink posted by name after checking: the second
    answer won); a later batch checks the name again and refuses the private answer."""
    import socket

    from analytics_export.errors import Invalid
    from analytics_export.streaming.sinks import Delivery, sink_for
    from analytics_export.streaming.spec import StreamSpec

    inside = Receiver(host="127.0.0.2", port=receiver.server.server_port)  # stands for a private host
    real, answers = socket.getaddrinfo, iter(["127.0.0.1"])

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.example":
            return real(next(answers, "127.0.0.2"), *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    spec = StreamSpec(name="rebind", destination={
        "type": "webhook", "url": f"http://rebind.example:{receiver.server.server_port}/rebind"})
    sink = sink_for(spec, "p", Settings(data_dir=tmp_path, destination_allow=["127.0.0.1"]), {})
    try:
        sink.send(Delivery(name="b1", body=b'{"n":1}\n', messages=[], content_type="application/x-ndjson"))
        with pytest.raises(Invalid, match="127.0.0.2"):
            sink.send(Delivery(name="b2", body=b'{"n":2}\n', messages=[], content_type="application/x-ndjson"))
    finally:
        sink.close()
        inside.close()
    assert inside.taken == []
    (_, headers, body), = [t for t in receiver.taken if t[2] == b'{"n":1}\n']
    assert headers["Host"] == f"rebind.example:{receiver.server.server_port}"
