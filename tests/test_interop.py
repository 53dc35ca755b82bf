"""Every file is read whole by the tools people use. Each format x offered codec, from one run and from
partitions joined into one file, is read by DuckDB, chDB (ClickHouse), polars, pandas and pyarrow, and
by fastparquet (Parquet) and fastavro and Apache avro (Avro); compressed text also by the stdlib's
one-shot and streaming decompressors and by the command-line tools. Every read is compared with the
store: each row's event, distinct_id and timestamp, and where `properties` is a text column (CSV,
Parquet, Avro) its JSON too; JSON and JSON Lines are parsed whole, properties included, by a strict
JSON parser."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import zlib
from collections import Counter
from datetime import datetime, timezone
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
import zstandard
from avro.datafile import DataFileReader
from avro.io import DatumReader
from conftest import stored_rows
from helpers import OFFERED, read_records
from support import run_queue

from analytics_export import Settings, export
from analytics_export.enums import ExportStatus
from analytics_export.models import ExportConfig, ExportRequest
from analytics_export.store.jobs import JobStore

START = datetime(2026, 8, 3, tzinfo=timezone.utc)
END = datetime(2026, 11, 1, tzinfo=timezone.utc)
"""Every demo event: 20,000, whose `properties` outgrow Parquet's 1 MiB dictionary page (where
fastparquet misread the PLAIN fallback)."""
WEEKLY = ExportConfig(partition_hours=24 * 7, min_partition_events=1, partition_embedded=True)
"""Partitions of a week: 13 fragments joined into one file."""
TEXT_PROPERTIES = ("csv", "parquet", "avro")
"""Formats whose `properties` is one JSON text column (the readers give it as a string)."""
CASES = [(f, c, how) for f, codecs in OFFERED.items() for c in [None, *codecs] for how in ("one run", "partitions")]
CASES += [("parquet", c, "batches") for c in [None, *OFFERED["parquet"]]]
"""One run and partitions have DuckDB write what it can (JSON, JSON Lines, Parquet); `batches` writes from
Arrow batches instead, as every store but the embedded one does: for JSON the bytes are the
same (test_engine_copy), for Parquet the writer is another."""


def produce(settings: Settings, tmp_path: Path, fmt: str, codec: str | None, how: str) -> Path:
    """The file of an export of [START, END) in `fmt` and `codec`, written in one run (by the engine where
    it can, or from batches) or as partitions."""
    request = ExportRequest(start_date=START, end_date=END, format=fmt, compression=codec)
    if how in ("one run", "batches"):
        if how == "batches":
            settings = settings.model_copy(update={"export": ExportConfig(engine_writes=False)})
        return Path(export(request, settings=settings, output_dir=tmp_path).destination_path)
    jobs = JobStore.for_data_dir(tmp_path / "jobs")
    jobs.migrate()
    jobs.create("default", request, 100)
    run_queue(settings.model_copy(update={"export": WEEKLY}), jobs)
    job = jobs.get("default", request.id)
    assert job.status is ExportStatus.COMPLETED and job.parts == 13, job.error
    return Path(job.destination_path)


def micros(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


def sample(rows: list[dict], fmt: str) -> Counter:
    """What reads are compared on: event, distinct_id, timestamp (microseconds) and, for formats with a
    JSON text column, the parsed properties."""
    def properties(row: dict) -> str | None:
        if fmt not in TEXT_PROPERTIES or row["properties"] is None:  # None read where text was written: a misread
            return None
        return json.dumps(json.loads(row["properties"]), sort_keys=True)
    return Counter((r["event"], r["distinct_id"], r["timestamp"], properties(r)) for r in rows)


@pytest.fixture(scope="module")
def truth(demo_settings) -> dict[str, Counter]:
    """The store's rows in [START, END) as each format's reads are compared."""
    rows = [{**r, "timestamp": micros(datetime.strptime(r["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
                                      .replace(tzinfo=timezone.utc)),
             "properties": json.dumps(r["properties"])} for r in stored_rows(demo_settings, START, END)]
    assert len(rows) == 20_000
    return {fmt: sample(rows, fmt) for fmt in OFFERED}


def columns(fmt: str) -> list[str]:
    return ["event", "distinct_id", "timestamp", *(["properties"] if fmt in TEXT_PROPERTIES else [])]


def micros_of(frame: pl.DataFrame) -> list[dict]:
    """polars rows with `timestamp` as integer microseconds since the epoch, whatever it was read as."""
    column = pl.col("timestamp")
    if frame.schema["timestamp"] == pl.String:
        column = column.str.to_datetime(time_zone="UTC")
    return frame.with_columns(column.dt.epoch("us").alias("timestamp")).to_dicts()


def read_with_duckdb(path: Path, fmt: str) -> list[dict]:
    reader = {"json": "read_json", "json_lines": "read_json", "csv": "read_csv", "parquet": "read_parquet"}[fmt]
    extra = ", CAST(properties AS VARCHAR) AS properties" if fmt in TEXT_PROPERTIES else ""
    return micros_of(pl.from_arrow(duckdb.connect().sql(
        f"SELECT event, distinct_id, CAST(timestamp AS TIMESTAMPTZ) AS timestamp{extra} FROM {reader}($path)",
        params={"path": str(path)}).to_arrow_table()))


def read_with_chdb(path: Path, fmt: str) -> list[dict]:
    source = {"json": "JSONEachRow", "json_lines": "JSONEachRow", "csv": "CSVWithNames", "parquet": "Parquet",
              "avro": "Avro"}[fmt]
    extra = ", toString(properties) AS properties" if fmt in TEXT_PROPERTIES else ""
    out = chdb.query(f"SELECT event, distinct_id, toUnixTimestamp64Micro(parseDateTime64BestEffort("
                     f"toString(timestamp), 6, 'UTC')) AS timestamp{extra} FROM file('{path}', '{source}')", "Parquet")
    return pl.read_parquet(io.BytesIO(out.bytes())).to_dicts()


def read_with_polars(path: Path, fmt: str) -> list[dict]:
    read = {"json": pl.read_json, "json_lines": pl.read_ndjson, "csv": pl.read_csv, "parquet": pl.read_parquet,
            "avro": pl.read_avro}[fmt]
    return micros_of(read(path).select(columns(fmt)))


def read_with_pandas(path: Path, fmt: str) -> list[dict]:
    read = {"json": pd.read_json, "json_lines": lambda p: pd.read_json(p, lines=True),
            "csv": lambda p: pd.read_csv(p, keep_default_na=False), "parquet": pd.read_parquet}[fmt]
    return micros_of(pl.from_pandas(read(path)[columns(fmt)].astype({"timestamp": str})))


def read_with_pyarrow(path: Path, fmt: str) -> list[dict]:
    read = {"json_lines": pyarrow.json.read_json, "csv": pyarrow.csv.read_csv, "parquet": pq.read_table}[fmt]
    return micros_of(pl.from_arrow(read(path).select(columns(fmt))))


def read_with_fastparquet(path: Path, fmt: str) -> list[dict]:
    return micros_of(pl.from_pandas(fastparquet.ParquetFile(path).to_pandas(columns(fmt))))


def read_with_fastavro(path: Path, fmt: str) -> list[dict]:
    with open(path, "rb") as f:
        return micros_of(pl.DataFrame(list(fastavro.reader(f))).select(columns(fmt)))


def read_with_apache_avro(path: Path, fmt: str) -> list[dict]:
    with open(path, "rb") as f:
        return micros_of(pl.DataFrame(list(DataFileReader(f, DatumReader()))).select(columns(fmt)))


READERS = {
    "json": [read_with_duckdb, read_with_chdb, read_with_polars, read_with_pandas],
    "json_lines": [read_with_duckdb, read_with_chdb, read_with_polars, read_with_pandas, read_with_pyarrow],
    "csv": [read_with_duckdb, read_with_chdb, read_with_polars, read_with_pandas, read_with_pyarrow],
    "parquet": [read_with_duckdb, read_with_chdb, read_with_polars, read_with_pandas, read_with_pyarrow,
                read_with_fastparquet],
    "avro": [read_with_chdb, read_with_polars, read_with_fastavro, read_with_apache_avro],
}
"""Who reads each format here. pyarrow has no reader for a JSON array; DuckDB reads Avro through an
extension it downloads at run time, which this machine cannot."""
CANNOT = {("avro", "zstd", "read_with_polars"): "zstandard"}
"""Offered codecs a reader cannot open, and what its error says (the README says so)."""


def decoded_whole(data: bytes, codec: str) -> bytes:
    """`data` decoded by the stdlib's and zstandard's one-shot and streaming decoders, each of which
    must read all of it (one gzip member or zstd frame: none stops early), and by the command-line tool."""
    tool = subprocess.run({"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dc"]}[codec], input=data,
                          capture_output=True, check=True).stdout
    if codec == "gzip":
        one = zlib.decompressobj(31)
        assert one.decompress(data) == tool and one.eof and one.unused_data == b"", "one gzip member"
        assert gzip.decompress(data) == tool
        assert gzip.GzipFile(fileobj=io.BytesIO(data)).read() == tool
    else:
        assert zstandard.get_frame_parameters(data).has_checksum, "frames carry a checksum"
        frame = zstandard.ZstdDecompressor().decompressobj()
        assert frame.decompress(data) == tool and frame.eof and frame.unused_data == b"", "one zstd frame"
        assert zstandard.ZstdDecompressor().decompress(data, max_output_size=len(tool)) == tool
        assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read() == tool
    return tool


@pytest.mark.parametrize("fmt,codec,how", CASES)
def test_every_file_is_read_whole_by_every_common_reader(demo_settings, tmp_path, truth, fmt, codec, how):
    path = produce(demo_settings, tmp_path, fmt, codec, how)
    if fmt in ("json", "json_lines", "csv") and codec:
        decoded_whole(path.read_bytes(), codec)
    if fmt in ("json", "json_lines"):  # properties nested: compared whole by a strict parser
        expected = stored_rows(demo_settings, START, END)
        key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
        assert sorted(map(key, read_records(path, fmt, codec))) == sorted(map(key, expected))
    for reader in READERS[fmt]:
        error = CANNOT.get((fmt, codec, reader.__name__))
        if error:
            with pytest.raises(Exception, match=error):
                reader(path, fmt)
            continue
        assert sample(reader(path, fmt), fmt) == truth[fmt], f"{reader.__name__} misread {how} {path.name}"


@pytest.mark.skipif(not shutil.which("zstd"), reason="the zstd command-line tool is not installed")
def test_a_streamed_zstd_frame_has_no_content_size_so_one_shot_decompress_needs_a_bound(demo_settings, tmp_path):
    """What the README tells zstd users: `zstandard.decompress(data)` alone cannot size the output."""
    path = produce(demo_settings, tmp_path, "json_lines", "zstd", "one run")
    data = path.read_bytes()
    assert zstandard.get_frame_parameters(data).content_size == zstandard.CONTENTSIZE_UNKNOWN
    with pytest.raises(zstandard.ZstdError, match="content size"):
        zstandard.ZstdDecompressor().decompress(data)
