from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import uuid

from analytics_export import Settings, open_store
from analytics_export.demo import generate
from helpers import RFC3339

DEMO_END = datetime(2026, 11, 1, tzinfo=timezone.utc)
DEMO_EVENTS = 20_000
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

pytest_plugins = ["servers", "brokers", "service"]  # their fixtures, for every test module

BY_DESIGN_SKIPS = (
    "a stream names its own destination",  # test_abuse: the stream route has no destination field to oversize
    "the GCS emulator ignores `generation=`",  # test_readback: test_gcs_read_pins_the_generation checks it instead
)
"""The only skips CI=true lets pass: a case that does not apply, never a server or tool that is missing."""


SERVER_FIXTURES = {"make_service", "pg_url", "pg_url_module", "nats_url", "rabbitmq_url", "azurite", "gcs_server"}
"""Fixtures that start a program or reach a server outside pytest's process: a test using one, even
through another fixture, is marked `server` (scripts/test --fast leaves those out)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


def fail_skips_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI=true a skip fails unless its reason starts with one of BY_DESIGN_SKIPS: a CI machine
    has every server and tool (scripts/bootstrap --dev), so a skip there is coverage lost."""
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not reason.startswith(BY_DESIGN_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every server and tool must be present: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    fail_skips_under_ci((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A whole module skipped (pytest.importorskip, allow_module_level) counts too."""
    fail_skips_under_ci((yield).get_result())


def with_demo_events(data: Path, events: int) -> Path:
    """`data` as a data dir holding `events` demo events in the 90 days before 2026-11-01."""
    store = open_store(Settings(data_dir=data), read_only=False)
    try:
        generate(store, events, "default", end=DEMO_END)
    finally:
        store.close()
    return data


@pytest.fixture(scope="session")
def demo_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=with_demo_events(tmp_path_factory.mktemp("demo"), DEMO_EVENTS))


@pytest.fixture(scope="session")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1M demo events: exports of them take long enough to be killed midway. Generated once per run
    (about 11 s) and copied (a fraction of a second) into a data dir of each pytest-xdist worker's own."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # one run's workers share the parent
    made = shared / "big-events.duckdb"
    with open(shared / "big-events.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker generates, the others wait for it
        if not made.exists():
            generated = with_demo_events(Path(tempfile.mkdtemp(prefix="big-", dir=shared)), 1_000_000)
            (generated / "events.duckdb").rename(made)
    data = tmp_path_factory.mktemp("big")
    shutil.copyfile(made, data / "events.duckdb")
    return data


def stored_rows(settings: Settings, start: datetime, end: datetime, events: list[str] | None = None) -> list[dict[str, Any]]:
    """The store's events in [start, end), read with plain SQL, properties parsed by Python."""
    con = duckdb.connect(str(settings.events_path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(
            f"""SELECT event, distinct_id, strftime("timestamp", '{RFC3339}'), CAST(properties AS VARCHAR)
                FROM events WHERE project_id = ? AND "timestamp" >= ? AND "timestamp" < ?""",
            [settings.project, start, end],
        ).fetchall()
    finally:
        con.close()
    out = [{"event": e, "distinct_id": d, "timestamp": t, "properties": json.loads(p)} for e, d, t, p in rows]
    return [r for r in out if not events or r["event"] in events]


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def expected(rows: list[dict[str, Any]], fmt: str, properties: list[str] | None) -> list[dict[str, Any]]:
    """What an export of `rows` must contain in `fmt`, per the format semantics in docs/formats.md."""
    out = []
    for r in rows:
        base = {k: r[k] for k in ("event", "distinct_id", "timestamp")}
        props = r["properties"]
        if properties is None:
            base["properties"] = props
        elif fmt in ("json", "json_lines"):
            base["properties"] = {k: props.get(k) for k in properties}
        else:
            for k in properties:
                if k not in props:
                    value = None
                elif isinstance(props[k], str):
                    value = props[k]
                else:
                    value = json_text(props[k])
                base[k] = "" if value is None and fmt == "csv" else value
        out.append(base)
    return out


def throwaway_database():
    """A throwaway database on the machine's PostgreSQL (127.0.0.1:5432), dropped afterwards."""
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc}); scripts/test starts it")
    name = f"ae_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture()
def pg_url():
    yield from throwaway_database()


@pytest.fixture(scope="module")
def pg_url_module():
    yield from throwaway_database()
