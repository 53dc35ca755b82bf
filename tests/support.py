"""Shared pieces of the tests that drive the code under test: a queue runner, S3 settings, a failing
source, a simulated clock for schedules, and a warehouse table read back with its own client."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import clickhouse_connect
import psycopg
import pyarrow as pa
from deltalake import DeltaTable

from analytics_export import Settings, open_store
from analytics_export.errors import Storage
from analytics_export.models import ExportConfig, ScheduledExport
from analytics_export.runtime.scheduler import Scheduler, run_history
from analytics_export.runtime.worker import Worker
from analytics_export.sources import EventQuery
from analytics_export.store.jobs import JobStore

START = datetime(2026, 10, 1, tzinfo=timezone.utc)
WEEKS = ExportConfig(partition_hours=24 * 7, min_partition_events=1, partition_embedded=True)


def in_process(settings: Settings) -> Settings:
    """`settings` under which a worker runs each export in the worker's own process, not a child: tests of
    what a worker does with its jobs skip a child's start (about 0.7 s an export). The service's tests
    run the default."""
    return settings.model_copy(update={"export": settings.export.model_copy(update={"isolate": False})})


def run_queue(settings: Settings, jobs: JobStore) -> None:
    """Run every queued export (and partition) with one in-process worker until none is left."""
    worker = Worker(in_process(settings), jobs)
    while worker.run_one():
        pass


def s3_settings(settings: Settings, s3, monkeypatch, **export) -> Settings:
    """`settings` that may write to the test's S3 server with the server's own (test) credentials."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    return settings.model_copy(update={"export": ExportConfig(**export), "server_credentials": True,
                                       "destination_allow": ["127.0.0.1"]})


def s3_split(s3, bucket: str, events: int) -> dict:
    return {"type": "s3", "bucket": bucket, "endpoint_url": s3.endpoint, "region": s3.region,
            "prefix": "out", "max_events_per_file": events}


class FailingSource:
    """Yields real batches from the store, then fails like a dropped connection."""

    def __init__(self, store, after: int) -> None:
        self.store, self.after = store, after

    def batches(self, query: EventQuery, batch_size: int) -> pa.RecordBatchReader:
        inner = self.store.batches(query, batch_size)

        def gen():
            for i, batch in enumerate(inner):
                if i == self.after:
                    raise Storage("connection to the event store was lost")
                yield batch

        return pa.RecordBatchReader.from_batches(query.schema, gen())


class Sim:
    """An event store, a job store and a clock: events arrive as simulated time passes."""

    def __init__(self, data: Path) -> None:
        self.settings = in_process(Settings(data_dir=data))
        self.jobs = JobStore.for_data_dir(data)
        self.jobs.migrate()
        self.t = START
        self.count = 0
        open_store(self.settings, read_only=False).close()

    def ingest(self, n: int, late: bool = False) -> None:
        """`n` events stored now; late ones carry timestamps from days ago."""
        store = open_store(self.settings, read_only=False)
        try:
            lag = "INTERVAL 3 DAY" if late else "INTERVAL 5 SECOND"
            store.insert(f"""SELECT uuid() AS uuid, 'default' AS project_id, 'tick' AS event,
                                    'u' || (range + {self.count}) AS distinct_id, $1::TIMESTAMPTZ - {lag} AS "timestamp",
                                    '{{}}'::JSON AS properties, $1::TIMESTAMPTZ AS inserted_at FROM range({n})""",
                         [self.t])
        finally:
            store.close()
        self.count += n

    def clock(self) -> datetime:
        return self.t

    def exported(self) -> Counter:
        """distinct_id -> times it appears across every completed run's file."""
        seen: Counter = Counter()
        for path in (self.settings.export_dir / "default").glob("export_*.jsonl"):
            seen.update(json.loads(line)["distinct_id"] for line in path.read_text().splitlines())
        return seen

    def stored_before(self, end: datetime) -> set[str]:
        import duckdb
        con = duckdb.connect(str(self.settings.events_path), read_only=True)
        try:
            return {r[0] for r in con.execute("SELECT distinct_id FROM events WHERE inserted_at < ?", [end]).fetchall()}
        finally:
            con.close()


def drain(sim: Sim, scheduler: Scheduler, worker: Worker, spec: ScheduledExport) -> None:
    """Tick and work until no window of `spec` is due, queued, running or planned."""
    while scheduler.tick() or worker.run_one() or any(r["status"] == "planned" for r in
                                                      run_history(sim.jobs, spec.id, 100, 0)):
        pass


def tables_dir(settings: Settings) -> Path:
    return settings.data_dir / "tables" / settings.project


