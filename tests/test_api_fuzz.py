"""schemathesis against /openapi.json with a valid key: no input makes the server answer 500, and
every response matches the schema."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import TypeAdapter, ValidationError
from schemathesis.specs.openapi.checks import positive_data_acceptance

from analytics_export import Settings
from analytics_export.api.app import create_app
from analytics_export.api.destinations import AnyDestination
from analytics_export.destinations.guard import destination_hosts
from analytics_export.store.jobs import JobStore


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz")
    config = Settings(data_dir=data)
    jobs = JobStore.for_data_dir(data)
    jobs.migrate()
    app = create_app(config, jobs)
    app.state.key = jobs.create_key("default")
    return app


def operations(app) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def stays_here(case) -> bool:
    """Whether `case` may run without sending anything off this machine: `POST /api/destinations/test`
    connects to the hosts a destination names, so it is fuzzed with invalid settings (a 422), hosts the
    SSRF guard refuses (loopback and private addresses), and names it cannot resolve; public addresses
    and resolvable names are left out (the suite talks to 127.0.0.1 only). Alert channels' URLs are
    resolved by the guard when created or changed: the same rule."""
    if case.path.startswith("/api/alert-channels") and case.method in ("POST", "PATCH"):
        url = case.body.get("url") if isinstance(case.body, dict) else None  # checked by the guard at create
        try:
            return not isinstance(url, str) or local(urlsplit(url).hostname or "")
        except ValueError:  # not a URL: a 422 before any lookup
            return True
    if case.path != "/api/destinations/test":
        return True
    try:
        spec = TypeAdapter(AnyDestination).validate_python((case.body or {}).get("destination"))
    except (ValidationError, AttributeError):
        return True
    return all(local(host) for _, host in destination_hosts(spec))


def local(host: str) -> bool:
    """Whether connecting to (or resolving) `host` stays on this machine: not a public address, not a
    name DNS might answer."""
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_global
    except ValueError:
        return not ("." in host.strip(".") or host.lower() == "localhost")


def test_api_never_fails(api):
    """Each operation in turn (schemathesis' pytest plugin does not run under pytest 9)."""
    headers = {"Authorization": f"Bearer {api.state.key}"}
    ops = operations(api)
    assert {op.path for op in ops} >= {"/api/exports", "/api/exports/{export_id}", "/api/exports/{export_id}/download",
                                       "/api/destinations/test", "/api/alert-channels", "/api/alerts"}
    for op in ops:

        @given(case=op.as_strategy().filter(stays_here))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            # A schema cannot say `end_date > start_date`; rejecting such bodies with 422 is right.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()
