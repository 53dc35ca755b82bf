"""`include`: each event's `uuid` and `inserted_at` as extra columns, in every format and path (one run,
partitions, split parts with a manifest, the streamed endpoint), read back by independent readers and
compared with the store; without it, the columns are the seed's."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from helpers import RFC3339, canonical, read_records, ts_text
from service import Service, cli, create_key
from support import WEEKS, run_queue, s3_settings, s3_split

from analytics_export import Settings, export
from analytics_export.enums import ExportStatus
from analytics_export.models import ExportRequest
from analytics_export.store.jobs import JobStore

FORMATS = ["json", "json_lines", "csv", "parquet", "avro"]
TABULAR = ("csv", "parquet", "avro")
START, END = datetime.fromisoformat("2026-08-03T00:00:00+00:00"), datetime.fromisoformat("2026-10-01T00:00:00+00:00")


def stored_ids(settings: Settings, start: datetime = START, end: datetime = END) -> dict[str, str]:
    """uuid -> inserted_at (RFC 3339) of the store's events in [start, end), read with plain SQL."""
    con = duckdb.connect(str(settings.events_path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        return dict(con.execute(
            f"""SELECT CAST(uuid AS VARCHAR), strftime(inserted_at, '{RFC3339}') FROM events
                WHERE project_id = ? AND "timestamp" >= ? AND "timestamp" < ?""",
            [settings.project, start, end]).fetchall())
    finally:
        con.close()


def texts(rows: list[dict]) -> list[dict]:
    """`rows` with `inserted_at` as RFC 3339 text (Parquet and Avro readers give datetimes)."""
    return [{**r, "inserted_at": r["inserted_at"] if isinstance(r["inserted_at"], str) else ts_text(r["inserted_at"])}
            for r in rows]


def ids_of(rows: list[dict]) -> dict[str, str]:
    """uuid -> inserted_at text of exported rows, each uuid once."""
    ids = {r["uuid"]: r["inserted_at"] for r in texts(rows)}
    assert len(ids) == len(rows), "every uuid once"
    return ids


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_carries_each_events_uuid_and_inserted_at_last(demo_settings, tmp_path, fmt):
    properties = ["plan", "$browser"] if fmt in TABULAR else None
    request = ExportRequest(start_date=START, end_date=END, format=fmt, properties=properties,
                            include=["inserted_at", "uuid"])
    assert request.include == ["uuid", "inserted_at"], "one order, whatever the request's"
    out = tmp_path / f"out.{fmt}"
    result = export(request, settings=demo_settings, output=out)
    rows = read_records(out, fmt, None)
    assert list(rows[0])[-2:] == ["uuid", "inserted_at"]
    assert ids_of(rows) == stored_ids(demo_settings) and result.total_events == len(rows) > 1000
    if fmt != "avro":  # a second reader (DuckDB has no Avro reader without a download)
        reader = {"json": "read_json", "json_lines": "read_json", "csv": "read_csv", "parquet": "read_parquet"}[fmt]
        count, distinct = duckdb.sql(f"SELECT count(*), count(DISTINCT uuid) FROM {reader}('{out}')").fetchall()[0]
        assert count == distinct == len(rows)


@pytest.mark.parametrize("fmt", FORMATS)
def test_without_include_the_columns_are_the_seeds(demo_settings, tmp_path, fmt):
    properties = ["plan"] if fmt in TABULAR else None
    out = tmp_path / f"out.{fmt}"
    export(ExportRequest(start_date=START, end_date=END, format=fmt, properties=properties),
           settings=demo_settings, output=out)
    expected = ["event", "distinct_id", "timestamp", "plan" if properties else "properties"]
    if fmt == "csv":
        assert next(csv.reader(io.StringIO(out.read_text()))) == expected
    elif fmt == "parquet":
        assert pq.read_schema(out).names == expected
    else:
        assert list(read_records(out, fmt, None)[0]) == expected


@pytest.mark.parametrize("fmt,compression", [("json_lines", "gzip"), ("csv", "zstd"), ("parquet", None)])
def test_partitions_join_with_the_extra_columns(demo_settings, tmp_path, fmt, compression):
    jobs = JobStore.for_data_dir(tmp_path / "jobs")
    jobs.migrate()
    request = ExportRequest(start_date=START, end_date=END, format=fmt, compression=compression,
                            include=["uuid", "inserted_at"])
    jobs.create("default", request, 100)
    run_queue(demo_settings.model_copy(update={"export": WEEKS}), jobs)
    job = jobs.get("default", request.id)
    assert job.status is ExportStatus.COMPLETED and job.parts == 9, job.error
    joined = read_records(Path(job.destination_path), fmt, compression)
    single = tmp_path / "single"
    export(request.model_copy(update={"id": "one-run"}), settings=demo_settings, output=single)
    assert canonical(texts(joined)) == canonical(texts(read_records(single, fmt, compression)))
    assert ids_of(joined) == stored_ids(demo_settings)


def test_split_parts_and_their_manifest_name_the_columns(demo_settings, s3_server, monkeypatch, tmp_path):
    settings = s3_settings(demo_settings, s3_server, monkeypatch)
    bucket = s3_server.make_bucket("include-split")
    request = ExportRequest(start_date=START, end_date=END, format="parquet", properties=["plan"],
                            include=["uuid"], destination=s3_split(s3_server, bucket, 5000))
    export(request, settings=settings)
    client = s3_server.client()
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"out/{request.manifest_name}")["Body"].read())
    assert manifest["columns"] == ["event", "distinct_id", "timestamp", "plan", "uuid"]
    uuids = []
    for entry in manifest["files"]:
        part = tmp_path / entry["name"]
        part.write_bytes(client.get_object(Bucket=bucket, Key=f"out/{entry['name']}")["Body"].read())
        assert pq.read_schema(part).names == manifest["columns"]
        uuids += pq.read_table(part, columns=["uuid"]).column("uuid").to_pylist()
    assert len(manifest["files"]) > 1 and sorted(uuids) == sorted(stored_ids(demo_settings))


