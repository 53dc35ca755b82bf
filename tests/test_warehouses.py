"""Warehouse tables (PostgreSQL, ClickHouse through chDB, Delta Lake, Iceberg, Snowflake through fakesnow,
BigQuery through bqemulator): a load equals the source's
rows, a rerun of a window leaves exactly one copy, a failed load leaves the previous window, new
properties become new columns, and the worker and a daily schedule keep a table current."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pydantic import ValidationError
from servers import BigQueryServer, SnowflakeServer, free_port
from support import FailingSource, drain, read_table, run_queue, tables_dir
from support import Sim as ScheduleSim

from analytics_export import Settings, open_store
from analytics_export.connections import Sealer
from analytics_export.destinations import Placement, destination_for, registry
from analytics_export.errors import Cancelled, Invalid, Rejected, Storage
from analytics_export.enums import ExportStatus
from analytics_export.models import ExportConfig, ExportRequest, ExportResult, RetentionPolicy, ScheduledExport
from analytics_export.pipeline import run_export
from analytics_export.runtime.partitions import plan
from analytics_export.runtime.scheduler import Scheduler, Schedules, backfill, run_history
from analytics_export.runtime.worker import Worker
from analytics_export.sources import IDS, EventQuery
from analytics_export.store.jobs import JobStore
from analytics_export.streaming.sinks import Delivery, sink_for
from analytics_export.streaming.spec import StreamSpec
from analytics_export.warehouses.bigquery import column_names

UTC = timezone.utc
W1 = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 8, tzinfo=UTC))
W2 = (datetime(2026, 10, 8, tzinfo=UTC), datetime(2026, 10, 15, tzinfo=UTC))
KINDS = [pytest.param("postgres", marks=pytest.mark.server), "clickhouse", "delta", "iceberg",
         pytest.param("snowflake", marks=pytest.mark.server), pytest.param("bigquery", marks=pytest.mark.server)]
SECRETS = {"snowflake": {"password": SnowflakeServer.password}}
"""A connection's secrets by table type (the others need none here)."""
SELECTED = ["plan", "price", "$device_type", "utm.source x"]  # the last one: a column, no event has it


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.fixture()
def settings(demo_settings: Settings, tmp_path: Path) -> Settings:
    """The demo events, with tables (chDB, Delta) and the job store in a folder of this test's own."""
    return Settings(data_dir=tmp_path, events_url=str(demo_settings.events_path), destination_allow=["127.0.0.1"])


@pytest.fixture(params=KINDS)
def table(request: pytest.FixtureRequest) -> dict:
    """A table destination of each type, in a throwaway database or folder."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url").replace("postgresql+psycopg://", "postgresql://")
        return {"type": "postgres", "url": url, "table": "public.events"}
    if request.param == "clickhouse":
        return {"type": "clickhouse", "url": "chdb:warehouse", "table": "events"}
    if request.param == "snowflake":
        server: SnowflakeServer = request.getfixturevalue("snowflake_server")
        schema = server.make_schema("ANALYTICS", f"T{uuid.uuid4().hex[:12]}")
        return {"type": "snowflake", "account": server.account, "user": server.user, "table": f"{schema}.EVENTS",
                "url": server.url, "connection": "warehouse"}
    if request.param == "iceberg":
        return {"type": "iceberg", "table": "analytics.events", "warehouse": "lake"}
    if request.param == "bigquery":
        server: BigQueryServer = request.getfixturevalue("bigquery_server")
        request.getfixturevalue("monkeypatch").setenv("BIGQUERY_EMULATOR_HOST", server.endpoint)
        dataset = server.make_dataset(f"t{uuid.uuid4().hex[:12]}")
        return {"type": "bigquery", "project": server.project, "table": f"{dataset}.events"}
    return {"type": "delta", "uri": "lake/events"}


def with_connection(settings: Settings, jobs: JobStore, table: dict) -> JobStore:
    """`jobs`, holding the connection `table` names (the worker reads its secrets from there)."""
    if table.get("connection"):
        secrets = SECRETS[table["type"]]
        jobs.create_connection("default", table["connection"], table["type"], sorted(secrets),
                               Sealer(settings.signing_key()).seal(secrets))
    return jobs


def selected(table: dict) -> list[str]:
    """SELECTED, but for fakesnow, whose SQL parser takes a quoted `"$name"` for a session variable
    (Snowflake itself takes any quoted name)."""
    return [p.lstrip("$") for p in SELECTED] if table["type"] == "snowflake" else SELECTED


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def table_rows(settings: Settings, spec: dict, properties: list[str] | None = None,
               storage_options: dict | None = None) -> Counter:
    """The table's rows in a comparable form (see `source_rows`); duplicates count twice."""
    out: Counter = Counter()
    for row in read_table(settings, spec, storage_options):
        if properties is None:
            props = row["properties"]
            shown = json.dumps(json.loads(props) if isinstance(props, str) else props, sort_keys=True)
        else:  # BigQuery names a column `_browser` for `$browser`, and says so in its description
            shown = tuple(row[p] if p in row else row[column_names([p])[0]] for p in properties)
        out[(str(row["uuid"]), row["event"], row["distinct_id"], aware(row["timestamp"]), aware(row["inserted_at"]),
             shown)] += 1
    return out


