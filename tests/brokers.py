"""NATS JetStream and RabbitMQ on 127.0.0.1 for the tests, and independent clients that read them back.

`nats_url` uses the machine's NATS if JetStream is on there, else starts a nats-server of its own;
`rabbitmq_url` uses the machine's RabbitMQ, starting it if it is down. Both skip when neither a server
nor its program is there (scripts/bootstrap --dev installs them; under CI=true a skip fails the run). `Jet` and `Queue` are a unique subject/stream and queue, read with
nats-py and aiormq (not the code under test) and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiormq
import nats
import nats.js.errors
import pytest

from servers import HOST, free_port

NATS_BIN = shutil.which("nats-server") or "/usr/sbin/nats-server"  # Debian's; /usr/sbin is not on every PATH
RABBITMQ_BIN = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"


def listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


async def quiet(exc: Exception) -> None:
    """nats-py's error callback, silenced: jetstream_on tells the fixture what it needs to know."""


def jetstream_on(url: str) -> bool:
    """Whether a NATS server answers at `url` with JetStream enabled."""
    async def check() -> bool:
        try:
            nc = await asyncio.wait_for(nats.connect(url, allow_reconnect=False, connect_timeout=2, error_cb=quiet), 5)
        except Exception:
            return False
        try:
            await nc.jetstream(timeout=2).account_info()
            return True
        except Exception:
            return False
        finally:
            await nc.close()
    return asyncio.run(check())


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """The machine's NATS (127.0.0.1:4222) if JetStream is on there, else a nats-server of the tests' own."""
    if listening(4222) and jetstream_on(f"nats://{HOST}:4222"):
        yield f"nats://{HOST}:4222"
        return
    if not Path(NATS_BIN).exists():
        pytest.skip(f"no NATS server on {HOST}:4222 and no {NATS_BIN} to start one")
    store = Path(tempfile.mkdtemp(prefix="nats-"))
    port = free_port()
    with open(store / "server.log", "wb") as log:
        proc = subprocess.Popen([NATS_BIN, "-a", HOST, "-p", str(port), "-js", "-sd", str(store)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        if not wait_port(port, 20, proc):
            raise RuntimeError((store / "server.log").read_text()[-2000:])
        yield f"nats://{HOST}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The machine's RabbitMQ (127.0.0.1:5672, guest/guest); started as the machine starts it if down
    (`rabbitmq-server -detached`, left running as the machine's service)."""
    if not listening(5672):
        if not Path(RABBITMQ_BIN).exists():
            pytest.skip(f"no RabbitMQ on {HOST}:5672 and no {RABBITMQ_BIN} to start one")
        subprocess.run([RABBITMQ_BIN, "-detached"], check=False, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        if not wait_port(5672, 90):
            pytest.fail("rabbitmq-server -detached did not listen on 127.0.0.1:5672 within 90 s")
    return f"amqp://{HOST}:5672/"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Jet:
    """A unique subject and stream name; the stream is deleted afterwards."""

    def __init__(self, url: str) -> None:
        token = uuid.uuid4().hex[:12]
        self.url = url
        self.subject = f"test.sink.{token}"
        self.stream = f"TEST_SINK_{token}"

    async def _js(self) -> tuple[Any, Any]:
        nc = await nats.connect(self.url, allow_reconnect=False, connect_timeout=5)
        return nc, nc.jetstream(timeout=10)

    def info(self) -> Any:
        async def get() -> Any:
            nc, js = await self._js()
            try:
                return await js.stream_info(self.stream)
            finally:
                await nc.close()
        return run(get())

    def read(self) -> list[Any]:
        """Every message the stream holds for the subject, in order, with an ephemeral pull consumer."""
        async def get() -> list[Any]:
            nc, js = await self._js()
            try:
                count = (await js.stream_info(self.stream)).state.messages
                sub = await js.pull_subscribe(self.subject, stream=self.stream)
                out: list[Any] = []
                while len(out) < count:
                    batch = await sub.fetch(min(1000, count - len(out)), timeout=10)
                    out += batch
                    for msg in batch:
                        await msg.ack()
                await sub.unsubscribe()
                return out
            finally:
                await nc.close()
        return run(get())

    def add_stream(self, **config: Any) -> None:
        async def add() -> None:
            nc, js = await self._js()
            try:
                await js.add_stream(name=self.stream, subjects=[self.subject], **config)
            finally:
                await nc.close()
        run(add())

    def delete(self) -> None:
        async def delete() -> None:
            nc, js = await self._js()
            try:
                await js.delete_stream(self.stream)
            except nats.js.errors.NotFoundError:
                pass
            finally:
                await nc.close()
        run(delete())


@pytest.fixture
def jet(nats_url: str) -> Iterator[Jet]:
    jet = Jet(nats_url)
    yield jet
    jet.delete()


class Queue:
    """A unique queue name; the queue (and an exchange, if one is made) is deleted afterwards."""

    def __init__(self, url: str) -> None:
        token = uuid.uuid4().hex[:12]
        self.url = url
        self.name = f"test.sink.{token}"
        self.exchange = f"test.sink.x.{token}"

    async def _channel(self) -> tuple[Any, Any]:
        connection = aiormq.Connection(self.url.replace("amqp://", "amqp://guest:guest@"))
        await asyncio.wait_for(connection.connect(), 10)
        return connection, await connection.channel()

    def consume(self, count: int) -> list[Any]:
        """Exactly the queue's messages (acknowledged, so removed); fails if there are not `count`, or more."""
        async def get() -> list[Any]:
            connection, channel = await self._channel()
            try:
                out: list[Any] = []
                done = asyncio.Event()

                async def on_message(message: Any) -> None:
                    out.append(message)
                    if len(out) >= count:
                        done.set()

                await channel.basic_qos(prefetch_count=1000)
                ok = await channel.basic_consume(self.name, on_message, no_ack=True)
                if count:
                    await asyncio.wait_for(done.wait(), 30)
                await asyncio.sleep(0.3)  # anything beyond `count` would arrive meanwhile
                await channel.basic_cancel(ok.consumer_tag)
                return out
            finally:
                await connection.close()
        messages = run(get())
        assert len(messages) == count
        return messages

    def declare(self, **arguments: Any) -> None:
        async def declare() -> None:
            connection, channel = await self._channel()
            try:
                await channel.queue_declare(self.name, durable=True, arguments=arguments or None)
            finally:
                await connection.close()
        run(declare())

    def declare_exchange(self) -> None:
        async def declare() -> None:
            connection, channel = await self._channel()
            try:
                await channel.exchange_declare(self.exchange, exchange_type="direct", durable=False, auto_delete=False)
            finally:
                await connection.close()
        run(declare())

    def delete(self) -> None:
        async def delete() -> None:
            connection, channel = await self._channel()
            try:
                await channel.queue_delete(self.name)
                await channel.exchange_delete(self.exchange)
            finally:
                await connection.close()
        run(delete())

    def listed(self) -> tuple[str, str] | None:
        """(durable, messages) as rabbitmqctl lists the queue, or None without rabbitmqctl."""
        if shutil.which("rabbitmqctl") is None:
            return None
        out = subprocess.run(["rabbitmqctl", "list_queues", "--quiet", "--no-table-headers", "name", "durable",
                              "messages"], capture_output=True, text=True, timeout=60, check=True).stdout
        rows = {line.split("\t")[0]: tuple(line.split("\t")[1:3]) for line in out.splitlines() if "\t" in line}
        return rows.get(self.name)  # type: ignore[return-value]


@pytest.fixture
def queue(rabbitmq_url: str) -> Iterator[Queue]:
    queue = Queue(rabbitmq_url)
    yield queue
    queue.delete()
