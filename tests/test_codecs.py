"""Which codecs each format offers, proven with the readers people use: every offered codec is read
whole by them; every other is refused with a 422 (API) or exit status 2 (CLI) that names what is
offered; and an export, schedule or stream saved before the rule still lists, then fails or pauses
with that reason when it runs."""

from __future__ import annotations

import io
import subprocess
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import chdb
import duckdb
import fastavro
import fastparquet
import pandas as pd
import polars as pl
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from avro.datafile import DataFileReader
from avro.io import DatumReader

from analytics_export import Settings, export
from analytics_export.jobs.scheduler import Scheduler, Schedules
from analytics_export.jobs.store import JobStore
from analytics_export.jobs.tables import exports, schedules, streams
from analytics_export.jobs.worker import Worker
from analytics_export.models import STORED, ExportRequest, ExportStatus, ScheduledExport
from analytics_export.streaming.runner import LEASE, StreamRun
from analytics_export.streaming.spec import StreamSpec
from analytics_export.streaming.store import StreamStore
from conftest import stored_rows
from helpers import OFFERED
from service import CLI, Service, cli

REFUSED = [(f, c) for f in OFFERED for c in ("gzip", "zstd", "snappy", "lz4") if c not in OFFERED[f]]
START = datetime(2026, 10, 1, tzinfo=timezone.utc)
END = datetime(2026, 10, 8, tzinfo=timezone.utc)
WINDOW = {"start_date": "2026-10-01", "end_date": "2026-10-08"}
HOOK = {"type": "webhook", "url": "http://127.0.0.1:9/nobody-listens"}


def refusal(fmt: str, codec: str) -> str:
    """The start of the message refusing `codec` for `fmt`: it names the format and what it offers."""
    names = OFFERED[fmt]
    return f"{codec} is not offered for {fmt}: use {', '.join(names[:-1])} or {names[-1]}"


@pytest.fixture(scope="module")
def service(demo_settings, tmp_path_factory):
    data = tmp_path_factory.mktemp("codecs")
    svc = Service(data, 0, {"ANALYTICS_EXPORT_EVENTS_URL": str(demo_settings.events_path)})
    svc.key = cli(data, "keys", "create", "--project", "default")
    yield svc
    svc.close()


def test_the_api_lists_and_accepts_the_offered_codecs_and_refuses_the_rest_with_a_422(service):
    with service.client(service.key) as c:
        listed = c.get("/api/formats")
        assert listed.status_code == 200
        assert {f["format"]: f["codecs"] for f in listed.json()["items"]} == OFFERED
        for fmt, codecs in OFFERED.items():
            for codec in [None, *codecs]:
                preview = c.post("/api/exports/preview", json={**WINDOW, "format": fmt, "compression": codec})
                assert preview.status_code == 200, (fmt, codec, preview.text)
        for fmt, codec in REFUSED:
            bodies = {
                "/api/exports": {**WINDOW, "format": fmt, "compression": codec},
                "/api/exports/preview": {**WINDOW, "format": fmt, "compression": codec},
                "/api/schedules": {"name": "s", "schedule": "0 2 * * *", "format": fmt, "compression": codec},
                "/api/streams": {"name": "s", "destination": HOOK, "format": fmt, "compression": codec},
            }
            for path, body in bodies.items():
                refused = c.post(path, json=body)
                assert refused.status_code == 422, (path, refused.text)
                assert refusal(fmt, codec) in refused.json()["detail"], (path, refused.text)
        assert c.get("/api/exports").json()["total"] == 0, "nothing refused was queued"
        assert c.get("/api/schedules").json()["total"] == 0 and c.get("/api/streams").json()["total"] == 0


