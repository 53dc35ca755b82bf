"""Partitioned exports: windows run by any workers, joined into the file one run would have written
(or delivered as split parts + manifest); a failing partition retries alone; cancel stops them all."""

from __future__ import annotations

import gzip
import io
import json
import logging
import shutil
import signal
import subprocess
import time
import zlib
from datetime import timedelta
from pathlib import Path

import duckdb
import fastavro
import fastparquet
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from helpers import OFFERED, canonical, decompress, read_records
from service import CLI, Service, create_key, wait_for
from support import WEEKS, in_process, run_queue, s3_settings, s3_split

import analytics_export.runtime.isolated as isolated_module
from analytics_export import Settings, export, open_store
from analytics_export.errors import Invalid, Storage
from analytics_export.formats import thrift
from analytics_export.enums import ExportStatus
from analytics_export.models import ExportConfig, ExportRequest, ExportResult
from analytics_export.runtime.partitions import plan
from analytics_export.runtime.worker import Worker
from analytics_export.store.jobs import JobStore

FORMATS = ["json_lines", "json", "csv", "parquet", "avro"]
TEXT = ("json_lines", "json", "csv")
TOOLS = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dc"]}


@pytest.fixture()
def job_store(tmp_path) -> JobStore:
    jobs = JobStore.for_data_dir(tmp_path / "jobs")
    jobs.migrate()
    return jobs


def test_plan_cuts_long_ranges_into_windows():
    request = ExportRequest(start_date="2026-01-01", end_date="2026-01-04T12:00:00Z", format="csv")
    windows = plan(request, ExportConfig(partition_hours=24))
    assert [(a.day, b.day, b.hour) for a, b in windows] == [(1, 2, 0), (2, 3, 0), (3, 4, 0), (4, 4, 12)]
    assert plan(request, ExportConfig(partition_hours=0)) == []
    assert plan(request, ExportConfig(partition_hours=24 * 4)) == []
    year = ExportRequest(start_date="2025-01-01", end_date="2026-01-01", format="csv")
    assert len(plan(year, ExportConfig(partition_hours=1, max_partitions=10))) == 10
    config = ExportConfig(partition_hours=24, min_partition_events=1_000_000)
    assert len(plan(year, config, events=3_000_000)) == 3, "about min_partition_events each"
    assert plan(year, config, events=999_999) == [], "too few events to be worth cutting up"
    windows = plan(year, config, events=10**12)
    assert len(windows) == 32 and windows[-1][1] == year.end_date
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:])), "no gap, no overlap"
    webhook = ExportRequest(start_date="2026-01-01", end_date="2026-01-04", format="csv",
                            destination={"type": "webhook", "url": "https://example.com/hook"})
    assert plan(webhook, ExportConfig(partition_hours=24)) == []


@pytest.mark.parametrize("fmt,compression", [(f, c) for f in FORMATS for c in [None, *OFFERED[f]]])
def test_partitions_join_into_the_file_one_run_writes(demo_settings, job_store, tmp_path, fmt, compression):
    properties = ["plan", "$browser", "experiment"] if fmt in ("csv", "parquet", "avro") else None
    request = ExportRequest(start_date="2026-08-03", end_date="2026-10-01", format=fmt, compression=compression,
                            properties=properties)
    single = tmp_path / f"single.{fmt}"
    export(request.model_copy(update={"id": "one-run"}), settings=demo_settings, output=single)
    settings = demo_settings.model_copy(update={"export": WEEKS})
    job_store.create("default", request, 100)
    run_queue(settings, job_store)
    job = job_store.get("default", request.id)
    assert job.status is ExportStatus.COMPLETED, job.error
    assert job.parts == 9
    joined = Path(job.destination_path)
    assert joined.name == request.file_name
    rows = read_records(joined, fmt, compression)
    assert canonical(rows) == canonical(read_records(single, fmt, compression))
    assert job.total_events == len(rows) > 1000 and job.file_size == joined.stat().st_size
    if fmt == "parquet":  # a second independent reader of the merged row groups
        con = duckdb.connect()
        assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(joined)]).fetchone()[0] == len(rows)
        assert pq.ParquetFile(joined).metadata.num_row_groups >= 9
    if fmt == "avro":
        with open(joined, "rb") as f:
            assert sum(1 for _ in fastavro.reader(f)) == len(rows)
    if fmt in TEXT and compression in TOOLS and shutil.which(TOOLS[compression][0]):
        text = subprocess.run([*TOOLS[compression], str(joined)], capture_output=True, check=True).stdout
        assert text == read_decompressed(joined, compression)
    assert not (settings.staging_dir / request.id).exists(), "fragments are removed once joined"
    assert job_store.partitions(request.id) == []


