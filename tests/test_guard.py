"""The SSRF guard: every address in a non-public range, and every IPv6 form carrying such an IPv4
address (mapped, compatible, NAT64, 6to4, Teredo), is refused, as are numeric host shorthands and
zone ids; every destination type names its hosts; webhooks never follow a redirect."""

from __future__ import annotations

import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter

from analytics_export import Settings
from analytics_export.destinations.guard import address_problem, check_destination, check_host
from analytics_export.destinations.registry import REGISTRY, DestinationType, register
from analytics_export.errors import Invalid, Rejected
from analytics_export.models import ExportDestination
from analytics_export.streaming.spec import StreamDestination, StreamSpec

DENIED_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
             "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
             "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"]
DENIED_V6 = ["::1/128", "::/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "2001:db8::/32",
             "64:ff9b:1::/48", "100::/64"]
PUBLIC_V4 = ["1.0.0.0/8", "8.0.0.0/8", "20.0.0.0/8", "104.16.0.0/12", "142.250.0.0/15", "185.199.108.0/22"]
PUBLIC_V6 = ["2001:4860::/32", "2606:4700::/32", "2a00:1450::/32"]


def in_network(cidr: str) -> st.SearchStrategy:
    """Addresses of `cidr`, its first and last included."""
    network = ipaddress.ip_network(cidr)
    return st.integers(0, network.num_addresses - 1).map(lambda i: network[i])


denied_v4 = st.sampled_from(DENIED_V4).flatmap(in_network)
public_v4 = st.sampled_from(PUBLIC_V4).flatmap(in_network)


def embedded(v4: ipaddress.IPv4Address, form: str, extra: int) -> ipaddress.IPv6Address:
    """`v4` carried in an IPv6 address of `form` (RFC 4291, 6052, 3056, 4380); `extra` fills free bits."""
    n = int(v4)
    if form == "mapped":
        return ipaddress.IPv6Address((0xFFFF << 32) | n)
    if form == "compatible":
        return ipaddress.IPv6Address(n)
    if form == "nat64":
        return ipaddress.IPv6Address((0x0064FF9B << 96) | n)
    if form == "6to4":
        return ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | (extra & ((1 << 80) - 1)))
    if form == "teredo-client":  # server 8.8.8.8 is public: the client alone decides
        return ipaddress.IPv6Address((0x20010000 << 96) | (0x08080808 << 64) | ((extra & 0xFFFFFFFF) << 32)
                                     | (n ^ 0xFFFFFFFF))
    assert form == "teredo-server"
    return ipaddress.IPv6Address((0x20010000 << 96) | (n << 64) | ((extra & 0xFFFFFFFF) << 32) | 0xF7F7F7F7)


FORMS = ["mapped", "compatible", "nat64", "6to4", "teredo-client", "teredo-server"]


def refused(host: str) -> bool:
    try:
        check_host(host, [])
    except Invalid:
        return True
    return False


@settings(max_examples=300, deadline=None)
@given(denied_v4)
def test_every_non_public_ipv4_is_refused(address):
    assert address_problem(address) is not None
    assert refused(str(address))


@settings(max_examples=300, deadline=None)
@given(denied_v4, st.sampled_from(FORMS), st.integers(0, (1 << 80) - 1))
def test_every_ipv6_form_carrying_a_non_public_ipv4_is_refused(v4, form, extra):
    address = embedded(v4, form, extra)
    if form == "mapped":
        assert address.ipv4_mapped == v4
    elif form == "6to4":
        assert address.sixtofour == v4
    elif form.startswith("teredo"):
        assert v4 in address.teredo  # (server, client) as Python decodes them
    assert address_problem(address) is not None, (address, form)
    assert refused(str(address)), (address, form)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(DENIED_V6).flatmap(in_network))
def test_every_non_public_ipv6_is_refused(address):
    assert address_problem(address) is not None
    assert refused(str(address))


@settings(max_examples=200, deadline=None)
@given(public_v4, st.sampled_from(["plain", "mapped", "nat64", "6to4", "teredo-client"]), st.integers(0, 1 << 32))
def test_public_addresses_and_their_ipv6_forms_pass(v4, form, extra):
    address = v4 if form == "plain" else embedded(v4, form, extra)
    assert address_problem(address) is None, (address, form)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(PUBLIC_V6).flatmap(in_network))
