"""RabbitMQ with publisher confirms (aiormq, the AMQP 0-9-1 client under aio-pika): persistent
messages whose `message_id` is the event's uuid, or the batch's name, to a durable queue (declared if
missing) through the default exchange, or through `exchange` with the queue's name as routing key
(the queue is bound to it so).

aiormq is asynchronous; the sink runs one event loop in its own thread and `send` calls into it.
aiormq's own `basic_publish` costs a task, a lock round and a socket write per message (about 5,000
messages a second here), so the sink writes the frames of CHUNK messages at once, registering each
message's confirm the way `basic_publish` does; when a later aiormq lacks what that needs, it falls
back to `basic_publish`. At most MAX_IN_FLIGHT messages are unconfirmed; a nack, a returned
(unroutable) message, a closed channel or connection, or no confirm for ACK_TIMEOUT seconds fails the
send. The connection does not reconnect by itself: after a failure it is dropped and the next send
connects again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiormq
import aiormq.exceptions as amqp
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from ...destinations import redact
from ...errors import ExportError, Invalid, Rejected, Upload
from . import Delivery
from .acks import AckWindow
from .loop import LoopSink

if TYPE_CHECKING:
    from ...config import Settings
    from ...destinations.specs import RabbitMQDestination
    from ..spec import StreamSpec

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
"""Seconds to open the connection, and for each of the channel's requests (open, declare, bind)."""
ACK_TIMEOUT = 10.0
"""A send fails when no confirm (nor nack nor return) has come for this many seconds."""
MAX_IN_FLIGHT = 4096
"""Messages published and not yet confirmed, at most (aiormq scans the unconfirmed on every
multiple-ack, so the window stays modest)."""
CHUNK = 256
"""Messages whose frames go to the socket in one write."""
PERSISTENT = 2

_CHANNEL_INTERNALS = ("lock", "delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue",
                      "number", "create_future", "_split_body")
"""What batched publishing uses of aiormq's Channel (as of aiormq 7.2)."""