def source_rows(settings: Settings, windows: list[tuple[datetime, datetime]], properties: list[str] | None = None,
                time_field: str = "timestamp", hidden: tuple[str, ...] = ()) -> Counter:
    """The store's events in `windows`, read with plain SQL: properties (but the `hidden` ones) as a sorted
    JSON object, or the selected ones as the tabular formats carry them (strings raw, others as JSON text)."""
    con = duckdb.connect(str(settings.events_path), read_only=True)
    out: Counter = Counter()
    try:
        con.execute("SET TimeZone = 'UTC'")
        for start, end in windows:
            for uuid, event, distinct_id, ts, props, inserted in con.execute(
                    f"""SELECT uuid::VARCHAR, event, distinct_id, "timestamp", CAST(properties AS VARCHAR), inserted_at
                        FROM events WHERE project_id = ? AND "{time_field}" >= ? AND "{time_field}" < ?""",
                    [settings.project, start, end]).fetchall():
                values = {k: v for k, v in json.loads(props).items() if k not in hidden}
                if properties is None:
                    shown = json.dumps(values, sort_keys=True)
                else:
                    shown = tuple(None if p not in values else values[p] if isinstance(values[p], str)
                                  else json_text(values[p]) for p in properties)
                out[(uuid, event, distinct_id, ts, inserted, shown)] += 1
    finally:
        con.close()
    return out


def load(settings: Settings, spec: dict, window: tuple[datetime, datetime], *,
         source: Callable[[Any], Any] | None = None, **fields: Any) -> ExportResult:
    """Run one export of `window` into the table `spec`, as `export()` and the worker do."""
    request = ExportRequest(start_date=window[0], end_date=window[1], destination=spec, **fields)
    destination = destination_for(Placement.for_export(request, settings.project, settings,
                                                       SECRETS.get(spec["type"], {})))
    store = open_store(settings)
    try:
        return run_export(request, source(store) if source else store, destination, project=settings.project,
                          batch_size=256)
    finally:
        destination.close()
        store.close()


def test_load_equals_source_and_reruns_keep_one_copy(settings: Settings, table: dict):
    first = load(settings, table, W1)
    expected = source_rows(settings, [W1])
    assert first.status is ExportStatus.COMPLETED and first.total_events == sum(expected.values()) > 1000
    assert first.file_size == 0 and "table" in first.destination_path and "2026-10-01" in first.destination_path
    assert table_rows(settings, table) == expected
    again = load(settings, table, W1)  # a one-off rerun: another export id, the same window
    assert again.total_events == first.total_events
    assert table_rows(settings, table) == expected, "a rerun leaves exactly one copy"
    load(settings, table, W2)
    assert table_rows(settings, table) == source_rows(settings, [W1, W2]), "another window appends"


