"""The NATS JetStream and RabbitMQ stream sinks against real servers on 127.0.0.1.

What a sink sent is read back independently: the JetStream stream through its own consumer API
(nats-py), the RabbitMQ queue by consuming it (aiormq) and through `rabbitmqctl`. Every test uses
its own subject, stream and queue, and removes them. Outages are made with a TCP proxy between the
sink and the server: stopped (nothing listens), cut (connections closed) or frozen (nothing passes).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StorageType

from analytics_export.config import Settings
from analytics_export.errors import ExportError, Invalid, Rejected, Upload
from analytics_export.streaming.sinks import Delivery, sink_for
from analytics_export.streaming.sinks import nats as nats_sink
from analytics_export.streaming.sinks import rabbitmq as rabbitmq_sink
from analytics_export.streaming.spec import StreamSpec
from brokers import Jet, Queue
from servers import HOST, free_port

SEND_BOUND = 12.0  # seconds a send to an unreachable or stalled server may take before raising
THROUGHPUT_EVENTS = 20_000
SECRET = "s3cret-Pa55word"


# ---------------------------------------------------------------- servers


class Proxy:
    """A TCP proxy on 127.0.0.1:`port` to `target`. `stop` closes the listener and every connection
    (the port then refuses), `start` listens again on the same port, `freeze` keeps the connections
    open but stops passing bytes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.frozen = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None

    def start(self) -> None:
        self.frozen.clear()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def freeze(self) -> None:
        self.frozen.set()

    def stop(self) -> None:
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.frozen.clear()


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[int], Proxy]]:
    proxies: list[Proxy] = []

    def make(target_port: int) -> Proxy:
        proxy = Proxy(target_port)
        proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