def test_public_ipv6_passes(address):
    assert address_problem(address) is None


@settings(max_examples=200, deadline=None)
@given(denied_v4, st.sampled_from(["decimal", "hex", "octal", "hex-dotted", "short"]))
def test_numeric_host_shorthands_are_refused(v4, style):
    """What inet_aton (and so getaddrinfo) and URL parsers read as IPv4: refused whatever it decodes to."""
    n, octets = int(v4), v4.packed
    host = {"decimal": str(n), "hex": hex(n), "octal": "0" + oct(n)[2:],
            "hex-dotted": ".".join(hex(o) for o in octets),
            "short": f"{octets[0]}.{int.from_bytes(octets[1:], 'big')}"}[style]
    assert refused(host), host


@pytest.mark.parametrize("host", ["224.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "2130706433", "0x7f.1",
                                  "017700000001", "127.1", "0177.0.0.1", "fe80::1%lo", "fe80::1%25eth0",
                                  "::ffff:169.254.169.254", "2001:0:4136:e378:8000:63bf:80ff:fffe", "localhost",
                                  "ff02::1", "255.255.255.255"])
def test_examples_are_refused(host):
    with pytest.raises(Invalid, match="ANALYTICS_EXPORT_DESTINATION_ALLOW|zone id|four decimal numbers"):
        check_host(host, [])


def test_the_allow_list_admits_hosts_and_networks():
    assert check_host("127.0.0.1", ["127.0.0.1"]) == ["127.0.0.1"]
    assert check_host("10.1.2.3", ["10.1.0.0/16"]) == ["10.1.2.3"]
    assert check_host("localhost", ["localhost"])
    assert check_host("::ffff:127.0.0.1", ["127.0.0.0/8"]) == ["127.0.0.1"]
    for host, allow in (("10.2.0.1", ["10.1.0.0/16"]), ("64:ff9b::7f00:1", ["127.0.0.1"]), ("0x7f.1", ["127.0.0.1"])):
        with pytest.raises(Invalid):
            check_host(host, allow)


# -- every destination type is checked --------------------------------------------------------------

PRIVATE_HOST_OF = {
    "s3": {"type": "s3", "bucket": "bkt", "endpoint_url": "http://10.0.0.1:9000"},
    "gcs": {"type": "gcs", "bucket": "bkt", "endpoint_url": "http://10.0.0.1:4443"},
    "azure": {"type": "azure", "container": "box", "account_url": "http://10.0.0.1:10000/acct"},
    "sftp": {"type": "sftp", "host": "10.0.0.1", "username": "u"},
    "webhook": {"type": "webhook", "url": "http://10.0.0.1/hook"},
    "postgres": {"type": "postgres", "url": "postgresql://u@10.0.0.1:5432/db", "table": "t"},
    "clickhouse": {"type": "clickhouse", "url": "clickhouse://u@10.0.0.1:8123/db", "table": "t"},
    "delta": {"type": "delta", "uri": "s3://bkt/t", "endpoint_url": "http://10.0.0.1:9000"},
    "iceberg": {"type": "iceberg", "table": "n.t", "warehouse": "lake", "catalog_url": "https://10.0.0.1/catalog"},
    "snowflake": {"type": "snowflake", "account": "acme", "user": "u", "table": "d.s.t", "url": "http://10.0.0.1:8080"},
    "nats": {"type": "nats", "url": "nats://10.0.0.1:4222", "subject": "a.b"},
    "rabbitmq": {"type": "rabbitmq", "url": "amqp://10.0.0.1:5672/", "queue": "q"},
}
"""Per destination type that connects somewhere the request names: such a destination, pointing inside."""


def destination_types() -> set[str]:
    classes = get_args(get_args(ExportDestination)[0]) + get_args(get_args(StreamDestination)[0])
    return {get_args(cls.model_fields["type"].annotation)[0] for cls in classes}


NO_HOST_FIELD = {"bigquery"}
"""Types whose settings name no host: BigQuery's client reaches Google's API (a connection's token_uri is
checked when the client is made, as for GCS)."""