@pytest.mark.parametrize("failure", ["source", "cancel"])
def test_failed_load_leaves_the_previous_window(settings: Settings, table: dict, failure: str):
    load(settings, table, W1)
    before = table_rows(settings, table)
    if failure == "source":
        with pytest.raises(Storage, match="was lost"):
            load(settings, table, W1, source=lambda store: FailingSource(store, after=3))
    else:
        request = ExportRequest(start_date=W1[0], end_date=W1[1], destination=table)
        destination = destination_for(Placement.for_export(request, settings.project, settings,
                                                           SECRETS.get(table["type"], {})))
        seen: list[int] = []
        store = open_store(settings)
        try:
            with pytest.raises(Cancelled):
                run_export(request, store, destination, project=settings.project, batch_size=256,
                           on_progress=lambda p: seen.append(p.events), should_stop=lambda: len(seen) >= 3)
        finally:
            destination.close()
            store.close()
    assert table_rows(settings, table) == before


def test_selected_properties_become_columns_and_new_ones_are_added(settings: Settings, table: dict):
    names = selected(table)
    load(settings, table, W1, properties=names[:2])
    assert table_rows(settings, table, names[:2]) == source_rows(settings, [W1], names[:2])
    load(settings, table, W2, properties=names)
    rows = table_rows(settings, table, names)
    before = source_rows(settings, [W1], names[:2])
    old = Counter({key[:5] + (key[5] + (None, None),): n for key, n in before.items()})
    assert rows == old + source_rows(settings, [W2], names), "earlier rows have no value in the new column"
    with pytest.raises(Invalid, match="'uuid'"):
        load(settings, table, W1, properties=["plan", "uuid"])


def test_delta_partitioned_by_day(settings: Settings):
    spec = {"type": "delta", "uri": "daily", "partition_by_day": True}
    load(settings, spec, W1)
    load(settings, spec, W1)
    lake = DeltaTable(str(tables_dir(settings) / "daily"))
    assert lake.metadata().partition_columns == ["day"]
    days = {str(v) for v in lake.to_pyarrow_table().column("day").unique().to_pylist()}
    assert days == {f"2026-10-0{d}" for d in range(1, 8)}
    assert table_rows(settings, spec) == source_rows(settings, [W1])


def test_worker_loads_a_long_export_whole_with_privacy(settings: Settings, table: dict):
    settings = settings.model_copy(update={"export": ExportConfig(partition_hours=24, min_partition_events=1)})
    jobs = JobStore.for_data_dir(settings.data_dir / "jobs")
    jobs.migrate()
    with_connection(settings, jobs, table)
    request = ExportRequest(start_date=W1[0], end_date=W2[1], destination=table, time_field="inserted_at",
                            privacy={"deny_properties": ["plan"]})
    assert plan(request, settings.export) == [], "a file export of two weeks would run as 14 partitions"
    rerun = request.model_copy(update={"id": str(uuid.uuid4())})
    for each in (request, rerun):
        jobs.create("default", each, 100)
        run_queue(settings, jobs)
        job = jobs.get("default", each.id)
        assert job.status is ExportStatus.COMPLETED, job.error
    expected = source_rows(settings, [(W1[0], W2[1])], time_field="inserted_at", hidden=("plan",))
    assert job.total_events == sum(expected.values())
    assert table_rows(settings, table) == expected


def export_twice(settings: Settings, jobs: JobStore, spec: dict) -> None:
    """Two exports of W1 with SELECTED into `spec`, each run by the worker to completion."""
    for _ in range(2):
        request = ExportRequest(start_date=W1[0], end_date=W1[1], destination=spec, properties=SELECTED)
        jobs.create("default", request, 100)
        run_queue(settings, jobs)
        job = jobs.get("default", request.id)
        assert job.status is ExportStatus.COMPLETED, job.error