@pytest.mark.parametrize("fmt", ["json", "parquet", "csv", "avro"])
def test_an_embedded_store_export_is_not_partitioned_unless_asked(demo_settings, job_store, fmt):
    """The embedded store's exports run whole on the one machine holding its file, which they use
    already: partitions would add only staging and joining. `partition_embedded` partitions them."""
    for config in (ExportConfig(partition_hours=24 * 7, min_partition_events=1), WEEKS):
        request = ExportRequest(start_date="2026-08-03", end_date="2026-10-01", format=fmt)
        job_store.create("default", request, 100)
        run_queue(demo_settings.model_copy(update={"export": config}), job_store)
        job = job_store.get("default", request.id)
        assert job.status is ExportStatus.COMPLETED, job.error
        assert (job.parts or 0) == (9 if config.partition_embedded else 0), config
        assert job.total_events > 1000


def read_decompressed(path: Path, compression: str) -> bytes:
    return decompress(path.read_bytes(), compression)


def partitioned(settings: Settings, jobs: JobStore, request: ExportRequest, config: ExportConfig) -> Path:
    """The file of `request` run as partitions cut by `config`."""
    jobs.create("default", request, 100)
    run_queue(settings.model_copy(update={"export": config}), jobs)
    job = jobs.get("default", request.id)
    assert job.status is ExportStatus.COMPLETED and job.parts > 1, job.error
    return Path(job.destination_path)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("fmt", TEXT)
def test_a_compressed_text_file_is_one_stream_whatever_the_partitioning(demo_settings, job_store, tmp_path, fmt,
                                                                        compression):
    """One-shot decoders stop after the first gzip member / zstd frame, silently: a joined file is one."""
    request = ExportRequest(start_date="2026-08-03", end_date="2026-10-01", format=fmt, compression=compression)
    single = tmp_path / "single"
    export(request.model_copy(update={"id": "one-run"}), settings=demo_settings, output=single)
    want = canonical(read_records(single, fmt, compression))
    for path in (single, partitioned(demo_settings, job_store, request, WEEKS)):
        data = path.read_bytes()
        text = subprocess.run([*TOOLS[compression], str(path)], capture_output=True, check=True).stdout
        if compression == "gzip":
            assert gzip.decompress(data) == text
            stream = zlib.decompressobj(31)
        else:
            assert zstandard.get_frame_parameters(data).has_checksum
            with pytest.raises(zstandard.ZstdError, match="content size"):  # streamed: see the README
                zstandard.ZstdDecompressor().decompress(data)
            assert zstandard.ZstdDecompressor().decompress(data, max_output_size=len(text)) == text
            stream = zstandard.ZstdDecompressor().decompressobj()
        assert stream.decompress(data) == text and stream.eof and stream.unused_data == b"", "one call reads all"
        plain = tmp_path / "plain"
        plain.write_bytes(text)
        assert canonical(read_records(plain, fmt, None)) == want


