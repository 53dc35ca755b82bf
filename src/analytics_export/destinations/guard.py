"""Refuses destinations that point inside the server's network (SSRF): loopback, private,
link-local (cloud metadata), shared, multicast and reserved addresses, and IPv6 forms that carry
such an IPv4 address inside them (mapped, NAT64, 6to4, Teredo), unless the server's allow-list names them.

The rules are explicit tables over the address, not `ipaddress`'s `is_global`, whose answer for
embedded forms and multicast depends on the Python version. Which fields of a destination name a
host is the destination registry's fact (`guarded`); `registry.register` refuses a type with a
network field that is neither guarded nor explained, so no type can skip the check."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from ..errors import Invalid
from . import registry

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

V4_DENIED: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple((ipaddress.IPv4Network(n), why) for n, why in (
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (including broadcast)"),
))
"""IPv4 ranges a destination may not reach (IANA special-purpose registry, not globally reachable)."""

V6_DENIED: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple((ipaddress.IPv6Network(n), why) for n, why in (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001:2::/48", "benchmarking"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6)"),
    ("fc00::/7", "private (unique local)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
))
"""IPv6 ranges a destination may not reach, whatever follows in the address."""

TEREDO = ipaddress.IPv6Network("2001::/32")
IETF_PROTOCOLS = ipaddress.IPv6Network("2001::/23")
GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
EMBEDDING: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple((ipaddress.IPv6Network(n), why) for n, why in (
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::/96", "IPv4-compatible"),
    ("64:ff9b::/96", "NAT64"),
    ("2002::/16", "6to4"),
))
NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[ipaddress.IPv4Address, str]]:
    """The IPv4 addresses an IPv6 address carries, each with the form that carries it: a connection to
    the IPv6 address may reach the IPv4 one (a dual-stack socket, a NAT64 gateway, a tunnel)."""
    value = int(address)
    if address in TEREDO:  # server IPv4 in bits 32-63, client IPv4 in the last 32 bits, inverted
        return [(ipaddress.IPv4Address((value >> 64) & 0xFFFFFFFF), "Teredo server"),
                (ipaddress.IPv4Address(~value & 0xFFFFFFFF), "Teredo client")]
    for network, form in EMBEDDING:
        if address in network:
            shift = 80 if form == "6to4" else 0  # 2002:AABB:CCDD::/48 carries AA.BB.CC.DD
            return [(ipaddress.IPv4Address((value >> shift) & 0xFFFFFFFF), form)]
    return []


def address_problem(address: Address) -> str | None:
    """Why `address` is not a public destination (e.g. "private"), or None when it is."""
    if isinstance(address, ipaddress.IPv4Address):
        return next((why for network, why in V4_DENIED if address in network), None)
    if address.scope_id:
        return "scoped (zone id)"
    for network, why in V6_DENIED:
        if address in network:
            return why
    carried = embedded_ipv4(address)
    for inner, form in carried:
        why = address_problem(inner)
        if why is not None:
            return f"{form} form of {inner}, {why}"
    if carried:  # the IPv4 addresses inside decide: a public one behind NAT64 or 6to4 is public
        return None
    if address in IETF_PROTOCOLS:
        return "reserved (IETF protocol assignments)"
    if address not in GLOBAL_UNICAST:
        return "reserved (outside global unicast 2000::/3)"
    return None


def destination_hosts(spec: Any) -> list[tuple[str, str]]:
    """The (field, host) pairs `spec` would connect to: each field its registered type guards, when set
    (a `host` as it is, a URL by its host; chdb: URLs are in-process, under the data dir). An unknown
    type raises: a bug, never a pass."""
    name = getattr(spec, "type", type(spec).__name__)
    if name not in registry.REGISTRY:
        raise TypeError(f"destination type {name!r} is not registered (destinations/registry.py): nothing "
                        "says which of its fields the guard must check")
    kind = registry.REGISTRY[name]
    hosts = []
    for field in kind.guarded:
        value = getattr(spec, field)
        if not value or value.startswith("chdb:"):
            continue
        hosts.append((field, value if field.endswith("host") else urlsplit(value).hostname or ""))
    return hosts


def check_destination(spec: object, allow: list[str]) -> None:
    """Raise Invalid if a host the destination names resolves to an address that is not public and not allowed."""
    for field, host in destination_hosts(spec):
        if not host:
            raise Invalid(f"{field} has no host; give http(s)://host[:port]")
        check_host(host, allow)


def check_host(host: str, allow: list[str]) -> list[str]:
    """The addresses `host` resolves to, once each is known to be public or allowed (else Invalid).
    A caller that connects to one of these, not to the name, cannot be steered by DNS rebinding."""
    host = host.strip("[]")
    if "%" in host:
        raise Invalid(f"destination host {host!r} has a zone id (%...); zone ids name local links, not destinations")
    labels = host.rstrip(".").split(".")
    if ":" not in host and NUMERIC_LABEL.fullmatch(labels[-1]) and not _dotted_quad(host):
        raise Invalid(f"destination host {host!r} is a numeric address in a shorthand, octal or hex form; "
                      "write IPv4 as four decimal numbers a.b.c.d")
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        raise Invalid(f"destination host {host!r} does not resolve; check the name") from None
    named = host.lower().rstrip(".") in (a.lower().rstrip(".") for a in allow)
    networks = [ipaddress.ip_network(a, strict=False) for a in allow if _is_network(a)]
    addresses = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        problem = address_problem(address)
        if problem is not None and not (named or any(address in n for n in networks)):
            raise Invalid(f"destination host {host!r} resolves to {address}, which is not public ({problem}); "
                          "only public hosts are allowed unless the server's ANALYTICS_EXPORT_DESTINATION_ALLOW "
                          "lists it")
        addresses.append(str(address))
    return addresses


def _dotted_quad(host: str) -> bool:
    """Whether `host` is an IPv4 address as four decimal numbers without leading zeros."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True