def test_delta_on_s3_through_the_worker_with_a_connection(settings: Settings, s3_server):
    bucket = s3_server.make_bucket("lake-worker")
    jobs = JobStore.for_data_dir(settings.data_dir / "jobs")
    jobs.migrate()
    keys = {"access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key}
    jobs.create_connection("default", "lake", "delta", sorted(keys), Sealer(settings.signing_key()).seal(keys))
    spec = {"type": "delta", "uri": f"s3://{bucket}/events", "endpoint_url": s3_server.endpoint, "connection": "lake"}
    export_twice(settings, jobs, spec)
    options = {"aws_region": "us-east-1", "aws_endpoint_url": s3_server.endpoint, "aws_allow_http": "true",
               **{f"aws_{k}": v for k, v in keys.items()}}
    assert table_rows(settings, spec, SELECTED, options) == source_rows(settings, [W1], SELECTED)


class Sim(ScheduleSim):
    """support.Sim's event store, job store and clock, with the local PostgreSQL allowed."""

    def __init__(self, data: Path) -> None:
        super().__init__(data)
        self.settings = self.settings.model_copy(update={"destination_allow": ["127.0.0.1"]})


def test_a_daily_schedule_keeps_the_table_current(tmp_path: Path, table: dict):
    sim = Sim(tmp_path)
    with_connection(sim.settings, sim.jobs, table)
    spec = ScheduledExport(name="daily", schedule="0 1 * * *", date_range="last_day", destination=table)
    Schedules(sim.jobs).create("default", spec, sim.t)
    scheduler = Scheduler(sim.jobs, "s", clock=sim.clock)
    worker = Worker(sim.settings, sim.jobs)

    for day in range(4):
        sim.t += timedelta(hours=6)
        sim.ingest(7, late=day == 2)  # late events land in the window they were stored in
        sim.t += timedelta(hours=18)
        drain(sim, scheduler, worker, spec)
    runs = run_history(sim.jobs, spec.id, 100, 0)
    assert {r["status"] for r in runs} == {"completed"}
    covered = (min(r["window_start"] for r in runs), max(r["window_end"] for r in runs))
    expected = source_rows(sim.settings, [covered], time_field="inserted_at")
    assert sum(expected.values()) == 21 and table_rows(sim.settings, table) == expected
    forced = backfill(sim.jobs, "default", spec.id, *covered, force=True)
    assert forced == {"queued": len(runs), "skipped": 0}
    drain(sim, scheduler, worker, spec)  # the same windows again, under the same export ids
    assert table_rows(sim.settings, table) == expected, "rerun windows replace themselves"


def stream_batch(numbers: range, stored: datetime, first: int = 0) -> list[pa.RecordBatch]:
    """Events as a stream reads them for a table (Parquet's shape, with uuid and inserted_at); event
    `first` was stored at `stored`, each next one a microsecond later."""
    rows = [{"event": "e", "distinct_id": f"u{n % 3}", "timestamp": stored - timedelta(seconds=n),
             "properties": json_text({"n": n}), "uuid": str(uuid.UUID(int=n + 1)),
             "inserted_at": stored + timedelta(microseconds=n - first)} for n in numbers]
    return [pa.RecordBatch.from_pylist(rows, schema=EventQuery(project="p", start=stored, end=stored,
                                                               ids=IDS).schema)]


def test_a_stream_appends_and_a_batch_sent_again_replaces_only_its_own_copy(settings: Settings, table: dict):
    spec = StreamSpec(name="to a table", destination=table)
    sink = sink_for(spec, settings.project, settings, SECRETS.get(table["type"], {}))
    stored = datetime(2026, 11, 2, 12, tzinfo=UTC)
    try:
        other = stream_batch(range(1000, 1050), stored, first=1000)  # stored at the same time as 0-49
        sink.send(Delivery("a", b"", [], "", rows=other))  # another stream's rows in the same table
        sink.send(Delivery("b", b"", [], "", rows=stream_batch(range(0, 100), stored)))
        sink.send(Delivery("b", b"", [], "", rows=stream_batch(range(0, 150), stored)))  # sent again, read further
        sink.send(Delivery("c", b"", [], "", rows=stream_batch(range(150, 200), stored)))
    finally:
        sink.close()
    numbers = Counter(json.loads(r["properties"])["n"] if isinstance(r["properties"], str) else r["properties"]["n"]
                      for r in read_table(settings, table))
    assert numbers == Counter([*range(0, 200), *range(1000, 1050)])


def test_a_property_selected_mid_stream_becomes_a_column(settings: Settings, table: dict):
    """A stream's selection grows (PATCHed to one more property): the next batch adds the column, and the
    rows already there keep theirs, with no value in the new one."""
    spec = StreamSpec(name="columns", destination=table)
    sink = sink_for(spec, settings.project, settings, SECRETS.get(table["type"], {}))
    stored = datetime(2026, 11, 3, 12, tzinfo=UTC)
    names = selected(table)[:2]

    def rows(numbers: range, properties: tuple[str, ...]) -> list[pa.RecordBatch]:
        schema = EventQuery(project="p", start=stored, end=stored, properties=properties, property_columns=True,
                            ids=IDS).schema
        return [pa.RecordBatch.from_pylist([
            {"event": "e", "distinct_id": "u", "timestamp": stored, **{p: f"{p}-{n}" for p in properties},
             "uuid": str(uuid.UUID(int=n + 1)), "inserted_at": stored + timedelta(microseconds=n)}
            for n in numbers], schema=schema)]

    try:
        sink.send(Delivery("a", b"", [], "", rows=rows(range(0, 10), (names[0],))))
        sink.send(Delivery("b", b"", [], "", rows=rows(range(10, 20), tuple(names))))
    finally:
        sink.close()
    got = {int(uuid.UUID(str(r["uuid"]))) - 1: (r[names[0]], r[names[1]] if names[1] in r else
                                                 r[column_names([names[1]])[0]]) for r in read_table(settings, table)}
    assert got == {n: (f"{names[0]}-{n}", f"{names[1]}-{n}" if n >= 10 else None) for n in range(20)}


def test_table_destinations_validate():
    url = "postgresql://app@db.example.com/analytics?sslmode=require"
    ok = ExportRequest(start_date=W1[0], end_date=W1[1], destination={
        "type": "postgres", "url": url, "table": "analytics.events", "connection": "warehouse"})
    assert ok.destination.split_limits() == (None, None)
    bad = [
        {"type": "postgres", "url": "postgresql://app:secret@db.example.com/analytics", "table": "events"},
        {"type": "postgres", "url": "postgresql:///analytics?host=/var/run/postgresql", "table": "events"},
        {"type": "postgres", "url": "postgresql://db.example.com/a?passfile=/etc/x", "table": "events"},
        {"type": "postgres", "url": "postgresql://db.example.com/a", "table": "events; DROP TABLE x"},
        {"type": "clickhouse", "url": "chdb:../../etc", "table": "events"},
        {"type": "clickhouse", "url": "chdb:/tmp/x", "table": "events"},
        {"type": "clickhouse", "url": "clickhouse://u:p@ch.example.com:8123/db", "table": "events"},
        {"type": "delta", "uri": "/var/lib/lake"},
        {"type": "delta", "uri": "lake/../../x"},
        {"type": "delta", "uri": "lake", "connection": "aws"},
        {"type": "snowflake", "account": "acme", "user": "u", "table": "events"},  # not DATABASE.SCHEMA.TABLE
        {"type": "snowflake", "account": "acme", "user": "u", "table": "db.s.t; DROP TABLE x"},
        {"type": "snowflake", "account": "acme/x", "user": "u", "table": "db.s.t"},
        {"type": "snowflake", "account": "acme", "user": "u", "table": "db.s.t", "url": "http://h/path"},
        {"type": "snowflake", "account": "acme", "user": "u", "table": "db.s.t", "password": "inline"},
        {"type": "iceberg", "table": "raw.events", "warehouse": "s3://lake/w"},  # no catalog_url
        {"type": "iceberg", "table": "raw.events", "warehouse": "../lake"},
        {"type": "iceberg", "table": "events", "warehouse": "lake"},  # not NAMESPACE.TABLE
        {"type": "iceberg", "table": "raw.events", "warehouse": "lake", "endpoint_url": "http://h:9000"},
        {"type": "iceberg", "table": "raw.events", "warehouse": "lake", "catalog_url": "postgresql://u:pw@h/db"},
        {"type": "iceberg", "table": "raw.events", "warehouse": "lake", "catalog_url": "file:///etc/x"},
        {"type": "bigquery", "project": "Bad_Project", "table": "ds.events"},
        {"type": "bigquery", "project": "analytics-prod", "table": "events"},  # not DATASET.TABLE
        {"type": "bigquery", "project": "analytics-prod", "table": "ds.events`; DROP"},
    ]
    for destination in bad:
        with pytest.raises(ValidationError):
            ExportRequest(start_date=W1[0], end_date=W1[1], destination=destination)
    with pytest.raises(ValidationError, match="not a table"):
        RetentionPolicy(days=30, destination={"type": "delta", "uri": "archive"})


def test_snowflake_needs_a_connection_and_takes_a_key_pair(settings: Settings, snowflake_server: SnowflakeServer):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    schema = snowflake_server.make_schema("ANALYTICS", f"K{uuid.uuid4().hex[:12]}")
    table = {"type": "snowflake", "account": snowflake_server.account, "user": snowflake_server.user,
             "table": f"{schema}.EVENTS", "url": snowflake_server.url}
    request = ExportRequest(start_date=W1[0], end_date=W1[1], destination=table)
    with pytest.raises(Invalid, match="needs a connection"):
        destination_for(Placement.for_export(request, settings.project, settings, {}))
    with pytest.raises(Invalid, match="not a PEM private key"):
        destination_for(Placement.for_export(request, settings.project, settings, {"private_key": "not a key"}))
    with pytest.raises(ValueError, match="password or secrets.private_key"):
        registry.get("snowflake").check_secrets({"private_key_passphrase": "x"})
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"phrase")).decode()
    destination = destination_for(Placement.for_export(request, settings.project, settings,
                                                       {"private_key": pem, "private_key_passphrase": "phrase"}))
    store = open_store(settings)
    try:
        run_export(request, store, destination, project=settings.project)
    finally:
        store.close()
    assert table_rows(settings, table) == source_rows(settings, [W1])


