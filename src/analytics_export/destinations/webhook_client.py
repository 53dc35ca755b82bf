"""The one HTTP client export webhooks and stream webhooks POST with. It connects to an address the
SSRF guard checked (a second DNS answer cannot redirect the request: DNS rebinding), sends the
original name as Host and TLS server name, ignores proxy settings from the environment and never
follows redirects (a 30x could point inside the network)."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, Iterable, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx

from ..errors import Rejected, Upload
from .guard import check_host

RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
"""Answers worth sending the same body again for; any other failure status is permanent."""


def signature(secret: bytes, body: Iterable[bytes]) -> dict[str, str]:
    """The signature headers of `body`, signed now: `X-Signature: sha256=HEX` is
    HMAC-SHA256(secret, f"{X-Signature-Timestamp}." + body); each attempt carries a fresh timestamp."""
    timestamp = str(int(time.time()))
    mac = hmac.new(secret, f"{timestamp}.".encode(), hashlib.sha256)
    for chunk in body:
        mac.update(chunk)
    return {"X-Signature-Timestamp": timestamp, "X-Signature": f"sha256={mac.hexdigest()}"}


def permanent_hint(status: int) -> str:
    """What to fix after a permanent failure status."""
    if status in (401, 403):
        return "the receiver refused the credentials; check the connection's authorization or signing_secret"
    if status in (404, 405, 410):
        return "check the webhook url"
    if status == 413:
        return "the body is too large for the receiver; set batch_max_bytes or batch_max_events"
    if 300 <= status < 400:
        return "redirects are not followed; use the final url"
    return "the receiver rejected the request; see its logs"


class Pinned(NamedTuple):
    """A URL whose host was resolved and checked: where to connect, and how to name the original host."""

    url: str
    host: str
    extensions: dict[str, Any]


def pin(url: str, allow: list[str]) -> Pinned:
    """`url` with its host replaced by an address the SSRF guard checked, the Host header value and,
    for https, the TLS server name set to the original host (the certificate is checked against it)."""
    parts = urlsplit(url)
    address = check_host(parts.hostname or "", allow)[0]
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    if "@" in parts.netloc:  # user:password@ stays: httpx sends it as Basic auth
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return Pinned(urlunsplit(parts._replace(netloc=netloc)), parts.netloc.rsplit("@", 1)[-1], extensions)


class WebhookClient:
    """POSTs to pinned URLs over one connection pool."""

    def __init__(self, timeout: float) -> None:
        self.client = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)

    def post(self, target: Pinned, content: Any, headers: dict[str, str]) -> httpx.Response:
        """POST `content` to `target`; transport failures raise httpx.TransportError."""
        return self.client.post(target.url, content=content, headers={**headers, "Host": target.host},
                                extensions=target.extensions)

    def deliver(self, target: Pinned, content: Any, headers: dict[str, str], where: str) -> httpx.Response:
        """POST `content` and insist on a 2xx: Upload when it is worth sending again (no connection, a
        RETRY_STATUSES answer), Rejected with what to fix otherwise; `where` names the receiver."""
        try:
            response = self.post(target, content, headers)
        except httpx.TransportError as exc:
            raise Upload(f"{where}: cannot send ({type(exc).__name__}); check that it is up and reachable from "
                         "this server") from None
        if response.status_code >= 300:
            problem = f"{where} answered HTTP {response.status_code}"
            if response.status_code in RETRY_STATUSES:
                raise Upload(problem)
            raise Rejected(f"{problem}: {permanent_hint(response.status_code)}")
        return response

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> WebhookClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