def assert_fastparquet_reads_what_pyarrow_reads(path: Path) -> None:
    """Every value of every column, nulls included, the same through fastparquet as through pyarrow."""
    want = pq.read_table(path)
    got = fastparquet.ParquetFile(str(path)).to_pandas()
    assert list(got.columns) == want.column_names and len(got) == want.num_rows > 1000
    for name in want.column_names:
        column = got[name]
        if pa.types.is_timestamp(want.schema.field(name).type):  # fastparquet gives UTC instants as naive
            column = pd.to_datetime(column, utc=True)
        values = [None if v is None or v is pd.NA or v != v else v for v in column.tolist()]
        assert values == want[name].to_pylist(), f"{path.name}: fastparquet reads {name} differently"


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("properties", [None, ["plan", "$current_url", "experiment", "never_set"]])
def test_fastparquet_reads_every_value_of_single_and_partitioned_parquet(demo_settings, job_store, tmp_path,
                                                                         properties, compression):
    """fastparquet read pyarrow's dictionaries that fell back to PLAIN as nulls (`properties`, in row
    groups of 4k+ events) and failed on an uncompressed all-null column (`never_set`)."""
    request = ExportRequest(start_date="2026-08-03", end_date="2026-11-01", format="parquet",
                            compression=compression, properties=properties)
    single = tmp_path / "single.parquet"
    export(request.model_copy(update={"id": "one-run"}), settings=demo_settings, output=single)
    months = ExportConfig(partition_hours=24 * 30, min_partition_events=1, partition_embedded=True)
    joined = partitioned(demo_settings, job_store, request, months)
    for path in (single, joined):
        assert_fastparquet_reads_what_pyarrow_reads(path)


def test_text_fragments_join_byte_for_byte(demo_settings, job_store, tmp_path):
    """Partitions of a store scanned in a fixed order give exactly the bytes of one run over it."""
    settings = demo_settings.model_copy(update={"export": WEEKS, "duckdb_threads": 1})
    for fmt in ("json_lines", "json", "csv"):
        request = ExportRequest(start_date="2026-08-03", end_date="2026-10-01", format=fmt,
                                properties=["plan"] if fmt == "csv" else None)
        pieces = [export(request.model_copy(update={"id": f"w{n}", "start_date": a, "end_date": b}),
                         settings=settings, output=tmp_path / f"w{n}.{fmt}")
                  for n, (a, b) in enumerate(plan(request, WEEKS))]
        job_store.create("default", request, 100)
        run_queue(settings, job_store)
        joined = Path(job_store.get("default", request.id).destination_path).read_bytes()
        assert joined == expected_join(fmt, [Path(p.destination_path).read_bytes() for p in pieces])


def expected_join(fmt: str, files: list[bytes]) -> bytes:
    """What one run writes, from whole files of each window (strip their heads, tails)."""
    if fmt == "json_lines":
        return b"".join(files)
    if fmt == "csv":
        header = files[0].split(b"\r\n", 1)[0] + b"\r\n"
        return header + b"".join(f[len(header):] for f in files)
    bodies = [f[1:-3] for f in files if f != b"[]\n"]  # "[" body "\n]\n"
    return b"[" + b",".join(bodies) + b"\n]\n"