def test_bigquery_table_is_partitioned_by_day_and_needs_credentials(settings: Settings, bigquery_server: BigQueryServer,
                                                                    monkeypatch: pytest.MonkeyPatch):
    table = {"type": "bigquery", "project": bigquery_server.project,
             "table": f"{bigquery_server.make_dataset(f'p{uuid.uuid4().hex[:12]}')}.events"}
    request = ExportRequest(start_date=W1[0], end_date=W1[1], destination=table)
    with pytest.raises(Invalid, match="needs a connection"):
        destination_for(Placement.for_export(request, settings.project, settings, {}))
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bigquery_server.endpoint)
    load(settings, table, W1)
    client = bigquery_server.client()
    try:
        made = client.get_table(f"{table['project']}.{table['table']}")
        assert (made.time_partitioning.type_, made.time_partitioning.field) == ("DAY", "timestamp")
        assert made.clustering_fields == ["event"]
        assert {f.name: f.field_type for f in made.schema}["properties"] == "JSON"
        assert [t.table_id for t in client.list_tables(table["table"].split(".")[0])] == ["events"], \
            "the load table is gone"
    finally:
        client.close()


def iceberg_table(settings: Settings, spec: dict):
    """The pyiceberg table `spec` names, through its default catalog (SQLite in the warehouse folder)."""
    from pyiceberg.catalog.sql import SqlCatalog

    from analytics_export.warehouses.iceberg import CATALOG_FILE, CATALOG_NAME

    uri = f"sqlite:///{tables_dir(settings) / spec['warehouse'] / CATALOG_FILE}"
    return SqlCatalog(CATALOG_NAME, uri=uri).load_table(spec["table"])


