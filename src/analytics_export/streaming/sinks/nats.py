"""NATS JetStream (nats-py): every message is published with `Nats-Msg-Id` (the event's uuid, or
the batch's name), so JetStream drops a batch sent again within the stream's duplicate window.

nats-py is asynchronous; the sink runs one event loop in its own thread and `send` calls into it.
A batch's messages are published without waiting for each other's PubAck, then every PubAck is
awaited; the send fails when any is an error or none arrives for ACK_TIMEOUT seconds. The client
never reconnects by itself (a send to a dead server fails at once instead of queueing): after a
failure the connection is dropped and the next send connects again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from ...destinations import redact
from ...errors import ExportError, Invalid, Rejected, Upload
from . import Delivery
from .acks import AckWindow
from .loop import LoopSink

if TYPE_CHECKING:
    from ...config import Settings
    from ...destinations.specs import NatsDestination
    from ..spec import StreamSpec

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5
"""Seconds to open the connection (TCP, the server's INFO, the CONNECT handshake)."""
ACK_TIMEOUT = 10.0
"""A send fails when no PubAck (and no error) has come for this many seconds."""
API_TIMEOUT = 5.0
"""JetStream API requests: looking up and creating the stream."""
MAX_IN_FLIGHT = 4096
"""Messages published and not yet acknowledged, at most."""
DUPLICATE_WINDOW = 300.0
"""Seconds a created stream remembers message ids (JetStream's default is 120)."""


class NatsSink(LoopSink):
    connect_timeout = CONNECT_TIMEOUT
    client_errors = (OSError, nats.errors.Error, asyncio.TimeoutError)

    def __init__(self, spec: StreamSpec, secrets: dict[str, str]) -> None:
        self.spec = spec
        self.destination: NatsDestination = spec.destination  # type: ignore[assignment]
        self.secrets = secrets
        self.auth = _auth(self.destination, secrets)
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.in_flight: list[asyncio.Future[Any]] = []
        self.last_error: BaseException | None = None
        super().__init__("nats-sink")

    @property
    def where(self) -> str:
        return f"NATS {self.destination.url} subject {self.destination.subject!r}"

    def send(self, delivery: Delivery) -> None:
        if self.spec.message == "event":
            messages = [(body, {"Nats-Msg-Id": uuid, "Content-Type": "application/json"})
                        for uuid, body in delivery.messages]
        else:
            headers = {"Nats-Msg-Id": delivery.name, "Content-Type": delivery.content_type}
            if delivery.content_encoding:
                headers["Content-Encoding"] = delivery.content_encoding
            messages = [(delivery.body, headers)]
        if messages:
            # The coroutine bounds itself (connect, then ACK_TIMEOUT without progress); this outer
            # bound only catches a hang inside the client, allowing 1,000 messages a second.
            with self.sending:
                self.call(self._send(messages), CONNECT_TIMEOUT + API_TIMEOUT * 2 + ACK_TIMEOUT + len(messages) / 1000)

    def _reason(self, exc: BaseException) -> str:
        return redact(str(exc) or type(exc).__name__, self.secrets)

    async def _probe(self) -> str:
        js = await self._connected()  # creates the destination's `stream` when missing, as a first send would
        try:
            stream = await js.find_stream_name_by_subject(self.destination.subject)
        except nats.js.errors.NotFoundError:
            raise Rejected(f"{self.where}: no JetStream stream takes the subject; set the destination's `stream` "
                           "to create one, or add the subject to an existing stream") from None
        return f"connected; JetStream stream {stream!r} takes the subject"

    async def _send(self, messages: list[tuple[bytes, dict[str, str]]]) -> None:
        js = await self._connected()
        subject, stream = self.destination.subject, self.destination.stream
        futures: list[asyncio.Future[Any]] = []
        self.in_flight = futures
        window = AckWindow(MAX_IN_FLIGHT)
        try:
            for body, headers in messages:
                # Nothing here yields while the window has room, so the client's flusher writes many
                # messages at once instead of one socket send each.
                if not await window.room(1, ACK_TIMEOUT):
                    raise Upload(f"{self.where}: no PubAck for {ACK_TIMEOUT:.0f} s; check that the server and its "
                                 "JetStream are up")
                if window.failed:
                    break
                try:
                    future = await js.publish_async(subject, body, stream=stream, headers=headers)
                except nats.errors.MaxPayloadError:
                    raise Rejected(f"{self.where}: a message of {len(body)} bytes is larger than the server's "
                                   f"max_payload ({self.nc.max_payload if self.nc else '?'} bytes); lower the "
                                   "stream's max_batch_events, compress it, or raise max_payload") from None
                window.add(future)
                futures.append(future)
            await self._acknowledged(futures)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            self.in_flight = []

    async def _acknowledged(self, futures: list[asyncio.Future[Any]]) -> None:
        """Wait for every PubAck; raise on the first error, or when none comes for ACK_TIMEOUT seconds."""
        pending: set[asyncio.Future[Any]] = set(futures)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=ACK_TIMEOUT, return_when=asyncio.FIRST_EXCEPTION)
            for future in done:
                if future.cancelled():
                    raise Upload(f"{self.where}: the connection was lost before every PubAck arrived")
                exc = future.exception()
                if exc is not None:
                    raise self._publish_error(exc)
            if pending and not done:
                raise Upload(f"{self.where}: no PubAck for {len(pending)} of {len(futures)} messages within "
                             f"{ACK_TIMEOUT:.0f} s; check that the server and its JetStream are up")

    def _publish_error(self, exc: BaseException) -> ExportError:
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            return Upload(f"{self.where}: no JetStream stream takes the subject; set the destination's `stream` "
                          "to create one, or add the subject to an existing stream")
        if isinstance(exc, nats.js.errors.APIError):
            if exc.err_code == 10060:  # expected stream does not match
                return Rejected(f"{self.where}: the subject belongs to another stream than "
                                f"{self.destination.stream!r}; change the destination's `stream` or subject")
            return Upload(f"{self.where}: JetStream refused the message ({self._reason(exc)})")
        if isinstance(exc, ExportError):
            return exc
        return Upload(f"{self.where}: {self._reason(exc)}")

    async def _connected(self) -> JetStreamContext:
        if self.nc is not None and self.js is not None and self.nc.is_connected:
            return self.js
        await self._drop()
        nc = Client()
        self.last_error = None
        try:
            # nats-py tries a server at least twice even so (max_reconnect_attempts=0 would mean
            # forever); the outer bound stops the second try of a server that does not answer.
            await asyncio.wait_for(nc.connect(
                self.destination.url, name="analytics-export", connect_timeout=CONNECT_TIMEOUT,
                allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.5, flush_timeout=ACK_TIMEOUT,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected, closed_cb=self._on_disconnected, **self.auth),
                CONNECT_TIMEOUT + 1)
        except nats.errors.NoServersError:
            await _quietly_close(nc)
            raise Upload(f"{self.where}: cannot connect ({self._reason(self.last_error or 'no server')}); check "
                         "that the server is up and the url's host and port") from None
        except (OSError, asyncio.TimeoutError, nats.errors.Error) as exc:
            await _quietly_close(nc)
            reason = self._reason(exc) if str(exc) else f"no answer within {CONNECT_TIMEOUT} s"
            if "authorization" in reason.lower() or "authentication" in reason.lower():
                raise Rejected(f"{self.where} refused the login: check the connection's user/password or "
                               "token") from None
            raise Upload(f"{self.where}: cannot connect ({reason}); check that the server is up and the url's "
                         "host and port") from None
        self.nc = nc
        self.js = nc.jetstream(timeout=API_TIMEOUT, publish_async_max_pending=MAX_IN_FLIGHT + 1)  # never stalls
        if self.destination.stream:
            await self._ensure_stream(self.js, self.destination.stream)
        return self.js

    async def _ensure_stream(self, js: JetStreamContext, name: str) -> None:
        try:
            await js.stream_info(name)
            return
        except nats.js.errors.NotFoundError:
            pass
        except nats.errors.NoRespondersError:
            raise Rejected(f"{self.where}: the server has no JetStream; start it with -js") from None
        try:
            await js.add_stream(StreamConfig(name=name, subjects=[self.destination.subject], storage=StorageType.FILE,
                                             duplicate_window=DUPLICATE_WINDOW))
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == 10058:  # created meanwhile by another sink, with another configuration
                return
            raise Rejected(f"{self.where}: cannot create stream {name!r} ({self._reason(exc)}); the subject may "
                           "belong to another stream, or the name may be taken") from None
        except nats.js.errors.APIError as exc:
            raise Upload(f"{self.where}: cannot create stream {name!r} ({self._reason(exc)})") from None

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = exc
        if "permissions violation" in str(exc).lower():
            self._fail_in_flight(Rejected(f"{self.where}: the server denies publishing to the subject; grant the "
                                          "connection's user publish permission"))

    async def _on_disconnected(self) -> None:
        self._fail_in_flight(Upload(f"{self.where}: the connection was lost before every PubAck arrived"))

    def _fail_in_flight(self, exc: ExportError) -> None:
        for future in self.in_flight:
            if not future.done():
                future.set_exception(exc)

    async def _drop(self) -> None:
        nc, self.nc, self.js = self.nc, None, None
        if nc is not None:
            await _quietly_close(nc)


def _auth(destination: NatsDestination, secrets: dict[str, str]) -> dict[str, str]:
    if secrets.get("token"):
        return {"token": secrets["token"]}
    if secrets.get("user") or secrets.get("password"):
        if not (secrets.get("user") and secrets.get("password")):
            raise Invalid(f"connection {destination.connection!r} needs both `user` and `password` (or a `token`)")
        return {"user": secrets["user"], "password": secrets["password"]}
    if destination.connection:
        raise Invalid(f"connection {destination.connection!r} has neither `user`/`password` nor `token`")
    return {}


async def _quietly_close(nc: Client) -> None:
    try:
        await asyncio.wait_for(nc.close(), CONNECT_TIMEOUT)
    except Exception:  # noqa: BLE001 - closing a broken connection
        log.debug("closing the NATS connection failed", exc_info=True)


def build(spec: StreamSpec, project: str, settings: Settings, secrets: dict[str, str]) -> NatsSink:
    return NatsSink(spec, secrets)