def s3_keys(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_split_partitioned_export_delivers_parts_and_one_manifest(demo_settings, job_store, tmp_path, s3_server,
                                                                  monkeypatch):
    settings = s3_settings(demo_settings, s3_server, monkeypatch, partition_hours=24 * 7, min_partition_events=1,
                            partition_embedded=True)
    bucket = s3_server.make_bucket("split-partitions")
    request = ExportRequest(start_date="2026-08-03", end_date="2026-10-01", format="json_lines",
                            compression="gzip", destination=s3_split(s3_server, bucket, 1000))
    job_store.create("default", request, 100)
    run_queue(settings, job_store)
    job = job_store.get("default", request.id)
    assert job.status is ExportStatus.COMPLETED, job.error
    client = s3_server.client()
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"out/{request.manifest_name}")["Body"].read())
    names = [f["name"] for f in manifest["files"]]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert {n.split(".part-")[1][:4] for n in names} == {f"{k:04d}" for k in range(1, 10)}, "every partition"
    assert sorted(s3_keys(s3_server, bucket)) == sorted(f"out/{n}" for n in [*names, request.manifest_name])
    rows = []
    for entry in manifest["files"]:
        body = client.get_object(Bucket=bucket, Key=f"out/{entry['name']}")["Body"].read()
        part = tmp_path / entry["name"]
        part.write_bytes(body)
        assert entry["bytes"] == len(body) and entry["events"] <= 1000
        stream = zlib.decompressobj(31)
        assert stream.decompress(body) and stream.eof and stream.unused_data == b"", "each part is one gzip member"
        rows += read_records(part, "json_lines", "gzip")
    assert manifest["total_events"] == len(rows) == job.total_events
    assert job.destination_path.endswith(request.manifest_name)
    single = tmp_path / "single.jsonl"
    export(ExportRequest.model_validate({**request.model_dump(), "id": "one", "destination": {"type": "download"},
                                         "compression": None}), settings=demo_settings, output=single)
    assert canonical(rows) == canonical(read_records(single, "json_lines", None))


class FlakySource:
    """The real store, except that reading chosen windows fails (`failures` times, or always), whether
    batches are read or the engine writes the file (`copy`)."""

    def __init__(self, store, fail: dict[int, tuple[type, int]], calls: list) -> None:
        self.store, self.fail, self.calls = store, fail, calls

    def read(self, query) -> None:
        day = query.start.day
        self.calls.append(day)
        if day in self.fail:
            error, left = self.fail[day]
            if left:
                self.fail[day] = (error, left - 1)
                raise error(f"injected failure reading from {query.start:%b %d}")

    def batches(self, query, batch_size):
        self.read(query)
        return self.store.batches(query, batch_size)

    def copy(self, query, *args):
        self.read(query)
        return self.store.copy(query, *args)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def flaky_stores(monkeypatch, fail: dict[int, tuple[type, int]]) -> list[int]:
    """Stores that fail as `fail` says, in this process (where `run_queue` runs its exports)."""
    calls: list[int] = []
    monkeypatch.setattr(isolated_module, "open_store", lambda settings: FlakySource(open_store(settings), fail, calls))
    return calls


def test_a_failing_partition_is_retried_alone(demo_settings, job_store, monkeypatch, caplog):
    settings = demo_settings.model_copy(update={"export": ExportConfig(partition_hours=24, retry_backoff_seconds=0,
                                                                       min_partition_events=1,
                                                                       partition_embedded=True)})
    calls = flaky_stores(monkeypatch, {2: (Storage, 2)})
    request = ExportRequest(start_date="2026-09-01", end_date="2026-09-05", format="parquet")
    job_store.create("default", request, 100)
    with caplog.at_level(logging.WARNING):
        run_queue(settings, job_store)
    job = job_store.get("default", request.id)
    assert job.status is ExportStatus.COMPLETED, job.error
    assert sorted(calls) == [1, 2, 2, 2, 3, 4], "only the failing window was read again"
    assert "partition 2 attempt 1 failed" in caplog.text and "partition 2 attempt 2 failed" in caplog.text
    single = export(request.model_copy(update={"id": "one"}), settings=demo_settings,
                    output=Path(job.destination_path).with_name("single.parquet"))
    assert job.total_events == single.total_events


def test_a_partition_that_keeps_failing_fails_the_export_and_leaves_nothing(demo_settings, job_store, monkeypatch,
                                                                            s3_server):
    settings = s3_settings(demo_settings, s3_server, monkeypatch, partition_hours=24, retry_backoff_seconds=0,
                            min_partition_events=1, partition_embedded=True)
    bucket = s3_server.make_bucket("failing-partitions")
    for fail, destination in (((Invalid, 1), {"type": "download"}),
                              ((Storage, 99), s3_split(s3_server, bucket, 50))):
        flaky_stores(monkeypatch, {3: fail})
        request = ExportRequest(start_date="2026-09-01", end_date="2026-09-05", format="csv",
                                destination=destination)
        job_store.create("default", request, 100)
        run_queue(settings, job_store)
        job = job_store.get("default", request.id)
        assert job.status is ExportStatus.FAILED
        assert "partition 3 of 4 (2026-09-03T00:00:00Z to 2026-09-04T00:00:00Z) failed: injected" in job.error
        assert not list(settings.project_export_dir("default").glob(f"export_{request.id}*"))
        assert not (settings.staging_dir / request.id).exists()
        assert job_store.partitions(request.id) == []
    assert s3_keys(s3_server, bucket) == [], "the parts of partitions 1, 2 and 4 were removed"