@pytest.mark.parametrize("fmt", TABULAR)
@pytest.mark.parametrize("clash", ["event", "timestamp", "uuid"])
def test_a_property_that_would_be_a_second_column_of_its_name_is_refused(fmt, clash):
    with pytest.raises(ValueError, match=f"property '{clash}' would be a second '{clash}' column"):
        ExportRequest(start_date=START, end_date=END, format=fmt, properties=[clash, "plan"], include=["uuid"])
    nested = ExportRequest(start_date=START, end_date=END, format="json_lines", properties=[clash], include=["uuid"])
    assert nested.properties == [clash], "JSON formats nest properties: no clash"


@pytest.mark.server
def test_the_api_and_the_cli_take_include(demo_settings, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "events.duckdb").write_bytes(demo_settings.events_path.read_bytes())
    out = tmp_path / "cli.csv"
    cli(data, "export", "-f", "csv", "--start", START.isoformat(), "--end", END.isoformat(), "-p", "plan",
        "--include", "uuid", "-o", str(out))
    rows = list(csv.DictReader(io.StringIO(out.read_text(), newline="")))
    assert list(rows[0]) == ["event", "distinct_id", "timestamp", "plan", "uuid"]
    assert {r["uuid"] for r in rows} == set(stored_ids(demo_settings))
    service = Service(data, 0)
    try:
        key = create_key(data, "default")
        with service.client(key) as c:
            streamed = c.get("/api/events/export", params={"start": START.isoformat(), "end": END.isoformat(),
                                                           "include": ["uuid", "inserted_at"]})
            assert streamed.status_code == 200, streamed.text
            rows = [json.loads(line) for line in streamed.text.splitlines()]
            assert ids_of(rows) == stored_ids(demo_settings)
            body = {"start_date": START.isoformat(), "end_date": END.isoformat(), "format": "csv",
                    "properties": ["uuid"], "include": ["uuid"]}
            refused = c.post("/api/exports", json=body)
            assert refused.status_code == 422 and "second 'uuid' column" in refused.text, refused.text
            unknown = c.post("/api/exports", json={**body, "properties": None, "include": ["project_id"]})
            assert unknown.status_code == 422 and "include" in unknown.text, unknown.text
    finally:
        service.close()