class SilentServer:
    """Accepts connections and never says anything (a hung server)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind((HOST, 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for s in self.accepted:
            s.close()


# ---------------------------------------------------------------- deliveries and sinks


def events(n: int, tag: str = "") -> list[tuple[str, bytes]]:
    return [(str(uuid.uuid4()), json.dumps({"event": "page_view", "distinct_id": f"user-{i % 97}",
                                            "properties": {"i": i, "tag": tag, "text": "héllo ✓"}},
                                           ensure_ascii=False, separators=(",", ":")).encode())
            for i in range(n)]


def delivery(messages: list[tuple[str, bytes]], name: str = "0000000000000001-0000000000000500") -> Delivery:
    return Delivery(name=name, body=b"\n".join(body for _, body in messages) + b"\n", messages=messages,
                    content_type="application/x-ndjson")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def sinks() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for sink in made:
        sink.close()


def timed_failure(send: Callable[[], None]) -> tuple[ExportError, float]:
    started = time.monotonic()
    with pytest.raises(ExportError) as info:
        send()
    return info.value, time.monotonic() - started


def nats_sink_for(jet: Jet, settings: Settings, sinks: list[Any], message: str = "event", url: str | None = None,
                  secrets: dict[str, str] | None = None, stream: bool = True) -> Any:
    destination = {"type": "nats", "url": url or jet.url, "subject": jet.subject}
    if stream:
        destination["stream"] = jet.stream
    spec = StreamSpec(name="t", destination=destination, message=message)
    sink = sink_for(spec, "default", settings, secrets or {})
    sinks.append(sink)
    return sink


def test_nats_every_event_once_with_its_id(jet: Jet, settings: Settings, sinks: list[Any]) -> None:
    sent = events(500)
    nats_sink_for(jet, settings, sinks).send(delivery(sent))

    info = jet.info()
    assert info.config.subjects == [jet.subject]
    assert info.config.storage == StorageType.FILE
    assert info.config.duplicate_window >= 120
    assert info.state.messages == 500
    got = jet.read()
    assert [(m.headers["Nats-Msg-Id"], m.data) for m in got] == sent
    assert {m.headers["Content-Type"] for m in got} == {"application/json"}
    assert {m.subject for m in got} == {jet.subject}


def test_nats_same_delivery_twice_is_stored_once(jet: Jet, settings: Settings, sinks: list[Any]) -> None:
    sent = events(300)
    sink = nats_sink_for(jet, settings, sinks)
    sink.send(delivery(sent))
    sink.send(delivery(sent))  # a retried batch
    more = events(5, "next")
    sink.send(delivery(sent[-2:] + more))  # overlapping the previous batch
    got = jet.read()
    assert [(m.headers["Nats-Msg-Id"], m.data) for m in got] == sent + more


def test_nats_batch_mode(jet: Jet, settings: Settings, sinks: list[Any]) -> None:
    sink = nats_sink_for(jet, settings, sinks, message="batch")
    first = Delivery(name="0000000000000001-0000000000000003", body=b'{"a":1}\n{"a":2}\n{"a":3}\n',
                     messages=events(3), content_type="application/x-ndjson")
    second = Delivery(name="0000000000000004-0000000000000004", body=b"\x1f\x8b compressed",
                      messages=events(1), content_type="application/x-ndjson", content_encoding="gzip")
    sink.send(first)
    sink.send(first)
    sink.send(second)
    got = jet.read()
    assert [m.data for m in got] == [first.body, second.body]
    assert [dict(m.headers) for m in got] == [
        {"Nats-Msg-Id": first.name, "Content-Type": "application/x-ndjson", "Nats-Expected-Stream": jet.stream},
        {"Nats-Msg-Id": second.name, "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip",
         "Nats-Expected-Stream": jet.stream},
    ]


def test_nats_existing_stream_and_no_stream(jet: Jet, settings: Settings, sinks: list[Any]) -> None:
    jet.add_stream(max_msgs=1000)  # made by someone else: used as it is
    sent = events(10)
    nats_sink_for(jet, settings, sinks).send(delivery(sent))
    assert jet.info().config.max_msgs == 1000
    assert [m.data for m in jet.read()] == [body for _, body in sent]

    orphan = Jet(jet.url)  # a subject no stream takes, and no `stream` to create
    error, took = timed_failure(lambda: nats_sink_for(orphan, settings, sinks, stream=False).send(delivery(sent)))
    assert isinstance(error, Upload) and "no JetStream stream takes the subject" in str(error)
    assert took < SEND_BOUND


def test_nats_unreachable_server_fails_within_bound(nats_url: str, settings: Settings, sinks: list[Any]) -> None:
    jet = Jet(f"nats://{HOST}:{free_port()}")  # nothing listens there
    sink = nats_sink_for(jet, settings, sinks, secrets={"user": "exporter", "password": SECRET})
    for _ in range(2):  # and again on the next send: no reconnect loop left behind
        error, took = timed_failure(lambda: sink.send(delivery(events(50))))
        assert isinstance(error, Upload), error
        assert took < SEND_BOUND
        assert "cannot connect" in str(error) and SECRET not in str(error)


def test_nats_hung_server_fails_within_bound(nats_url: str, settings: Settings, sinks: list[Any]) -> None:
    silent = SilentServer()
    try:
        sink = nats_sink_for(Jet(f"nats://{HOST}:{silent.port}"), settings, sinks, secrets={"token": SECRET})
        error, took = timed_failure(lambda: sink.send(delivery(events(5))))
    finally:
        silent.close()
    assert isinstance(error, Upload), error
    assert took < SEND_BOUND and SECRET not in str(error)


def test_nats_outage_then_recovery(jet: Jet, settings: Settings, sinks: list[Any],
                                   proxy_factory: Callable[[int], Proxy]) -> None:
    proxy = proxy_factory(int(jet.url.rsplit(":", 1)[1]))
    sink = nats_sink_for(jet, settings, sinks, url=f"nats://{HOST}:{proxy.port}")
    first, second, third = events(100, "1"), events(100, "2"), events(100, "3")
    sink.send(delivery(first))

    proxy.stop()  # the server goes away: connections cut, port refuses
    error, took = timed_failure(lambda: sink.send(delivery(second)))
    assert isinstance(error, Upload) and took < SEND_BOUND

    proxy.start()  # back: the next send connects again
    sink.send(delivery(second))

    proxy.freeze()  # connected, but nothing answers: no PubAck
    error, took = timed_failure(lambda: sink.send(delivery(third)))
    assert isinstance(error, Upload) and "PubAck" in str(error) and took < SEND_BOUND
    proxy.stop()
    proxy.start()
    sink.send(delivery(third))  # possibly a duplicate of what the frozen send got through: dropped by id

    got = jet.read()
    assert [(m.headers["Nats-Msg-Id"], m.data) for m in got] == first + second + third


def test_nats_bad_connection_secrets(jet: Jet, settings: Settings) -> None:
    spec = StreamSpec(name="t", destination={"type": "nats", "subject": jet.subject, "connection": "c"})
    with pytest.raises(Invalid):
        sink_for(spec, "default", settings, {"user": "only-a-user"})
    with pytest.raises(Invalid):
        sink_for(spec, "default", settings, {})


def test_nats_throughput(jet: Jet, settings: Settings, sinks: list[Any]) -> None:
    sink = nats_sink_for(jet, settings, sinks)
    sink.send(delivery(events(10, "warm-up")))
    sent = events(THROUGHPUT_EVENTS)
    started = time.perf_counter()
    sink.send(delivery(sent))
    rate = THROUGHPUT_EVENTS / (time.perf_counter() - started)
    print(f"\nNATS JetStream sink: {rate:,.0f} messages/s ({THROUGHPUT_EVENTS:,} events, PubAck for each)")
    assert jet.info().state.messages == THROUGHPUT_EVENTS + 10
    got = jet.read()[10:]
    assert [m.headers["Nats-Msg-Id"] for m in got] == [u for u, _ in sent]


# ---------------------------------------------------------------- RabbitMQ


def rabbit_sink_for(queue: Queue, settings: Settings, sinks: list[Any], message: str = "event",
                    url: str | None = None, secrets: dict[str, str] | None = None, exchange: str = "",
                    connection: str | None = None) -> Any:
    destination = {"type": "rabbitmq", "url": url or queue.url, "queue": queue.name, "exchange": exchange,
                   "connection": connection}
    spec = StreamSpec(name="t", destination=destination, message=message)
    sink = sink_for(spec, "default", settings, secrets or {})
    sinks.append(sink)
    return sink


def message_tuples(messages: list[Any]) -> list[tuple[str, bytes]]:
    return [(m.header.properties.message_id, m.body) for m in messages]


def test_rabbitmq_every_event_once_with_its_id(queue: Queue, settings: Settings, sinks: list[Any]) -> None:
    sent = events(500)
    rabbit_sink_for(queue, settings, sinks).send(delivery(sent))
    if (listed := queue.listed()) is not None:
        assert listed == ("true", "500")
    got = queue.consume(500)
    assert message_tuples(got) == sent
    assert {(m.header.properties.content_type, m.header.properties.delivery_mode) for m in got} == {
        ("application/json", 2)}


def test_rabbitmq_batch_mode(queue: Queue, settings: Settings, sinks: list[Any]) -> None:
    sink = rabbit_sink_for(queue, settings, sinks, message="batch")
    first = delivery(events(3))
    second = Delivery(name="0000000000000004-0000000000000004", body=b"\x28\xb5\x2f\xfd zstd",
                      messages=events(1), content_type="application/vnd.apache.parquet", content_encoding="zstd")
    sink.send(first)
    sink.send(second)
    got = queue.consume(2)
    assert [(m.header.properties.message_id, m.header.properties.content_type,
             m.header.properties.content_encoding, m.header.properties.delivery_mode, m.body) for m in got] == [
        (first.name, "application/x-ndjson", None, 2, first.body),
        (second.name, "application/vnd.apache.parquet", "zstd", 2, second.body),
    ]


def test_rabbitmq_through_an_exchange(queue: Queue, settings: Settings, sinks: list[Any]) -> None:
    queue.declare_exchange()
    sent = events(20)
    rabbit_sink_for(queue, settings, sinks, exchange=queue.exchange).send(delivery(sent))
    assert message_tuples(queue.consume(20)) == sent

    error, _ = timed_failure(lambda: rabbit_sink_for(queue, settings, sinks, exchange="no.such.exchange.here")
                             .send(delivery(sent)))
    assert isinstance(error, Rejected) and "does not exist" in str(error)


def test_rabbitmq_nack_raises_upload(queue: Queue, settings: Settings, sinks: list[Any]) -> None:
    queue.declare(**{"x-max-length": 10, "x-overflow": "reject-publish"})  # the broker nacks past 10
    sink = rabbit_sink_for(queue, settings, sinks)
    error, took = timed_failure(lambda: sink.send(delivery(events(30))))
    assert isinstance(error, Upload) and "nack" in str(error) and took < SEND_BOUND
    assert len(queue.consume(10)) == 10
    sent = events(5)
    sink.send(delivery(sent))  # room again: the next send connects again and goes through
    assert message_tuples(queue.consume(5)) == sent


def test_rabbitmq_returned_message_raises_upload(queue: Queue, settings: Settings, sinks: list[Any]) -> None:
    sink = rabbit_sink_for(queue, settings, sinks)
    sink.send(delivery(events(3)))
    queue.consume(3)
    queue.delete()  # the sink's connection still believes the queue exists
    error, took = timed_failure(lambda: sink.send(delivery(events(5))))
    assert isinstance(error, Upload) and "routed a message to no queue" in str(error) and took < SEND_BOUND
    sent = events(4)
    sink.send(delivery(sent))  # reconnects and declares the queue again
    assert message_tuples(queue.consume(4)) == sent


def test_rabbitmq_unreachable_server_fails_within_bound(rabbitmq_url: str, settings: Settings,
                                                       sinks: list[Any]) -> None:
    queue = Queue(f"amqp://{HOST}:{free_port()}/")  # nothing listens there
    sink = rabbit_sink_for(queue, settings, sinks, secrets={"username": "exporter", "password": SECRET},
                           connection="c")
    for _ in range(2):
        error, took = timed_failure(lambda: sink.send(delivery(events(50))))
        assert isinstance(error, Upload), error
        assert took < SEND_BOUND
        assert "cannot connect" in str(error) and SECRET not in str(error)


def test_rabbitmq_hung_server_fails_within_bound(rabbitmq_url: str, settings: Settings, sinks: list[Any]) -> None:
    silent = SilentServer()
    try:
        sink = rabbit_sink_for(Queue(f"amqp://{HOST}:{silent.port}/"), settings, sinks,
                               secrets={"username": "exporter", "password": SECRET}, connection="c")
        error, took = timed_failure(lambda: sink.send(delivery(events(5))))
    finally:
        silent.close()
    assert isinstance(error, Upload), error
    assert took < SEND_BOUND and SECRET not in str(error)


def test_rabbitmq_wrong_password_is_rejected(queue: Queue, settings: Settings, sinks: list[Any]) -> None:
    sink = rabbit_sink_for(queue, settings, sinks, secrets={"username": "guest", "password": SECRET},
                           connection="c")
    error, took = timed_failure(lambda: sink.send(delivery(events(5))))
    assert isinstance(error, Rejected), error
    assert "refused the login" in str(error) and SECRET not in str(error) and took < SEND_BOUND
    spec = StreamSpec(name="t", destination={"type": "rabbitmq", "queue": queue.name, "connection": "c"})
    with pytest.raises(Invalid):
        sink_for(spec, "default", settings, {"username": "guest"})


def test_rabbitmq_outage_then_recovery(queue: Queue, settings: Settings, sinks: list[Any],
                                       proxy_factory: Callable[[int], Proxy]) -> None:
    proxy = proxy_factory(int(queue.url.rsplit(":", 1)[1].strip("/")))
    sink = rabbit_sink_for(queue, settings, sinks, url=f"amqp://{HOST}:{proxy.port}/")
    first, second, third = events(100, "1"), events(100, "2"), events(100, "3")
    sink.send(delivery(first))

    proxy.stop()
    error, took = timed_failure(lambda: sink.send(delivery(second)))
    assert isinstance(error, Upload) and took < SEND_BOUND

    proxy.start()
    sink.send(delivery(second))
    assert message_tuples(queue.consume(200)) == first + second

    proxy.freeze()  # connected, but nothing answers: no confirm
    error, took = timed_failure(lambda: sink.send(delivery(third)))
    assert isinstance(error, Upload) and "confirm" in str(error) and took < SEND_BOUND
    proxy.stop()
    proxy.start()
    sink.send(delivery(third))
    got = message_tuples(queue.consume(len(third)))
    assert got == third


def test_rabbitmq_unbatched_fallback(queue: Queue, settings: Settings, sinks: list[Any],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a later aiormq lacks what batched publishing uses, each message goes by basic_publish."""
    monkeypatch.setattr(rabbitmq_sink, "_CHANNEL_INTERNALS", ("no_such_attribute",))
    sent = events(600)
    rabbit_sink_for(queue, settings, sinks).send(delivery(sent))
    assert message_tuples(queue.consume(600)) == sent


def test_rabbitmq_throughput(queue: Queue, settings: Settings, sinks: list[Any]) -> None:
    sink = rabbit_sink_for(queue, settings, sinks)
    sink.send(delivery(events(10, "warm-up")))
    sent = events(THROUGHPUT_EVENTS)
    started = time.perf_counter()
    sink.send(delivery(sent))
    rate = THROUGHPUT_EVENTS / (time.perf_counter() - started)
    print(f"\nRabbitMQ sink: {rate:,.0f} messages/s ({THROUGHPUT_EVENTS:,} persistent events, confirm for each)")
    got = queue.consume(THROUGHPUT_EVENTS + 10)[10:]
    assert [m.header.properties.message_id for m in got] == [u for u, _ in sent]


def test_sink_modules_expose_build() -> None:
    assert callable(nats_sink.build) and callable(rabbitmq_sink.build)
