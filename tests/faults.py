"""FaultyProxy: an HTTP/1.1 reverse proxy on 127.0.0.1 that injects failures into chosen requests.

Bodies are streamed in both directions (never held whole in memory), framed by Content-Length,
`Transfer-Encoding: chunked`, or (responses only) the end of the connection. Every request opens
a fresh connection to the target, while the client may keep its connection alive for many
requests (the target's Connection header is replaced: moto and the GCS emulator close after
every response, real services do not). `Expect: 100-continue` is answered by the proxy itself and not forwarded.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass
from http.client import responses
from typing import BinaryIO, Self
from urllib.parse import urlsplit

BUF = 256 * 1024
MAX_LINE = 65536


@dataclass(frozen=True)
class Respond:
    """Answer with `status` (after reading the request body) and close the connection."""

    status: int
    retry_after: str | None = None
    body: bytes = b"fault injected by FaultyProxy\n"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Drop:
    """Read the whole request, then close the connection without any response."""


Fault = Respond | Drop
# (method, path_and_query, nth): nth counts requests with this method and path (query ignored), from 1.
Predicate = Callable[[str, str, int], Fault | None]


def when(method: str, path_contains: str, fault: Fault, nth: Container[int] = (1,)) -> Predicate:
    """A predicate: `fault` for the `nth` requests of `method` to a path+query containing `path_contains`."""
    return lambda m, p, n: fault if m == method and path_contains in p and n in nth else None


class _Head:
    """A request or response head: first line and raw header lines."""

    def __init__(self, rfile: BinaryIO) -> None:
        self.line = rfile.readline(MAX_LINE)
        while self.line in (b"\r\n", b"\n"):  # tolerated before a request line (RFC 9112 2.2)
            self.line = rfile.readline(MAX_LINE)
        self.lines: list[bytes] = []
        while self.line:
            line = rfile.readline(MAX_LINE)
            if line in (b"\r\n", b"\n", b""):
                break
            self.lines.append(line)

    def get(self, name: str) -> str:
        prefix = name.lower().encode() + b":"
        return ",".join(l[len(prefix):].strip().decode("latin-1") for l in self.lines if l.lower().startswith(prefix))

    def has_token(self, name: str, token: str) -> bool:
        return token in [t.strip().lower() for t in self.get(name).split(",")]

    def encode(self, drop: str | None = None) -> bytes:
        prefix = drop.lower().encode() + b":" if drop else None
        kept = [l for l in self.lines if not (prefix and l.lower().startswith(prefix))]
        return self.line + b"".join(kept) + b"\r\n"


def _copy(src: BinaryIO, n: int, dst: socket.socket | None) -> None:
    while n > 0:
        data = src.read1(min(n, BUF))  # type: ignore[attr-defined]
        if not data:
            raise ConnectionError("connection closed mid-body")
        if dst is not None:
            dst.sendall(data)
        n -= len(data)


def _copy_chunked(src: BinaryIO, dst: socket.socket | None) -> None:
    while True:
        line = src.readline(MAX_LINE)
        if dst is not None:
            dst.sendall(line)
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            break
        _copy(src, size + 2, dst)  # data and its CRLF
    while (line := src.readline(MAX_LINE)) not in (b"\r\n", b"\n", b""):  # trailers
        if dst is not None:
            dst.sendall(line)
    if dst is not None:
        dst.sendall(b"\r\n")


def _copy_body(head: _Head, src: BinaryIO, dst: socket.socket | None) -> None:
    if head.has_token("transfer-encoding", "chunked"):
        _copy_chunked(src, dst)
    else:
        _copy(src, int(head.get("content-length") or 0), dst)


class FaultyProxy:
    """Forwards HTTP from `url` to `target` ("http://host:port[/path]" or "host:port"), faulting on demand.

    `predicate` (replaceable at any time) decides per request; `log` lists (method, path_and_query,
    status) for every request, status None when dropped and 502 when the target is unreachable.
    `connections` counts accepted client connections.
    `url` carries the target's path, so `FaultyProxy(azurite.account_url).url` is an account URL.
    """

    def __init__(self, target: str, predicate: Predicate | None = None, *, timeout: float = 60.0) -> None:
        parts = urlsplit(target if "://" in target else f"http://{target}")
        assert parts.hostname and parts.port, target
        self.target = (parts.hostname, parts.port)
        self.predicate = predicate
        self.timeout = timeout
        self.log: list[tuple[str, str, int | None]] = []
        self.connections = 0  # client connections accepted so far
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}{parts.path.rstrip('/')}"
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="faulty-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and cut every open connection."""
        self._closed = True
        with self._lock:
            open_sockets = [self._listener, *self._sockets]
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._sockets.add if add else self._sockets.discard)(sock)

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(self.timeout)
        self._track(client, True)
        try:
            with client, client.makefile("rb") as rfile:
                while not self._closed and self._exchange(client, rfile):
                    pass
        except (OSError, ValueError):
            pass  # a client gone or a malformed message: the connection just ends
        finally:
            self._track(client, False)

    def _exchange(self, client: socket.socket, rfile: BinaryIO) -> bool:
        """Handle one request; True when the client connection stays open for another."""
        request = _Head(rfile)
        if not request.line:
            return False
        method, target, version = request.line.decode("latin-1").split()
        with self._lock:
            self._counts[method, target.split("?")[0]] += 1
            nth = self._counts[method, target.split("?")[0]]
        fault = self.predicate(method, target, nth) if self.predicate else None
        expect = request.has_token("expect", "100-continue")
        if isinstance(fault, Respond):
            if not expect:  # with Expect the client waits and sends no body on a final answer
                _copy_body(request, rfile, None)
            self._respond(client, fault)
            self.log.append((method, target, fault.status))
            return False
        if expect:
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if isinstance(fault, Drop):
            _copy_body(request, rfile, None)
            self.log.append((method, target, None))
            client.shutdown(socket.SHUT_RDWR)
            return False
        try:
            upstream = socket.create_connection(self.target, timeout=self.timeout)
        except OSError:
            _copy_body(request, rfile, None)
            self._respond(client, Respond(502, body=b"FaultyProxy: target unreachable\n"))
            self.log.append((method, target, 502))
            return False
        self._track(upstream, True)
        try:
            with upstream, upstream.makefile("rb") as ufile:
                upstream.sendall(request.encode(drop="expect"))
                _copy_body(request, rfile, upstream)
                return self._relay_response(method, target, version, request, ufile, client)
        finally:
            self._track(upstream, False)

    def _relay_response(
        self, method: str, target: str, version: str, request: _Head, ufile: BinaryIO, client: socket.socket
    ) -> bool:
        while True:
            response = _Head(ufile)
            if not response.line:
                raise ConnectionError("target closed without a response")
            status = int(response.line.split()[1])
            if not 100 <= status < 200 or status == 101:
                break
            client.sendall(response.encode())  # interim 1xx
        self.log.append((method, target, status))
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        framed = no_body or response.has_token("transfer-encoding", "chunked") or bool(response.get("content-length"))
        if version == "HTTP/1.1":
            keep = framed and status != 101 and not request.has_token("connection", "close")
        else:
            keep = framed and request.has_token("connection", "keep-alive")
        # Connection is hop-by-hop: the client's connection to the proxy outlives the per-request upstream one.
        response.lines = [l for l in response.lines if not l.lower().startswith((b"connection:", b"keep-alive:"))]
        response.lines.append(b"Connection: keep-alive\r\n" if keep else b"Connection: close\r\n")
        response.line = b"HTTP/1.1 " + response.line.split(b" ", 1)[1]
        client.sendall(response.encode())
        if no_body:
            pass
        elif framed:
            _copy_body(response, ufile, client)
        else:  # delimited by the end of the connection
            while data := ufile.read1(BUF):  # type: ignore[attr-defined]
                client.sendall(data)
        return keep

    @staticmethod
    def _respond(client: socket.socket, fault: Respond) -> None:
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(fault.body))), ("Connection", "close")]
        if fault.retry_after is not None:
            headers.append(("Retry-After", fault.retry_after))
        head = f"HTTP/1.1 {fault.status} {responses.get(fault.status, 'Fault')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in [*headers, *fault.headers]) + "\r\n"
        client.sendall(head.encode("latin-1") + fault.body)
        client.shutdown(socket.SHUT_WR)