def read_table(settings: Settings, spec: dict, storage_options: dict | None = None) -> list[dict]:
    """Every row of the table, read back with the table's own client."""
    if spec["type"] == "postgres":
        with psycopg.connect(spec["url"]) as con:
            cur = con.execute(f"SELECT * FROM {spec['table']}")
            return [dict(zip([d.name for d in cur.description], row)) for row in cur.fetchall()]
    if spec["type"] == "clickhouse":
        ch = clickhouse_connect.get_client(interface="chdb", path=str(tables_dir(settings) / spec["url"][5:]))
        try:
            return ch.query_arrow(f"SELECT * FROM {spec['table']}").to_pylist()
        finally:
            ch.close()
    if spec["type"] == "snowflake":
        return snowflake_rows(spec)
    if spec["type"] == "bigquery":
        return bigquery_rows(spec)
    if spec["type"] == "iceberg":
        return iceberg_rows(settings, spec, storage_options)
    uri = spec["uri"] if spec["uri"].startswith("s3://") else str(tables_dir(settings) / spec["uri"])
    return DeltaTable(uri, storage_options=storage_options).to_pyarrow_table().to_pylist()


def snowflake_rows(spec: dict) -> list[dict]:
    """A Snowflake table's rows through the connector, the table's own columns under our (lower case) names."""
    import snowflake.connector
    from urllib.parse import urlsplit

    from analytics_export.warehouses import COLUMNS

    where = urlsplit(spec["url"])
    with snowflake.connector.connect(user=spec["user"], password="any", account=spec["account"], host=where.hostname,
                                     port=where.port, protocol=where.scheme) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {spec['table']}")
        names = [d.name.lower() if d.name.lower() in COLUMNS else d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def bigquery_rows(spec: dict) -> list[dict]:
    """A BigQuery table's rows (through BIGQUERY_EMULATOR_HOST), each column under the property name it holds."""
    import os

    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(project=spec["project"], credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=os.environ["BIGQUERY_EMULATOR_HOST"]))
    try:
        table = client.get_table(f"{spec['project']}.{spec['table']}")
        names = {f.name: f.description or f.name for f in table.schema}
        rows = client.query(f"SELECT * FROM `{spec['project']}.{spec['table']}`").result()
        return [{names.get(k, k): v for k, v in row.items()} for row in rows]
    finally:
        client.close()


def iceberg_rows(settings: Settings, spec: dict, properties: dict | None = None) -> list[dict]:
    """An Iceberg table's rows, read by pyiceberg through its catalog (SQLite in the warehouse folder unless
    the spec names one; `properties` are the file IO's settings, S3 keys for an s3:// warehouse), and
    checked against DuckDB's own read of the Parquet data files the current snapshot lists."""
    from pyiceberg.catalog.sql import SqlCatalog

    from analytics_export.warehouses.iceberg import CATALOG_FILE, CATALOG_NAME

    folder = tables_dir(settings) / spec["warehouse"]
    uri = spec.get("catalog_url") or f"sqlite:///{folder / CATALOG_FILE}"
    catalog = SqlCatalog(CATALOG_NAME, uri=uri.replace("postgresql://", "postgresql+psycopg://"), **(properties or {}))
    table = catalog.load_table(spec["table"])
    rows = table.scan().to_arrow().to_pylist()
    tasks = list(table.scan().plan_files())
    assert not any(task.delete_files for task in tasks), "pyiceberg rewrites files to delete: data files hold the rows"
    names = {field.field_id: field.name for field in table.schema().fields}
    read = parquet_rows([task.file.file_path for task in tasks], names, properties)
    assert Counter(map(row_key, read)) == Counter(map(row_key, rows)), "the data files hold what pyiceberg reads"
    return rows


def row_key(row: dict) -> tuple:
    return tuple(sorted(row.items()))


def parquet_rows(paths: list[str], names: dict[int, str], s3: dict | None) -> list[dict]:
    """The rows of Parquet files (file:// or s3://, copied out with pyarrow's S3 client), read by DuckDB, the
    columns an older file lacks as nulls; each column under the name `names` gives its field id (Iceberg
    writes `$device_type` as `_x24device_type`)."""
    import tempfile
    from urllib.parse import unquote, urlsplit

    import duckdb
    import pyarrow.parquet as pq
    from pyarrow import fs

    with tempfile.TemporaryDirectory() as tmp:
        files = [unquote(urlsplit(p).path) for p in paths if not p.startswith("s3://")]
        if s3:
            store = fs.S3FileSystem(access_key=s3["s3.access-key-id"], secret_key=s3["s3.secret-access-key"],
                                    endpoint_override=s3["s3.endpoint"], region=s3["s3.region"])
            for n, path in enumerate(p for p in paths if p.startswith("s3://")):
                with store.open_input_stream(path.removeprefix("s3://")) as source:
                    (Path(tmp) / f"{n}.parquet").write_bytes(source.read())
                files.append(str(Path(tmp) / f"{n}.parquet"))
        if not files:
            return []
        written = {f.name: names[int(f.metadata[b"PARQUET:field_id"])] for path in files for f in pq.read_schema(path)}
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            read = con.sql("SELECT * FROM read_parquet($files, union_by_name = true, hive_partitioning = false)",
                           params={"files": files}).to_arrow_table()
        finally:
            con.close()
        return read.rename_columns([written[name] for name in read.column_names]).to_pylist()
