"""Bounds at the door: a request body is read only after the API key is checked, never past its
route's size limit, and only while it keeps arriving; a request head must arrive in time and fit."""

import asyncio
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Awaitable, Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

PROJECT_SCOPE_KEY = "analytics_export.project"
"""Where the guard leaves the project of a request's API key, so the route does not look it up again."""


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a route's body may hold, and what to tell a caller who sends more."""

    bytes: int
    hint: str


class BodyLimits:
    """The body limit of each route: `routes` maps (method, path template) to its own, any other
    request gets `default`."""

    def __init__(self, default: BodyLimit, routes: dict[tuple[str, str], BodyLimit]) -> None:
        self.default = default
        self.routes = [(method, compile_path(path)[0], limit) for (method, path), limit in routes.items()]

    def __call__(self, method: str, path: str) -> BodyLimit:
        for route_method, pattern, limit in self.routes:
            if method == route_method and pattern.match(path):
                return limit
        return self.default


def too_large(limit: BodyLimit, size: int | None) -> HTTPException:
    """413 for a body of `size` bytes (None: counted while read, past the limit)."""
    if size is None:
        return HTTPException(413, f"the body is over {limit.bytes:,} bytes, the most this route takes: {limit.hint}")
    return HTTPException(413, f"the body is {size:,} bytes; the most is {limit.bytes:,} bytes: {limit.hint}")


class RequestGuard:
    """ASGI middleware. A request that carries a body (Content-Length above 0 or Transfer-Encoding)
    has its API key checked (under /api/; 401 as the routes answer) and its declared size compared
    with its route's limit (413) before a byte of the body is read. The guard then receives the whole
    body before the route runs (FastAPI would read it all anyway): 413 once it passes the limit, so
    no more is ever held, and 408 with the connection closed when a part takes longer than
    `idle_timeout` or the whole body longer than `body_timeout` seconds. FastAPI reads and parses a
    body before any dependency runs, so the routes' own key check would come too late."""

    def __init__(self, app: ASGIApp, *, authenticate: Callable[[Scope], Awaitable[str]], limits: BodyLimits,
                 idle_timeout: float, body_timeout: float) -> None:
        self.app = app
        self.authenticate = authenticate
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if "transfer-encoding" not in headers and (length is None or int(length) == 0):
            return await self.app(scope, receive, send)
        limit = self.limits(scope["method"], scope["path"])
        try:
            if scope["path"].startswith("/api/"):
                scope[PROJECT_SCOPE_KEY] = await self.authenticate(scope)
            if length is not None and int(length) > limit.bytes:
                raise too_large(limit, int(length))
            body = await self.read(receive, limit)
        except HTTPException as exc:
            # A body left unread is the server's to discard while the caller reads this answer; the
            # header timeout ends one that never stops.
            await JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)(scope, receive, send)
            return
        if body is None:
            return  # the caller hung up
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def read(self, receive: Receive, limit: BodyLimit) -> bytes | None:
        """The whole body (None if the caller disconnected); 413 past `limit`, 408 if it is slow."""
        deadline = time.monotonic() + self.body_timeout
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                async with asyncio.timeout(min(self.idle_timeout, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive in time: each part must come within "
                                         f"{self.idle_timeout:g} s and the whole body within {self.body_timeout:g} "
                                         "s; send it faster or in smaller requests",
                                    headers={"Connection": "close"}) from None
            if message["type"] != "http.request":
                return None
            part = message.get("body", b"")
            size += len(part)
            if size > limit.bytes:
                raise too_large(limit, None)
            parts.append(part)
            if not message.get("more_body", False):
                return b"".join(parts)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds it lacks: a request head must be complete within
    `header_timeout` seconds of the connection opening or of the previous response (else 408 if it
    began, and the connection is closed: slow or idle sockets cannot pile up), must fit in
    `max_header_bytes` (else 431: httptools would buffer a head of any size), and a connection over
    `limit_concurrency` is answered 503 at once (uvicorn only refuses once a head arrives)."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, header_timeout: float,
                 max_header_bytes: int) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.head_timer: asyncio.TimerHandle | None = None
        self.in_head = False
        self.head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.limit_concurrency is not None and len(self.connections) > self.limit_concurrency:
            self.refuse(503, f"this server holds {self.limit_concurrency:,} connections already; retry shortly")
            return
        self.await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Counted from the chunk after the head began: the one it began in may end a previous body.
        if self.in_head:
            self.head_bytes += len(data)
        super().data_received(data)
        if self.in_head and self.head_bytes > self.max_header_bytes:
            self.refuse(431, f"the request head is over {self.max_header_bytes:,} bytes; send shorter headers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True
        self.head_bytes = 0

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.stop_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        queued = bool(self.pipeline)  # a next request whose head is already in
        super().on_response_complete()
        if not queued and not self.transport.is_closing():
            self.await_head()

    def await_head(self) -> None:
        self.stop_head_timer()
        self.head_timer = self.loop.call_later(self.header_timeout, self.head_timed_out)

    def stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timed_out(self) -> None:
        self.head_timer = None
        if self.in_head:
            self.refuse(408, f"the request head did not arrive within {self.header_timeout:g} s")
        elif not self.transport.is_closing():
            self.transport.close()

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` with `message` as the API's JSON errors are, and close the connection."""
        if self.transport.is_closing():
            return
        body = JSONResponse({"detail": message}).body
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self.transport.write(head % (status, HTTPStatus(status).phrase.encode(), len(body)) + body)
        self.transport.close()
