"""Files laid out by each event's own time and name (`{event_date}`, `{event_hour}`, `{event}` in
path_template): read back whole with DuckDB's hive_partitioning and with pyarrow datasets, each
partition's count matching the store's; the manifest lists every file; late events land in their own
event-time partition; the number of partitions is bounded."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pytest
from conftest import with_demo_events
from pydantic import ValidationError
from support import run_queue, s3_settings

from analytics_export import Settings, export
from analytics_export.destinations.specs import MAX_PARTITIONS
from analytics_export.enums import ExportStatus
from analytics_export.errors import Invalid
from analytics_export.models import ExportRequest
from analytics_export.pipeline.layout import event_slug
from analytics_export.sources.stores import open_store
from analytics_export.store.jobs import JobStore

WINDOW = {"start_date": "2026-10-25", "end_date": "2026-11-01"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return with_demo_events(tmp_path_factory.mktemp("layout"), 20_000)


def sftp_to(sftp_server, folder: str, template: str, **limits) -> dict:
    return {"type": "sftp", "host": sftp_server.host, "port": sftp_server.port, "username": sftp_server.username,
            "path": folder, "path_template": template, "allow_unknown_host_key": True, **limits}


def run(data: Path, sftp_server, template: str, **fields):
    folder = f"/layout-{uuid.uuid4().hex[:8]}"
    limits = {k: fields.pop(k) for k in ("max_events_per_file", "max_file_size_mb") if k in fields}
    settings = Settings(data_dir=data, destination_allow=["127.0.0.1"])
    result = export(settings=settings, secrets={"password": sftp_server.password},
                    destination=sftp_to(sftp_server, folder, template, **limits), **{**WINDOW, **fields})
    return result, sftp_server.root / folder.strip("/")


def store_counts(data: Path, sql: str, start: str = WINDOW["start_date"], end: str = WINDOW["end_date"]) -> Counter:
    store = open_store(Settings(data_dir=data))
    try:
        rows = store.con.execute(f"SELECT {sql}, count(*) FROM events WHERE project_id = 'default' AND "
                                 f"\"timestamp\" >= '{start}' AND \"timestamp\" < '{end}' GROUP BY ALL").fetchall()
    finally:
        store.close()
    return Counter({tuple(r[:-1]): r[-1] for r in rows})


def downloaded(s3_server, bucket: str, folder: Path) -> Path:
    """Every object of `bucket` as a file under `folder` at its key (readers take local folders)."""
    client = s3_server.client()
    for item in client.list_objects_v2(Bucket=bucket)["Contents"]:
        path = folder / item["Key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
    return folder


def manifest(root: Path) -> dict:
    [path] = root.glob("*.manifest.json")
    return json.loads(path.read_text())


def test_by_day_and_event_read_back_with_duckdb_and_pyarrow(data, sftp_server):
    result, root = run(data, sftp_server, "date={event_date}/event={event}", format="parquet")
    expected = store_counts(data, "strftime(\"timestamp\", '%Y-%m-%d'), event")
    assert result.total_events == sum(expected.values()) > 1000
    folders = {p.parent.relative_to(root).as_posix() for p in root.rglob("*.parquet")}
    assert folders == {f"date={d}/event={event_slug(e)}" for d, e in expected}  # one folder per value
    assert "event=%24pageview" in {f.split("/")[1] for f in folders}  # `$pageview`, percent-encoded

    got = duckdb.sql(f"SELECT date::VARCHAR, event, count(*) FROM read_parquet('{root}/**/*.parquet', "
                     "hive_partitioning = true, hive_types_autocast = false) GROUP BY ALL").fetchall()
    # the file's own `event` column and the folder's agree, so DuckDB shows the stored names
    assert Counter({(d, e): n for d, e, n in got}) == expected

    dataset = ds.dataset(root, format="parquet", partitioning="hive", exclude_invalid_files=True)
    table = dataset.to_table(columns=["date", "timestamp"])
    assert table.num_rows == sum(expected.values())
    dates = Counter(table.column("date").to_pylist())
    assert dates == Counter({d: sum(n for (day, _), n in expected.items() if day == d) for d, _ in expected})

    listed = manifest(root)
    assert listed["total_events"] == result.total_events
    assert {(f["partition"]["event_date"], f["partition"]["event_name"]): f["events"] for f in listed["files"]} \
        == dict(expected)
    assert all(f["name"].startswith(f"date={f['partition']['event_date']}/") for f in listed["files"])


def test_by_hour_in_json_lines_split_into_parts(data, sftp_server):
    result, root = run(data, sftp_server, "{event_date}/{event_hour}", format="json_lines", max_events_per_file=7)
    expected = store_counts(data, "strftime(\"timestamp\", '%Y-%m-%d/%H')")
    files = list(root.rglob("*.jsonl"))
    per_folder = Counter(p.parent.relative_to(root).as_posix() for p in files)
    assert set(per_folder) == {k[0] for k in expected}
    counts = Counter()
    for path in files:
        lines = path.read_text().splitlines()
        assert 1 <= len(lines) <= 7
        folder = path.parent.relative_to(root).as_posix()
        assert all(json.loads(line)["timestamp"].startswith(folder.replace("/", "T")) for line in lines)
        counts[folder] += len(lines)
    assert counts == Counter({k[0]: n for k, n in expected.items()})
    assert len(manifest(root)["files"]) == len(files) == sum(-(-n // 7) for n in expected.values())
    assert result.total_events == sum(expected.values())


def test_late_events_land_in_their_own_day(tmp_path, sftp_server):
    """A window of storing time (as schedules take by default): events stored today with last week's
    timestamps go to last week's folders, not the run's."""
    data = tmp_path / "late"
    store = open_store(Settings(data_dir=data), read_only=False)
    now = datetime.now(timezone.utc)
    try:
        store.con.execute("INSERT INTO events (uuid, project_id, event, distinct_id, \"timestamp\", properties, "
                          "inserted_at) SELECT uuid(), 'default', 'late', 'u' || i, $1 - to_days(CAST(i % 3 AS INTEGER)), '{}', $2 "
                          "FROM range(30) t(i)", [now - timedelta(days=7), now])
    finally:
        store.close()
    result, root = run(data, sftp_server, "day={event_date}", start_date=(now - timedelta(hours=1)).isoformat(),
                       end_date=(now + timedelta(hours=1)).isoformat(), time_field="inserted_at")
    days = {(now - timedelta(days=7 + k)).strftime("%Y-%m-%d") for k in range(3)}
    assert {p.parent.name for p in root.rglob("*.jsonl")} == {f"day={d}" for d in days}
    assert result.total_events == 30
    got = duckdb.sql(f"SELECT day::VARCHAR, count(*) FROM read_json_auto('{root}/**/*.jsonl', "
                     "hive_partitioning = true) GROUP BY ALL").fetchall()
    assert sorted(n for _, n in got) == [10, 10, 10] and {d for d, _ in got} == days


def test_partitions_are_bounded(data, sftp_server):
    with pytest.raises(ValidationError, match="shorten the window"):
        ExportRequest(start_date="2020-01-01", end_date="2026-01-01", destination=sftp_to(
            sftp_server, "/x", "{event_hour}"))
    ExportRequest(start_date="2020-01-01", end_date="2026-01-01", destination=sftp_to(sftp_server, "/x", "{event_date}"))
    import analytics_export.pipeline.layout as layout

    original = layout.MAX_PARTITIONS
    layout.MAX_PARTITIONS = 5  # the counted partitions, over the bound: refused before a file is written
    try:
        with pytest.raises(Invalid, match="partitions; the most is 5"):
            run(data, sftp_server, "{event}/{event_date}")
    finally:
        layout.MAX_PARTITIONS = original
    assert MAX_PARTITIONS == original


def test_slugs_are_safe_and_distinct():
    names = ["signup", "$pageview", "Sign Up", "Sign_Up", "a/b", "../x", ".hidden", "_x", "é" * 300, "é" * 301]
    slugs = [event_slug(n) for n in names]
    assert len(set(slugs)) == len(names)
    assert all(len(s) <= 100 and "/" not in s and not s.startswith((".", "_")) for s in slugs)


def test_partitioned_run_by_workers_lays_out_every_window(demo_settings, tmp_path, s3_server, monkeypatch):
    """An export cut into weekly partitions that workers run apart: each writes its windows' files into
    the event-time folders, and the manifest the last one writes lists them all."""
    jobs = JobStore.for_data_dir(tmp_path / "jobs")
    jobs.migrate()
    settings = s3_settings(demo_settings, s3_server, monkeypatch, partition_hours=24 * 7, min_partition_events=1,
                           partition_embedded=True)
    bucket = s3_server.make_bucket(f"layout-{uuid.uuid4().hex[:8]}")
    request = ExportRequest(start_date="2026-09-01", end_date="2026-10-01", format="parquet", destination={
        "type": "s3", "bucket": bucket, "endpoint_url": s3_server.endpoint, "region": s3_server.region,
        "prefix": "lake", "path_template": "event={event}/date={event_date}"})
    jobs.create("default", request, 100)
    run_queue(settings, jobs)
    job = jobs.get("default", request.id)
    assert job.status is ExportStatus.COMPLETED, job.error
    root = downloaded(s3_server, bucket, tmp_path) / "lake"
    listed = manifest(root)
    assert sorted(f["name"] for f in listed["files"]) == sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))
    assert {f["name"].split(".part-")[1][:4] for f in listed["files"]} == {f"{k:04d}" for k in range(1, 6)}
    expected = store_counts(demo_settings.data_dir, "event, strftime(\"timestamp\", '%Y-%m-%d')", "2026-09-01",
                            "2026-10-01")
    got = duckdb.sql(f"SELECT event, date::VARCHAR, count(*) FROM read_parquet('{root}/**/*.parquet', "
                     "hive_partitioning = true, hive_types_autocast = false) GROUP BY ALL").fetchall()
    assert Counter({(e, d): n for e, d, n in got}) == expected
    assert listed["total_events"] == job.total_events == sum(expected.values())
    table = ds.dataset(root, format="parquet", partitioning="hive", exclude_invalid_files=True).to_table()
    assert table.num_rows == sum(expected.values())


def test_a_stream_writes_each_batch_into_its_events_folders(make_service, tmp_path, s3_server):
    """A stream to S3 laid out by day and event: each batch's events go to their own day's and name's
    folder (a batch with several gets a file in each, named alike), read back whole with DuckDB."""
    service = make_service(tmp_path / "svc", 1, {"ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]'})
    bucket = s3_server.make_bucket(f"stream-{uuid.uuid4().hex[:8]}")
    with service.client(service.key) as c:
        r = c.post("/api/connections", json={"name": "s3", "type": "s3", "secrets": {
            "access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key}})
        assert r.status_code == 201, r.text
        r = c.post("/api/streams", json={"name": "laid out", "max_batch_events": 40, "max_batch_seconds": 0.2,
                                         "destination": {"type": "s3", "bucket": bucket, "connection": "s3",
                                                         "endpoint_url": s3_server.endpoint, "prefix": "s",
                                                         "path_template": "date={event_date}/event={event}"}})
        assert r.status_code == 201, r.text
        stream_id = r.json()["stream"]["id"]
        now = datetime.now(timezone.utc)
        events = [{"event": ["signup", "$pageview", "Sign Up"][i % 3], "distinct_id": f"u{i}",
                   "timestamp": (now - timedelta(days=i % 4, minutes=i)).isoformat(), "properties": {"i": i}}
                  for i in range(300)]
        assert c.post("/api/events", json=events).status_code == 200
        deadline = time.monotonic() + 60
        while (view := c.get(f"/api/streams/{stream_id}").json())["delivered_events"] < 300:
            assert time.monotonic() < deadline, view
            time.sleep(0.2)
    root = downloaded(s3_server, bucket, tmp_path) / "s"
    got = duckdb.sql(f"SELECT date::VARCHAR, event, count(*) FROM read_json_auto('{root}/**/*.jsonl', "
                     "hive_partitioning = true, hive_types_autocast = false) GROUP BY ALL").fetchall()
    expected = Counter((datetime.fromisoformat(e["timestamp"]).strftime("%Y-%m-%d"), e["event"]) for e in events)
    assert Counter({(d, e): n for d, e, n in got}) == expected
    folders = {p.parent.relative_to(root).as_posix() for p in root.rglob("*.jsonl")}
    assert folders == {f"date={d}/event={event_slug(e)}" for d, e in expected}
    names = Counter(p.name for p in root.rglob("*.jsonl"))
    assert max(names.values()) > 1, "a batch's file in each of its partitions, named after the batch"