class RabbitMQSink(LoopSink):
    connect_timeout = CONNECT_TIMEOUT
    client_errors = (OSError, RuntimeError, amqp.AMQPError, asyncio.TimeoutError)

    def __init__(self, spec: StreamSpec, secrets: dict[str, str]) -> None:
        self.spec = spec
        self.destination: RabbitMQDestination = spec.destination  # type: ignore[assignment]
        self.secrets = secrets
        self.username, self.password = _credentials(self.destination, secrets)
        self.connection: aiormq.Connection | None = None
        self.channel: Any = None
        super().__init__("rabbitmq-sink")

    @property
    def where(self) -> str:
        return f"RabbitMQ {self.destination.url} queue {self.destination.queue!r}"

    def send(self, delivery: Delivery) -> None:
        if self.spec.message == "event":
            messages = [(body, Basic.Properties(delivery_mode=PERSISTENT, message_id=uuid,
                                                content_type="application/json"))
                        for uuid, body in delivery.messages]
        else:
            messages = [(delivery.body, Basic.Properties(delivery_mode=PERSISTENT, message_id=delivery.name,
                                                         content_type=delivery.content_type,
                                                         content_encoding=delivery.content_encoding))]
        if messages:
            # The coroutine bounds itself (connect, then ACK_TIMEOUT without progress); this outer
            # bound only catches a hang inside the client, allowing 1,000 messages a second.
            with self.sending:
                self.call(self._send(messages), CONNECT_TIMEOUT * 5 + ACK_TIMEOUT + len(messages) / 1000)

    def _reason(self, exc: BaseException | str) -> str:
        text = str(exc) or type(exc).__name__
        text = re.sub(r"(amqps?://)[^@\s/]*@", r"\1***@", text)
        quoted = {f"quoted_{k}": quote(v, safe="") for k, v in self.secrets.items()}
        return redact(text, {**self.secrets, **quoted})

    async def _probe(self) -> str:
        await self._connected()  # declares the queue (durable) when missing, as a first send would
        bound = f", bound to exchange {self.destination.exchange!r}" if self.destination.exchange else ""
        return f"connected; queue {self.destination.queue!r} declared{bound}"

    async def _send(self, messages: list[tuple[bytes, Basic.Properties]]) -> None:
        channel = await self._connected()
        window = AckWindow(MAX_IN_FLIGHT)
        futures: list[asyncio.Future[Any]] = []
        try:
            for start in range(0, len(messages), CHUNK):
                chunk = messages[start:start + CHUNK]
                if not await window.room(len(chunk), ACK_TIMEOUT):
                    raise Upload(f"{self.where}: no publisher confirm for {ACK_TIMEOUT:.0f} s; check that the "
                                 "server is up and not blocking publishers (memory or disk alarm)")
                if window.failed:
                    break
                published = await self._publish(channel, chunk)
                for future in published:
                    window.add(future)
                futures += published
            await self._confirmed(futures)
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    async def _publish(self, channel: Any, chunk: list[tuple[bytes, Basic.Properties]]) -> list[asyncio.Future[Any]]:
        """Publish `chunk`: one socket write of all its frames, or aiormq's basic_publish each."""
        exchange, queue = self.destination.exchange, self.destination.queue
        if not all(hasattr(channel, name) for name in _CHANNEL_INTERNALS):
            return [asyncio.ensure_future(channel.basic_publish(body, exchange=exchange, routing_key=queue,
                                                                properties=properties, mandatory=True, wait=False))
                    for body, properties in chunk]
        ids = channel.message_id_delivery_tag
        frames: list[Any] = []
        futures: list[asyncio.Future[Any]] = []
        async with channel.lock:
            for body, properties in chunk:
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                future = channel.create_future()  # failed by aiormq when the channel or connection closes
                channel.confirmations[tag] = future
                ids[properties.message_id] = tag  # a Basic.Return finds the message's confirm by its id
                future.add_done_callback(lambda _, m=properties.message_id, t=tag: ids.pop(m, None)
                                         if ids.get(m) == t else None)
                frames.append(Basic.Publish(exchange=exchange, routing_key=queue, mandatory=True))
                frames.append(ContentHeader(properties=properties, body_size=len(body)))
                frames += channel._split_body(body)
                futures.append(future)
            # Were this cancelled, the delivery tags would no longer match the broker's: any failure
            # of a send drops the connection.
            try:
                async with asyncio.timeout(ACK_TIMEOUT):  # the writer is stuck when the server reads nothing
                    await channel.write_queue.put(ChannelFrame.marshall(channel_number=channel.number, frames=frames))
            except TimeoutError:
                raise Upload(f"{self.where}: the server took nothing for {ACK_TIMEOUT:.0f} s; check that it is up "
                             "and not blocking publishers (memory or disk alarm)") from None
        return futures

    async def _confirmed(self, futures: list[asyncio.Future[Any]]) -> None:
        """Wait for every confirm; raise on the first failure, or when none comes for ACK_TIMEOUT seconds."""
        pending: set[asyncio.Future[Any]] = set(futures)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=ACK_TIMEOUT, return_when=asyncio.FIRST_EXCEPTION)
            for future in done:
                if future.cancelled():
                    raise Upload(f"{self.where}: the connection was lost before every publisher confirm arrived")
                exc = future.exception()
                if exc is not None:
                    raise self._publish_error(exc)
            if pending and not done:
                raise Upload(f"{self.where}: no publisher confirm for {len(pending)} of {len(futures)} messages "
                             f"within {ACK_TIMEOUT:.0f} s; check that the server is up and not blocking "
                             "publishers (memory or disk alarm)")

    def _publish_error(self, exc: BaseException) -> ExportError:
        if isinstance(exc, amqp.PublishError):
            target = f"exchange {self.destination.exchange!r}" if self.destination.exchange else "the default exchange"
            return Upload(f"{self.where}: {target} routed a message to no queue (returned); bind the queue to it "
                          "with the queue's name as routing key")
        if isinstance(exc, amqp.DeliveryError):
            return Upload(f"{self.where}: the server refused a message (nack); check the queue's length limits "
                          "and the server's log")
        if isinstance(exc, amqp.ChannelAccessRefused):
            return Rejected(f"{self.where}: the server refused the publish ({self._reason(exc)}); grant the "
                            "connection's user write permission on the exchange")
        if isinstance(exc, ExportError):
            return exc
        return Upload(f"{self.where}: the connection failed ({self._reason(exc)})")

    async def _connected(self) -> Any:
        if self.connection is not None and not self.connection.is_closed and self.channel is not None \
                and not self.channel.is_closed:
            return self.channel
        await self._drop()
        scheme, rest = self.destination.url.split("://", 1)  # the spec allows no credentials in it
        connection = aiormq.Connection(f"{scheme}://{quote(self.username, safe='')}:"
                                       f"{quote(self.password, safe='')}@{rest}")
        try:
            await asyncio.wait_for(connection.connect({"connection_name": "analytics-export"}), CONNECT_TIMEOUT)
        except (OSError, RuntimeError, amqp.AMQPError, asyncio.TimeoutError) as exc:
            await _quietly_close(connection)
            reason = self._reason(exc)
            if isinstance(exc, amqp.ProbableAuthenticationError) or "ACCESS_REFUSED" in reason \
                    or "authenticat" in reason.lower():
                raise Rejected(f"{self.where} refused the login for {self.username!r}: check the connection's "
                               "username and password, and that the user may use the url's vhost") from None
            if isinstance(exc, asyncio.TimeoutError):
                reason = f"no answer within {CONNECT_TIMEOUT:.0f} s"
            raise Upload(f"{self.where}: cannot connect ({reason}); check that the server is up and the url's "
                         "host and port") from None
        self.connection = connection
        self.channel = await self._declared(connection)
        return self.channel

    async def _declared(self, connection: aiormq.Connection) -> Any:
        """A confirming channel, once the queue exists (declared durable if missing) and, with an
        exchange, is bound to it by its name."""
        queue = self.destination.queue
        channel = await self._channel(connection)
        try:
            await channel.queue_declare(queue, passive=True, timeout=CONNECT_TIMEOUT)
        except amqp.ChannelNotFoundEntity:
            channel = await self._channel(connection)  # a failed declaration closes the channel
            try:
                await channel.queue_declare(queue, durable=True, timeout=CONNECT_TIMEOUT)
            except amqp.AMQPChannelError as exc:
                raise Rejected(f"{self.where}: cannot declare the queue ({self._reason(exc)})") from None
        except amqp.AMQPChannelError as exc:
            raise Rejected(f"{self.where}: cannot use the queue ({self._reason(exc)})") from None
        if self.destination.exchange:
            try:
                await channel.exchange_declare(self.destination.exchange, passive=True, timeout=CONNECT_TIMEOUT)
            except amqp.ChannelNotFoundEntity:
                raise Rejected(f"{self.where}: exchange {self.destination.exchange!r} does not exist; declare it "
                               "or leave `exchange` empty for the default exchange") from None
            try:
                await channel.queue_bind(queue, self.destination.exchange, routing_key=queue, timeout=CONNECT_TIMEOUT)
            except amqp.AMQPChannelError as exc:
                raise Rejected(f"{self.where}: cannot bind the queue to exchange {self.destination.exchange!r} "
                               f"({self._reason(exc)})") from None
        return channel

    async def _channel(self, connection: aiormq.Connection) -> Any:
        return await connection.channel(publisher_confirms=True, on_return_raises=True, timeout=CONNECT_TIMEOUT)

    async def _drop(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None:
            await _quietly_close(connection)


def _credentials(destination: RabbitMQDestination, secrets: dict[str, str]) -> tuple[str, str]:
    if destination.connection is None and not secrets:
        return "guest", "guest"
    if not (secrets.get("username") and secrets.get("password")):
        raise Invalid(f"connection {destination.connection!r} needs `username` and `password`")
    return secrets["username"], secrets["password"]


async def _quietly_close(connection: aiormq.Connection) -> None:
    try:
        await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT)
    except Exception:  # noqa: BLE001 - closing a broken connection
        log.debug("closing the RabbitMQ connection failed", exc_info=True)


def build(spec: StreamSpec, project: str, settings: Settings, secrets: dict[str, str]) -> RabbitMQSink:
    return RabbitMQSink(spec, secrets)
