"""The one HTTP client export webhooks and stream webhooks POST with. It connects to an address the
SSRF guard checked (a second DNS answer cannot redirect the request: DNS rebinding), sends the
original name as Host and TLS server name, ignores proxy settings from the environment and never
follows redirects (a 30x could point inside the network)."""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx

from .guard import check_host


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

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> WebhookClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