def test_iceberg_load_is_one_commit_of_many_chunks_and_a_failed_one_commits_nothing(
        settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """With a chunk per batch, a load writes many chunks of files yet commits once: a delete and one
    append. A load failing after three chunks were written leaves the table's metadata as it was."""
    from analytics_export.warehouses import iceberg

    monkeypatch.setattr(iceberg, "CHUNK_BYTES", 1)
    spec = {"type": "iceberg", "table": "analytics.events", "warehouse": "lake"}
    load(settings, spec, W1)
    first = iceberg_table(settings, spec)
    assert [(f.name, str(f.transform)) for f in first.spec().fields] == [("timestamp_day", "day")]
    assert [s.summary.operation.value for s in first.snapshots()] == ["append"], "the first load deleted nothing"
    load(settings, spec, W1)
    again = iceberg_table(settings, spec)
    assert len(again.metadata.metadata_log) == len(first.metadata.metadata_log) + 1, "one commit"
    added = [s.summary.operation.value for s in again.snapshots()[1:]]
    assert added[-1] == "append" and len(added) == 2, added
    assert len(list(again.scan().plan_files())) > 7, "files of several chunks a day"
    assert table_rows(settings, spec) == source_rows(settings, [W1])

    written = set((tables_dir(settings) / "lake").rglob("*.parquet"))
    with pytest.raises(Storage, match="was lost"):
        load(settings, spec, W1, source=lambda store: FailingSource(store, after=3))
    assert set((tables_dir(settings) / "lake").rglob("*.parquet")) - written, "chunks were written before the failure"
    after = iceberg_table(settings, spec)
    assert after.metadata_location == again.metadata_location, "nothing committed"
    assert table_rows(settings, spec) == source_rows(settings, [W1])


def test_iceberg_on_s3_with_a_postgres_catalog_through_the_worker(settings: Settings, s3_server, pg_url: str):
    """Data files on S3 (moto), the catalog in PostgreSQL, keys and the catalog's password from a
    connection; the table is partitioned by day (and read back by DuckDB from its data files too)."""
    from pyiceberg.catalog.sql import SqlCatalog

    from analytics_export.warehouses.iceberg import CATALOG_NAME

    bucket = s3_server.make_bucket("iceberg-worker")
    jobs = JobStore.for_data_dir(settings.data_dir / "jobs")
    jobs.migrate()
    keys = {"access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key}
    jobs.create_connection("default", "lake", "iceberg", sorted(keys), Sealer(settings.signing_key()).seal(keys))
    catalog_url = pg_url.replace("postgresql+psycopg://", "postgresql://")  # trust auth: no catalog_password
    spec = {"type": "iceberg", "table": "raw.events", "warehouse": f"s3://{bucket}/warehouse",
            "catalog_url": catalog_url, "endpoint_url": s3_server.endpoint, "connection": "lake"}
    export_twice(settings, jobs, spec)
    io = {"s3.endpoint": s3_server.endpoint, "s3.access-key-id": s3_server.access_key,
          "s3.secret-access-key": s3_server.secret_key, "s3.region": "us-east-1"}
    assert table_rows(settings, spec, SELECTED, io) == source_rows(settings, [W1], SELECTED)
    table = SqlCatalog(CATALOG_NAME, uri=pg_url, **io).load_table("raw.events")
    assert [(f.name, str(f.transform)) for f in table.spec().fields] == [("timestamp_day", "day")]
    files = [task.file.file_path for task in table.scan().plan_files()]
    assert all(f.startswith(f"s3://{bucket}/warehouse/") for f in files)
    assert len({f.split("/timestamp_day=")[1].split("/")[0] for f in files}) == 7, "one partition a day"


def test_bigquery_stages_large_loads_in_a_gcs_bucket(settings: Settings, bigquery_server: BigQueryServer,
                                                    monkeypatch: pytest.MonkeyPatch):
    """With a staging bucket, each Parquet file goes to GCS and one load job reads them from gs://; the
    staged objects are removed after."""
    import analytics_export.warehouses as warehouses

    monkeypatch.setattr(warehouses, "FILE_ROWS", 300)  # several files for one window
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bigquery_server.endpoint)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", bigquery_server.gcs.endpoint)
    bucket = bigquery_server.gcs.make_bucket(f"stage-{uuid.uuid4().hex[:12]}")
    table = {"type": "bigquery", "project": bigquery_server.project, "staging_bucket": bucket,
             "table": f"{bigquery_server.make_dataset(f'g{uuid.uuid4().hex[:12]}')}.events"}
    for _ in range(2):
        load(settings, table, W1)
    assert table_rows(settings, table) == source_rows(settings, [W1])
    assert list(bigquery_server.gcs.client().list_blobs(bucket)) == [], "the staged files are removed"
    client = bigquery_server.client()
    try:
        uris = [job.source_uris for job in client.list_jobs() if job.job_type == "load" and job.source_uris
                and job.source_uris[0].startswith(f"gs://{bucket}/")]
    finally:
        client.close()
    assert len(uris) == 2 and all(len(u) > 1 and all(x.startswith(f"gs://{bucket}/") for x in u) for u in uris), \
        "one load job a run, from several staged files"


@pytest.mark.parametrize("kind", [pytest.param("snowflake", marks=pytest.mark.server),
                                  pytest.param("bigquery", marks=pytest.mark.server)])
def test_cloud_warehouse_errors_say_what_failed_and_only_transient_ones_are_retried(
        settings: Settings, kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A table whose `properties` column someone made a number refuses the load: Rejected, which the
    worker does not retry, without the event's values; an endpoint that does not answer is Storage,
    retried. Each names the table and the reason. (fakesnow creates missing databases and answers a
    failed INSERT with a 500, and bqemulator a missing dataset with a 500: those refusals of the real
    services cannot be shown here.)"""
    settings = settings.model_copy(update={"export": ExportConfig(upload_retries=1, upload_backoff_seconds=0.01)})
    closed = f"http://127.0.0.1:{free_port()}"
    if kind == "snowflake":
        server: Any = request.getfixturevalue("snowflake_server")
        table = f"{server.make_schema('BROKEN', f'B{uuid.uuid4().hex[:12]}')}.EVENTS"
        with server.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (EVENT VARCHAR, DISTINCT_ID VARCHAR, TIMESTAMP TIMESTAMP_TZ, "
                        "PROPERTIES NUMBER, UUID VARCHAR, INSERTED_AT TIMESTAMP_TZ)")
        broken = {"type": "snowflake", "account": server.account, "user": server.user, "url": server.url,
                  "table": table}
        down = {**broken, "url": closed}
    else:
        server = request.getfixturevalue("bigquery_server")
        monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", server.endpoint)
        dataset = server.make_dataset(f"b{uuid.uuid4().hex[:12]}")
        client = server.client()
        client.query(f"CREATE TABLE `{server.project}.{dataset}.events` (event STRING, distinct_id STRING, "
                     "`timestamp` TIMESTAMP, properties INT64, uuid STRING, inserted_at TIMESTAMP)").result()
        client.close()
        broken = down = {"type": "bigquery", "project": server.project, "table": f"{dataset}.events"}
    if kind == "bigquery":  # fakesnow answers such a failed INSERT with an HTTP 500, which the connector retries
        with pytest.raises(Rejected, match=f"(?i){kind} table .*(propert|convert|cast|type)") as refused:
            load(settings, broken, W1)
        assert "Safari" not in str(refused.value), "no event's values in the error"
        monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", closed)
    with pytest.raises(Storage, match=f"(?i){kind} table .*(connect|refused)"):
        load(settings, down, W1)


def test_delta_on_s3_needs_credentials(settings: Settings):
    request = ExportRequest(start_date=W1[0], end_date=W1[1], destination={"type": "delta", "uri": "s3://lake/events"})
    with pytest.raises(Invalid, match="needs a connection"):
        destination_for(Placement.for_export(request, settings.project, settings, {}))
