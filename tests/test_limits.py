"""Bounds at the door, against a real `serve`: the API key is checked before a body is read, every
body has a size limit, and request heads and bodies that arrive slowly are cut off."""

from __future__ import annotations

import re
import select
import socket
import threading
import time

import httpx
import psutil
import pytest
from fastapi.routing import iter_route_contexts
from service import Service

from analytics_export import Settings
from analytics_export.api.app import create_app
from analytics_export.store.jobs import JobStore

HEADER_TIMEOUT = 2.0
BODY_IDLE = 1.5
BODY_TOTAL = 4.0
MAX_CONNECTIONS = 250
JSON_LIMIT = Settings.model_fields["max_json_body_bytes"].default
BULK_LIMIT = Settings.model_fields["max_body_bytes"].default
BULK_ROUTES = {("POST", "/api/events"), ("POST", "/api/projects/{project}/suppressions")}
CLOSED_WITHIN = 15.0
"""How long a test waits for the server to close a connection it must close after a few seconds."""


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory):
    return make_service(tmp_path_factory.mktemp("limits"), 0, {"ANALYTICS_EXPORT_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
                            "ANALYTICS_EXPORT_BODY_IDLE_TIMEOUT_SECONDS": str(BODY_IDLE),
                            "ANALYTICS_EXPORT_BODY_TIMEOUT_SECONDS": str(BODY_TOTAL),
                            "ANALYTICS_EXPORT_MAX_CONNECTIONS": str(MAX_CONNECTIONS)})


def body_routes(service: Service) -> list[tuple[str, str, int]]:
    """(method, path with its parameters filled in, body limit) of every route of the app that takes a
    body: a route added without a limit fails the tests below."""
    app = create_app(Settings(data_dir=service.data), JobStore.for_data_dir(service.data))
    found = []
    for route in iter_route_contexts(app.routes):  # app.routes with the included routers' routes
        for method in sorted((route.methods or set()) & {"POST", "PUT", "PATCH"}):
            limit = BULK_LIMIT if (method, route.path) in BULK_ROUTES else JSON_LIMIT
            found.append((method, re.sub(r"\{[^}]+\}", "default", route.path), limit))
    return found


def raw(service: Service, head: str) -> socket.socket:
    """A connection to the service that has sent `head` (CRLF line ends added)."""
    sock = socket.create_connection(("127.0.0.1", service.port))
    sock.sendall(head.replace("\n", "\r\n").encode())
    return sock