def test_thrift_codec_round_trips_parquet_footers(tmp_path):
    table = pa.table({"a": pa.array(range(100_000)), "b": pa.array([str(i % 7) for i in range(100_000)]),
                      "c": pa.array([None, 1.5] * 50_000)})
    for options in ({}, {"compression": "zstd", "write_statistics": False}, {"use_dictionary": False}):
        buffer = io.BytesIO()
        pq.write_table(table, buffer, row_group_size=30_000, **options)
        data = buffer.getvalue()
        length = int.from_bytes(data[-8:-4], "little")
        footer = data[-8 - length:-8]
        assert thrift.encode(thrift.decode(footer)) == footer


def start_worker(data: Path, env: dict, log: Path) -> subprocess.Popen:
    import os
    with open(log, "wb") as out:
        return subprocess.Popen([*CLI, "--data-dir", str(data), "worker", "--lease", "2"],
                                env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=out)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_two_worker_processes_share_partitions_and_match_one_worker(big_store, tmp_path, pg_url):
    """A 4-partition export on a PostgreSQL job store: two worker processes run its partitions
    between them, and the file is byte for byte the one a single worker writes."""
    env = {"ANALYTICS_EXPORT_DATABASE_URL": pg_url, "ANALYTICS_EXPORT_EXPORT__PARTITION_HOURS": str(24 * 23),
           "ANALYTICS_EXPORT_EXPORT__PARTITION_EMBEDDED": "true",
           "ANALYTICS_EXPORT_EXPORT__MIN_PARTITION_EVENTS": "1",
           "ANALYTICS_EXPORT_DUCKDB_THREADS": "1", "ANALYTICS_EXPORT_EXPORT__BATCH_SIZE": "4096"}
    key = create_key(big_store, "default", env)
    svc = Service(big_store, 0, env)
    outputs, logs = {}, {}
    try:
        with svc.client(key) as c:
            for workers in (1, 2):
                procs = [start_worker(big_store, env, tmp_path / f"w{workers}-{n}.log") for n in range(workers)]
                try:
                    time.sleep(3)  # both are polling before the export arrives
                    body = {"start_date": "2026-08-03", "end_date": "2026-11-01", "format": "json_lines"}
                    export_id = c.post("/api/exports", json=body).json()["id"]
                    done = wait_for(c, export_id, timeout=180)
                    outputs[workers] = c.get(f"/api/exports/{export_id}/download").content
                    assert done["result"]["total_events"] == outputs[workers].count(b"\n")
                    assert done["progress"]["partitions"] == done["progress"]["partitions_done"] == 4
                finally:
                    for proc in procs:
                        stop(proc)
                logs[workers] = [(tmp_path / f"w{workers}-{n}.log").read_text() for n in range(workers)]
    finally:
        svc.close()
    claims = [log.count("partition ") for log in logs[2]]
    assert all("/4 claimed" in log for log in logs[2]), f"both workers ran partitions: {claims}"
    assert outputs[1] == outputs[2]
    assert len(outputs[1]) > 1 << 20