@pytest.mark.parametrize("fmt,codec", REFUSED)
def test_the_cli_refuses_an_unoffered_codec_with_one_line_and_status_2(tmp_path, fmt, codec):
    done = subprocess.run([*CLI, "--data-dir", str(tmp_path), "export", "--format", fmt, "--compression", codec,
                           "--start", "2026-10-01", "--end", "2026-10-02"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and refusal(fmt, codec) in done.stderr, done.stderr
    assert not list(tmp_path.rglob("export_*")), "nothing was written"


def sample(rows: list[dict]) -> Counter:
    """What the readers are compared on: each row's event, distinct_id and timestamp (as microseconds)."""
    return Counter((r["event"], r["distinct_id"], r["timestamp"]) for r in rows)


@pytest.fixture(scope="module")
def truth(demo_settings) -> Counter:
    def micros(text: str) -> int:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        return round(moment.timestamp() * 1_000_000)
    rows = stored_rows(demo_settings, START, END)
    assert len(rows) > 500
    return sample([{**r, "timestamp": micros(r["timestamp"])} for r in rows])


def micros_of(frame: pl.DataFrame) -> list[dict]:
    """polars rows with `timestamp` as integer microseconds since the epoch, whatever it was read as."""
    column = pl.col("timestamp")
    if frame.schema["timestamp"] == pl.String:
        column = column.str.to_datetime(time_zone="UTC")
    return frame.with_columns(column.dt.epoch("us").alias("timestamp")).to_dicts()


def read_with_duckdb(path: Path, fmt: str) -> list[dict]:
    reader = {"json": "read_json", "json_lines": "read_json", "csv": "read_csv", "parquet": "read_parquet"}[fmt]
    return micros_of(pl.from_arrow(duckdb.connect().sql(
        f"SELECT event, distinct_id, CAST(timestamp AS TIMESTAMPTZ) AS timestamp FROM {reader}($path)",
        params={"path": str(path)}).to_arrow_table()))


def read_with_chdb(path: Path, fmt: str) -> list[dict]:
    source = {"json": "JSONEachRow", "json_lines": "JSONEachRow", "csv": "CSVWithNames", "parquet": "Parquet",
              "avro": "Avro"}[fmt]
    text = chdb.query(f"SELECT event, distinct_id, toUnixTimestamp64Micro(parseDateTime64BestEffort("
                      f"toString(timestamp), 6, 'UTC')) AS timestamp FROM file('{path}', '{source}')", "Parquet")
    return pl.read_parquet(io.BytesIO(text.bytes())).to_dicts()


def read_with_polars(path: Path, fmt: str) -> list[dict]:
    read = {"json": pl.read_json, "json_lines": pl.read_ndjson, "csv": pl.read_csv, "parquet": pl.read_parquet,
            "avro": pl.read_avro}[fmt]
    return micros_of(read(path).select("event", "distinct_id", "timestamp"))


def read_with_pandas(path: Path, fmt: str) -> list[dict]:
    read = {"json": pd.read_json, "json_lines": lambda p: pd.read_json(p, lines=True), "csv": pd.read_csv,
            "parquet": pd.read_parquet}[fmt]
    return micros_of(pl.from_pandas(read(path)[["event", "distinct_id", "timestamp"]].astype({"timestamp": str})))


def read_with_pyarrow(path: Path, fmt: str) -> list[dict]:
    read = {"json_lines": pyarrow.json.read_json, "csv": pyarrow.csv.read_csv, "parquet": pq.read_table}[fmt]
    return micros_of(pl.from_arrow(read(path).select(["event", "distinct_id", "timestamp"])))


def read_with_fastparquet(path: Path, fmt: str) -> list[dict]:
    return micros_of(pl.from_pandas(fastparquet.ParquetFile(path).to_pandas(["event", "distinct_id", "timestamp"])))


def read_with_fastavro(path: Path, fmt: str) -> list[dict]:
    with open(path, "rb") as f:
        return micros_of(pl.DataFrame(list(fastavro.reader(f))))


def read_with_apache_avro(path: Path, fmt: str) -> list[dict]:
    with open(path, "rb") as f:
        return micros_of(pl.DataFrame(list(DataFileReader(f, DatumReader()))))


READERS = {
    "json": [read_with_duckdb, read_with_chdb, read_with_polars, read_with_pandas],
    "json_lines": [read_with_duckdb, read_with_chdb, read_with_polars, read_with_pandas, read_with_pyarrow],
    "csv": [read_with_duckdb, read_with_chdb, read_with_polars, read_with_pandas, read_with_pyarrow],
    "parquet": [read_with_duckdb, read_with_chdb, read_with_polars, read_with_pandas, read_with_pyarrow,
                read_with_fastparquet],
    "avro": [read_with_chdb, read_with_polars, read_with_fastavro, read_with_apache_avro],
}
"""Who reads each format here (DuckDB reads Avro through an extension it downloads: not here)."""
CANNOT = {("avro", "zstd", "read_with_polars"): "zstandard"}
"""Offered codecs a reader cannot open, and what its error says: polars has no Avro zstandard (the
README says so). Apache avro reads snappy with its optional `python-snappy`, a dev dependency here."""


@pytest.mark.parametrize("fmt,codec", [(f, c) for f, codecs in OFFERED.items() for c in [None, *codecs]])
def test_every_offered_codec_is_read_whole_by_the_readers_people_use(demo_settings, tmp_path, truth, fmt, codec):
    result = export(settings=demo_settings, output_dir=tmp_path, start_date=START, end_date=END, format=fmt,
                    compression=codec)
    path = Path(result.destination_path)
    assert result.total_events == sum(truth.values())
    for reader in READERS[fmt]:
        expected_error = CANNOT.get((fmt, codec, reader.__name__))
        if expected_error:
            with pytest.raises(Exception, match=expected_error):
                reader(path, fmt)
            continue
        assert sample(reader(path, fmt)) == truth, f"{reader.__name__} misread {path.name}"


def test_rows_saved_before_the_rule_still_list_and_fail_or_pause_with_the_reason(demo_settings, tmp_path):
    settings = Settings(data_dir=tmp_path, events_url=str(demo_settings.events_path))
    jobs = JobStore.for_data_dir(tmp_path)
    jobs.migrate()
    t = datetime(2026, 10, 1, tzinfo=timezone.utc)
    old_export = ExportRequest.model_validate({**WINDOW, "format": "csv", "compression": "snappy"}, context=STORED)
    jobs.create("default", old_export, 100)
    schedule = ScheduledExport(name="old", schedule="0 * * * *", date_range="since_last_run", format="json")
    Schedules(jobs).create("default", schedule, t)
    stream = StreamStore(jobs).create("default", StreamSpec(name="old", destination=HOOK, format="json_lines"))
    with jobs.engine.begin() as db:  # as a release that offered every codec for every format saved them
        db.execute(schedules.update().where(schedules.c.id == schedule.id).values(
            spec={**schedule.model_dump(mode="json"), "compression": "lz4"}))
        db.execute(streams.update().where(streams.c.id == stream.id).values(
            spec={**stream.spec.model_dump(mode="json"), "compression": "snappy"}))

    key = cli(tmp_path, "keys", "create", "--project", "default")
    svc = Service(tmp_path, 0, {"ANALYTICS_EXPORT_EVENTS_URL": str(demo_settings.events_path)})
    try:
        with svc.client(key) as c:
            for path in ("/api/exports", "/api/schedules", "/api/streams"):
                listed = c.get(path)
                assert listed.status_code == 200 and listed.json()["total"] == 1, listed.text
            assert c.get(f"/api/schedules/{schedule.id}").status_code == 200
            assert c.get(f"/api/streams/{stream.id}").status_code == 200
            kept = c.patch(f"/api/schedules/{schedule.id}", json={"name": "renamed"})
            assert kept.status_code == 422 and refusal("json", "lz4") in kept.json()["detail"]
    finally:
        svc.close()

    worker = Worker(settings, jobs)
    assert worker.run_one()
    failed = jobs.get("default", old_export.id)
    assert failed.status is ExportStatus.FAILED and refusal("csv", "snappy") in failed.error, failed.error
    assert failed.attempts == 1, "a refused codec is not retried"
    assert not list(tmp_path.rglob("export_*.csv*")), "nothing was written"

    assert Scheduler(jobs, "s", clock=lambda: t + timedelta(hours=2)).tick() == 0
    view = Schedules(jobs).get("default", schedule.id)
    assert view["status"] == "paused" and refusal("json", "lz4") in view["paused_reason"], view
    with jobs.engine.connect() as db:
        assert db.execute(sa.select(sa.func.count()).select_from(exports)).scalar_one() == 1, "no run was queued"

    store = StreamStore(jobs)
    claimed, = store.claim("w", LEASE, 1)
    StreamRun(settings, jobs, claimed, "w", threading.Event(), 0.5).run()
    after = store.get("default", stream.id)
    assert after.status == "failing" and refusal("json_lines", "snappy") in after.last_error, after