def answer(sock: socket.socket, timeout: float = CLOSED_WITHIN) -> bytes:
    """All the server sends until it closes the connection; AssertionError if it does not in `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open {timeout} s; it sent {data[:200]!r}") from None
    finally:
        sock.close()
    return data


def test_every_body_route_checks_its_size_limit(service):
    routes = body_routes(service)
    assert len(routes) >= 15 and ("POST", "/api/exports", JSON_LIMIT) in routes
    assert ("PUT", "/api/projects/default/privacy", JSON_LIMIT) in routes
    assert ("POST", "/api/events", BULK_LIMIT) in routes
    with service.client(service.key) as c, service.client(None) as anonymous:
        for method, path, limit in routes:
            over = b"[" + b" " * limit  # one byte over the limit
            json = {"content-type": "application/json"}
            declared = c.request(method, path, content=over, headers=json)
            assert declared.status_code == 413, (path, declared.text)
            assert f"{limit:,} bytes" in declared.json()["detail"]
            chunked = c.request(method, path, content=iter([over[:1000], over[1000:]]), headers=json)
            assert "content-length" not in chunked.request.headers
            assert chunked.status_code == 413 and f"{limit:,} bytes" in chunked.json()["detail"], (path, chunked.text)
            nobody = anonymous.request(method, path, content=over, headers=json)
            assert nobody.status_code == 401 and nobody.headers["www-authenticate"] == "Bearer", (path, nobody.text)
            assert nobody.json()["detail"] == "send an API key as `Authorization: Bearer KEY`"
        wrong = httpx.post(f"{service.url}/api/exports", content=b"{}", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "unknown API key"
        request = b'{"start_date": "2026-01-01", "end_date": "2026-01-02", "format": "json_lines"}'
        at_limit = c.post("/api/exports/preview", content=request.ljust(JSON_LIMIT), headers=json)
        assert at_limit.status_code == 200, at_limit.text
        ingested = c.post("/api/events", content=b"\n".join(
            b'{"event": "e", "distinct_id": "u%d", "timestamp": "2026-01-01T00:00:00Z", "properties": {"p": "%s"}}'
            % (i, b"v" * 1000) for i in range(2000)), headers={"content-type": "application/x-ndjson"})
        assert ingested.status_code == 200 and ingested.json() == {"ingested": 2000}, ingested.text


def readable(sock: socket.socket, timeout: float) -> bool:
    """Whether `sock` has something to read within `timeout` seconds: poll(), which unlike select() takes
    descriptors past 1024 (a long test run holds many)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def send_unauthenticated(service: Service, size: int, chunked: bool, statuses: list[bytes]) -> None:
    """POST `size` bytes to /api/exports/preview with no key, and record the status line answered."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    sock = raw(service, f"POST /api/exports/preview HTTP/1.1\nHost: x\nContent-Type: application/json\n{framing}\n\n")
    piece = b" " * (1 << 20)
    if chunked:
        piece = b"%x\r\n%s\r\n" % (len(piece), piece)
    got = b""
    try:
        for _ in range(size >> 20):
            sock.sendall(piece)
            if readable(sock, 0):
                got += sock.recv(65536)
    except OSError:
        pass  # the server may close a connection whose body never ends; it answered first
    try:
        got += sock.recv(65536)
    except OSError:
        pass
    sock.close()
    statuses.append(got.split(b"\r\n")[0])


def test_bodies_without_a_key_are_never_read(service):
    """Six 100 MB bodies with no key at once: 401 each, and the API does not grow by the bodies."""
    api = psutil.Process(service.proc.pid)
    before = api.memory_info().rss
    statuses: list[bytes] = []
    senders = [threading.Thread(target=send_unauthenticated, args=(service, 100 << 20, i % 2 == 1, statuses))
               for i in range(6)]
    peak = before
    for sender in senders:
        sender.start()
    while any(sender.is_alive() for sender in senders):
        peak = max(peak, api.memory_info().rss)
        time.sleep(0.02)
    assert statuses == [b"HTTP/1.1 401 Unauthorized"] * 6
    assert peak - before < 50 << 20, f"the API grew by {(peak - before) >> 20} MB"


def test_a_slow_or_huge_request_head_is_cut_off(service):
    assert answer(raw(service, ""), HEADER_TIMEOUT + CLOSED_WITHIN) == b"", "an idle connection is closed"
    partial = answer(raw(service, "GET /api/exports HTTP/1.1\nHost: x\nAuthorization: Bea"))
    assert partial.startswith(b"HTTP/1.1 408 ") and f"within {HEADER_TIMEOUT:g} s".encode() in partial
    refused = send_until_answered(raw(service, "GET /healthz HTTP/1.1\nHost: x\nX-Padding: "), b"a" * 8192, 64)
    assert refused.startswith(b"HTTP/1.1 431 ") and b"65,536 bytes" in refused
    # After a response, the connection waits for the next request head again, as long.
    again = raw(service, "GET /healthz HTTP/1.1\nHost: x\n\n")
    assert answer(again).startswith(b"HTTP/1.1 200 ")


def send_until_answered(sock: socket.socket, piece: bytes, count: int, every: float = 0) -> bytes:
    """Send `piece` every `every` seconds (at most `count` times) until the server answers; all it
    answers until it closes the connection."""
    for _ in range(count):
        if readable(sock, every):
            break
        try:
            sock.sendall(piece)
        except OSError:
            break
    return answer(sock)


def test_a_slow_request_body_gets_408_and_is_closed(service):
    head = (f"POST /api/exports HTTP/1.1\nHost: x\nAuthorization: Bearer {service.key}\n"
            "Content-Type: application/json\nContent-Length: 1000\n\n")
    stalled = answer(raw(service, head + "{"))
    assert stalled.startswith(b"HTTP/1.1 408 ") and b"connection: close" in stalled.lower()
    assert f"each part must come within {BODY_IDLE:g} s".encode() in stalled
    slow = send_until_answered(raw(service, head), b" ", 1000, 1.0)  # every byte in time, the whole body not
    assert slow.startswith(b"HTTP/1.1 408 ") and f"whole body within {BODY_TOTAL:g} s".encode() in slow
    # The same for a route that reads no body: it is received (or refused) before any route runs.
    unread = send_until_answered(raw(service, head.replace("/api/exports", "/api/exports/none/cancel")), b" ",
                                 1000, 1.0)
    assert unread.startswith(b"HTTP/1.1 408 ")


def test_slow_connections_do_not_starve_the_api(service):
    """200 slow connections at once (half a request head, or a body a byte a second): a normal request
    is answered meanwhile, and the server closes all of them within its timeouts."""
    heads = [raw(service, "GET /api/exports HTTP/1.1\nHost: x\n") for _ in range(100)]
    body = (f"POST /api/exports HTTP/1.1\nHost: x\nAuthorization: Bearer {service.key}\n"
            "Content-Type: application/json\nContent-Length: 1000\n\n")
    bodies = [raw(service, body) for _ in range(100)]
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(1.0):
            for sock in bodies:
                try:
                    sock.sendall(b" ")
                except OSError:
                    pass

    dripping = threading.Thread(target=drip)
    dripping.start()
    try:
        with service.client(service.key) as c:
            listed = c.get("/api/exports", timeout=10)
            assert listed.status_code == 200, listed.text
        for sock in heads + bodies:
            answer(sock)
    finally:
        stop.set()
        dripping.join()


def test_connections_over_the_limit_are_refused_at_once(service):
    idle = [raw(service, "") for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)  # all accepted
        refused = answer(raw(service, ""))
        assert refused.startswith(b"HTTP/1.1 503 ") and f"{MAX_CONNECTIONS:,} connections".encode() in refused
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(f"{service.url}/healthz").status_code == 200