@pytest.mark.server
def test_cancel_stops_every_partition_and_removes_their_fragments(big_store, tmp_path):
    env = {"ANALYTICS_EXPORT_EXPORT__PARTITION_HOURS": "48", "ANALYTICS_EXPORT_EXPORT__PARTITION_EMBEDDED": "true",
           "ANALYTICS_EXPORT_EXPORT__BATCH_SIZE": "2048",
           "ANALYTICS_EXPORT_EXPORT__MIN_PARTITION_EVENTS": "100000"}
    key = create_key(big_store, "default", env)
    svc = Service(big_store, 0, env)
    procs = [start_worker(big_store, env, tmp_path / f"c{n}.log") for n in range(2)]
    try:
        with svc.client(key) as c:
            body = {"start_date": "2026-08-03", "end_date": "2026-11-01", "format": "csv", "compression": "zstd"}
            export_id = c.post("/api/exports", json=body).json()["id"]
            deadline = time.monotonic() + 60
            while c.get(f"/api/exports/{export_id}").json()["progress"]["events"] < 50_000:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert c.delete(f"/api/exports/{export_id}").status_code == 204
            done = wait_for(c, export_id, "failed", timeout=30)
            assert done["result"]["error"] == "cancelled"
            time.sleep(1)
            assert not (big_store / "staging" / export_id).exists()
            assert not list((big_store / "exports").glob(f"*/export_{export_id}*"))
    finally:
        for proc in procs:
            stop(proc)
        svc.close()


def test_partition_leases_in_the_job_store(job_store):
    """Each partition is one worker's at a time; an expired lease passes to another and the old
    owner can no longer record anything; only the last finisher assembles; a failed export is
    retried only once its partitions are closed."""
    request = ExportRequest(start_date="2026-09-01", end_date="2026-09-03", format="csv")
    job_store.create("default", request, 100)
    first = job_store.claim("w1", timedelta(seconds=30))
    assert job_store.partition(request.id, "w1", plan(request, ExportConfig(partition_hours=24)))
    assert not job_store.partition(request.id, "w1", []), "the export's own lease was handed over"
    one = job_store.claim("w1", timedelta(milliseconds=500))
    two = job_store.claim("w2", timedelta(seconds=30))
    assert (first.partition, one.partition.number, two.partition.number) == (None, 1, 2)
    assert job_store.claim("w3", timedelta(seconds=30)) is None, "nothing else to run"
    time.sleep(0.6)
    again = job_store.claim("w3", timedelta(seconds=30))
    assert (again.partition.number, again.partition.attempts) == (1, 2), "the expired lease passed on"
    assert not job_store.partition_heartbeat(one, "w1", timedelta(seconds=30), 5, 5)
    assert job_store.partition_done(one, "w1", timedelta(seconds=30), []) is None, "w1 lost it"
    entry = [{"name": "x", "uri": "x", "events": 3, "bytes": 7}]
    assert job_store.partition_done(two, "w2", timedelta(seconds=30), entry) is False
    assert job_store.partition_done(again, "w3", timedelta(seconds=30), entry) is True, "the last one assembles"
    job = job_store.get("default", request.id)
    assert (job.parts, job.parts_done, job.events_done, job.bytes_done) == (2, 2, 6, 14)
    failed = ExportResult(export_id=request.id, status=ExportStatus.FAILED, error="boom")
    assert job_store.finish(request.id, "w3", failed, None)
    assert not job_store.retry("default", request.id, 100), "its partitions are not closed yet"
    assert [row.number for _, rows in job_store.reap(request.id) for row in rows] == [1, 2]
    assert job_store.retry("default", request.id, 100)
    assert job_store.get("default", request.id).parts is None


def test_a_cancelled_export_whose_worker_died_is_closed(job_store):
    request = ExportRequest(start_date="2026-09-01", end_date="2026-09-02", format="csv")
    job_store.create("default", request, 100)
    assert job_store.claim("dead", timedelta(milliseconds=200)) is not None
    assert job_store.request_cancel("default", request.id)
    assert job_store.reap(request.id) == [], "its lease still runs: its worker may yet stop it"
    time.sleep(0.3)
    assert [job.id for job, _ in job_store.reap(request.id)] == [request.id]
    job = job_store.get("default", request.id)
    assert (job.status, job.error) == (ExportStatus.FAILED, "cancelled")