def test_the_request_unions_are_the_registry():
    """ExportDestination and StreamDestination take exactly the registered types, and each type that
    connects somewhere has a private-host case below."""
    types = destination_types()
    assert types == set(REGISTRY)
    assert types - {"download"} - NO_HOST_FIELD == set(PRIVATE_HOST_OF)
    assert all(not REGISTRY[kind].network_fields() for kind in NO_HOST_FIELD)


@pytest.mark.parametrize("kind", sorted(PRIVATE_HOST_OF))
def test_every_destination_type_is_checked(kind):
    union = StreamDestination if kind in ("nats", "rabbitmq") else ExportDestination
    spec = TypeAdapter(union).validate_python(PRIVATE_HOST_OF[kind])
    with pytest.raises(Invalid, match="10.0.0.1"):
        check_destination(spec, [])
    check_destination(spec, ["10.0.0.0/8"])


def test_an_unregistered_type_fails_loudly():
    class Unknown:
        type = "carrier-pigeon"

    with pytest.raises(TypeError, match="not registered"):
        check_destination(Unknown(), [])


class Pigeon(BaseModel):
    type: Literal["pigeon"] = "pigeon"
    loft: str
    url: str | None = None
    relay_host: str | None = None


@pytest.mark.parametrize("guarded,unguarded,unchecked", [
    ((), {}, "relay_host"),
    (("relay_host",), {}, "url"),
    (("url",), {}, "relay_host"),
])
def test_a_destination_the_guard_would_not_check_cannot_be_registered(guarded, unguarded, unchecked):
    before = dict(REGISTRY)
    with pytest.raises(TypeError, match=f"field {unchecked!r} names where to connect"):
        register(DestinationType("pigeon", "Pigeon", "files", Pigeon, guarded=guarded, unguarded=unguarded,
                                 export="destinations.local:build"))
    assert REGISTRY == before


def test_a_registered_destination_is_checked_on_every_field_it_guards():
    kind = register(DestinationType("pigeon", "Pigeon", "files", Pigeon, guarded=("url", "relay_host"),
                                    export="destinations.local:build"))
    try:
        with pytest.raises(Invalid, match="10.0.0.2"):
            check_destination(Pigeon(loft="a", url="https://93.184.216.34/", relay_host="10.0.0.2"), [])
        with pytest.raises(Invalid, match="10.0.0.3"):
            check_destination(Pigeon(loft="a", url="http://10.0.0.3/"), [])
        check_destination(Pigeon(loft="a"), [])
    finally:
        del REGISTRY[kind.name]


def test_registration_refuses_a_field_it_does_not_have_and_a_second_entry():
    with pytest.raises(TypeError, match="no field 'endpoint'"):
        register(DestinationType("pigeon", "Pigeon", "files", Pigeon, guarded=("url", "relay_host", "endpoint"),
                                 export="destinations.local:build"))
    with pytest.raises(TypeError, match="registered already"):
        register(DestinationType("s3", "S3 again", "files", REGISTRY["s3"].config, guarded=("endpoint_url",),
                                 export="destinations.s3:build"))


# -- redirects -------------------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    """Answers every POST with `status` and `location`, counting the requests it took."""

    def __init__(self, host: str, port: int = 0, status: int = 204, location: str = "") -> None:
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.hits += 1
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__((host, port), Handler)
        self.daemon_threads = True
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_webhooks_do_not_follow_redirects(tmp_path, status):
    """A receiver answering 30x to a private address: nothing is sent there, and the error says why."""
    from analytics_export.streaming.sinks import Delivery, sink_for

    inside = Server("127.0.0.2")
    outside = Server("127.0.0.1", status=status, location=f"http://127.0.0.2:{inside.server_port}/metadata")
    spec = StreamSpec(name="r", destination={"type": "webhook", "url": f"http://127.0.0.1:{outside.server_port}/"})
    sink = sink_for(spec, "p", Settings(data_dir=tmp_path, destination_allow=["127.0.0.1"]), {})
    try:
        with pytest.raises(Rejected, match="redirects are not followed"):
            sink.send(Delivery(name="b", body=b"{}\n", messages=[], content_type="application/x-ndjson"))
    finally:
        sink.close()
        outside.close()
        inside.close()
    assert outside.hits == 1 and inside.hits == 0
