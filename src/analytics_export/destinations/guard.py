"""Refuses destinations that point inside the server's network (SSRF): loopback, private,
link-local (cloud metadata), shared and reserved addresses, unless the server's allow-list names them."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from ..errors import Invalid
from ..models import (AzureDestination, ClickHouseTableDestination, DeltaTableDestination, GCSDestination,
                      PostgresTableDestination, S3Destination, SFTPDestination, WebhookDestination)


def destination_host(spec: object) -> str | None:
    """The host a destination would connect to, when the request chooses it."""
    if isinstance(spec, WebhookDestination):
        return urlsplit(spec.url).hostname
    if isinstance(spec, (PostgresTableDestination, ClickHouseTableDestination)):
        return urlsplit(spec.url).hostname  # None for chdb: in-process, under the data dir
    if isinstance(spec, (S3Destination, GCSDestination, DeltaTableDestination)) and spec.endpoint_url:
        return urlsplit(spec.endpoint_url).hostname
    if isinstance(spec, AzureDestination) and spec.account_url:
        return urlsplit(spec.account_url).hostname
    if isinstance(spec, SFTPDestination):
        return spec.host
    if getattr(spec, "type", None) in ("nats", "rabbitmq"):  # a stream's broker
        return urlsplit(spec.url).hostname  # type: ignore[attr-defined]
    return None


def check_destination(spec: object, allow: list[str]) -> None:
    """Raise Invalid if the destination's host resolves to an address that is not public and not allowed."""
    host = destination_host(spec)
    if host is not None:
        check_host(host, allow)


def check_host(host: str, allow: list[str]) -> list[str]:
    """The addresses `host` resolves to, once each is known to be public or allowed (else Invalid).
    A caller that connects to one of these, not to the name, cannot be steered by DNS rebinding."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise Invalid(f"destination host {host!r} does not resolve; check the name") from None
    named = host.lower() in (a.lower() for a in allow)
    networks = [ipaddress.ip_network(a, strict=False) for a in allow if _is_network(a)]
    addresses = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not (named or address.is_global or any(address in n for n in networks)):
            raise Invalid(f"destination host {host!r} resolves to {address}, a loopback, private, link-local or "
                          "reserved address; only public hosts are allowed unless the server's "
                          "ANALYTICS_EXPORT_DESTINATION_ALLOW lists it")
        addresses.append(str(address))
    return addresses


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True