def test_a_partition_whose_worker_dies_max_attempts_times_fails_its_export(job_store):
    """A partition's run whose worker died (its lease ran out) is a failed attempt of that partition,
    as for a whole export: the third closes the export with the reason, and its partitions are reaped."""
    request = ExportRequest(start_date="2026-09-01", end_date="2026-09-03", format="csv")
    job_store.create("default", request, 100)
    job_store.claim("w0", timedelta(seconds=30))
    assert job_store.partition(request.id, "w0", plan(request, ExportConfig(partition_hours=24)))
    for attempt in (1, 2, 3):
        assert job_store.fail_abandoned(3) == []
        job = job_store.claim(f"dead-{attempt}", timedelta(milliseconds=100))
        assert (job.partition.number, job.partition.attempts) == (1, attempt)
        time.sleep(0.2)
    (export_id, error), = job_store.fail_abandoned(3)
    assert export_id == request.id
    assert error.startswith("partition 1 of 2 (2026-09-01T00:00:00Z to 2026-09-02T00:00:00Z) failed: the worker "
                            "running this export died (worker dead-3 ")
    assert "on attempt 3, and max_attempts is 3" in error
    assert job_store.fail_abandoned(3) == [], "once"
    job = job_store.get("default", request.id)
    assert (job.status, job.error) == (ExportStatus.FAILED, error)
    assert [row.number for _, rows in job_store.reap(request.id) for row in rows] == [1, 2]
    assert job_store.claim("w4", timedelta(seconds=30)) is None, "nothing left to run"


def test_local_upload_appends_a_file_range_inside_the_kernel(tmp_path):
    from analytics_export.destinations import BackgroundUpload
    from analytics_export.destinations.local import LocalDestination

    source = tmp_path / "fragment"
    source.write_bytes(bytes(range(256)) * 4096)
    upload = BackgroundUpload(LocalDestination(tmp_path / "out").open("joined"))
    upload.write(b"head")
    with open(source, "rb") as file:
        file.seek(10)
        assert upload.copy_from(file, 1000) == 1000 and file.tell() == 1010
        assert upload.copy_from(file, None) == len(source.read_bytes()) - 1010
    upload.write(b"tail")
    joined = Path(upload.commit()).read_bytes()
    assert joined == b"head" + source.read_bytes()[10:] + b"tail"


def test_every_partition_applies_the_policy_version_the_export_started_with(demo_settings, job_store, tmp_path):
    from analytics_export.connections import Sealer
    from analytics_export.privacy.rules import PrivacyRules
    from analytics_export.store.policies import PrivacyStore

    settings = demo_settings.model_copy(update={"export": WEEKS})
    policies = PrivacyStore(job_store, Sealer(settings.signing_key()))
    first = policies.set_policy("default", PrivacyRules(deny_properties=["plan"], pseudonymize_distinct_id=True))
    request = ExportRequest(start_date="2026-08-03", end_date="2026-10-01", format="parquet",
                            properties=["plan", "$browser"])
    job_store.create("default", request, 100)
    worker = Worker(in_process(settings), job_store)
    assert worker.run_one() and worker.run_one(), "planned, then one partition ran"
    policies.set_policy("default", PrivacyRules())  # loosened while the export runs: it must not apply
    run_queue(settings, job_store)
    job = job_store.get("default", request.id)
    assert job.status is ExportStatus.COMPLETED and job.parts == 9, job.error
    result = job.result()
    assert result.privacy_policy_version == first and result.dropped_properties == ["plan"]
    rows = read_records(Path(job.destination_path), "parquet", None)
    assert len(rows) == job.total_events > 1000
    assert all(set(r) == {"event", "distinct_id", "timestamp", "$browser"} for r in rows)
    assert all(len(r["distinct_id"]) == 64 and not r["distinct_id"].startswith("user_") for r in rows)
