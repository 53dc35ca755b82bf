"""Every format x every codec it offers round-trips through an independent reader and equals the store."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from analytics_export import ExportRequest, export
from conftest import expected, stored_rows
from helpers import OFFERED, canonical, read_records

FORMATS = ["json", "json_lines", "csv", "parquet", "avro"]
START = datetime(2026, 10, 1, tzinfo=timezone.utc)
END = datetime(2026, 10, 11, tzinfo=timezone.utc)


@pytest.mark.parametrize("fmt,compression", [(f, c) for f in FORMATS for c in [None, *OFFERED[f]]])
def test_all_properties_round_trip(demo_settings, tmp_path, fmt, compression):
    result = export(settings=demo_settings, output_dir=tmp_path, start_date=START, end_date=END,
                    format=fmt, compression=compression)
    want = stored_rows(demo_settings, START, END)
    assert len(want) > 1000
    path = tmp_path / ExportRequest(id=result.export_id, start_date=START, end_date=END, format=fmt,
                                    compression=compression).file_name
    assert result.destination_path == str(path)
    assert result.total_events == len(want)
    assert result.file_size == path.stat().st_size
    assert canonical(read_records(path, fmt, compression)) == canonical(expected(want, fmt, None))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "no temp files left behind"


@pytest.mark.parametrize("fmt", FORMATS)
def test_selected_properties(demo_settings, tmp_path, fmt):
    selected = ["search_query", "price", "tags", "referrer", "is_first_time", "experiment", "never_set"]
    out = tmp_path / f"out.{fmt}"
    events = ["search_performed", "$pageview"]
    result = export(settings=demo_settings, output=out, start_date=START, end_date=END, format=fmt,
                    properties=selected, events=events)
    want = expected(stored_rows(demo_settings, START, END, events), fmt, selected)
    assert result.total_events == len(want) > 100
    got = read_records(out, fmt, None)
    assert canonical(got) == canonical(want)


def test_file_names_follow_the_seed(demo_settings, tmp_path):
    for fmt, compression, suffix in [("json_lines", "gzip", ".jsonl.gz"), ("csv", "zstd", ".csv.zst"),
                                     ("json", "gzip", ".json.gz"), ("parquet", "lz4", ".parquet"),
                                     ("avro", "snappy", ".avro")]:
        result = export(settings=demo_settings, output_dir=tmp_path, start_date="2026-10-01",
                        end_date="2026-10-02", format=fmt, compression=compression)
        assert result.destination_path.endswith(f"/export_{result.export_id}_20261001_to_20261002{suffix}")


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_result_is_a_valid_file(demo_settings, tmp_path, fmt, compression):
    out = tmp_path / "empty"
    result = export(settings=demo_settings, output=out, start_date="2001-01-01", end_date="2001-01-02",
                    format=fmt, compression=compression, properties=["plan"] if fmt == "csv" else None)
    assert result.total_events == 0
    assert read_records(out, fmt, compression) == []
    if fmt == "json":
        from helpers import decompress
        assert decompress(out.read_bytes(), compression).strip() == b"[]"
    if fmt == "csv":
        from helpers import decompress
        assert decompress(out.read_bytes(), compression) == b'event,distinct_id,timestamp,plan\r\n'


def test_parquet_and_avro_are_typed(demo_settings, tmp_path):
    import fastavro
    import pyarrow as pa
    import pyarrow.parquet as pq

    export(settings=demo_settings, output=tmp_path / "x.parquet", start_date=START, end_date=END,
           format="parquet", compression="zstd")
    meta = pq.ParquetFile(tmp_path / "x.parquet")
    assert meta.schema_arrow.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert meta.metadata.row_group(0).column(0).compression == "ZSTD"
    export(settings=demo_settings, output=tmp_path / "x.avro", start_date=START, end_date=END,
           format="avro", compression="snappy", properties=["$browser", "price"])
    with open(tmp_path / "x.avro", "rb") as f:
        reader = fastavro.reader(f)
        assert reader.metadata["avro.codec"] == "snappy"
        fields = {fl["name"]: fl for fl in reader.writer_schema["fields"]}
    assert fields["timestamp"]["type"][1]["logicalType"] == "timestamp-micros"
    assert fields["_browser"]["doc"] == "$browser"


def test_json_is_read_by_duckdb(demo_settings, tmp_path):
    import duckdb

    for fmt in ("json", "json_lines", "csv"):
        out = tmp_path / f"x.{fmt}.gz"
        result = export(settings=demo_settings, output=out, start_date=START, end_date=END, format=fmt,
                        compression="gzip")
        reader = "read_csv" if fmt == "csv" else "read_json"
        count = duckdb.sql(f"SELECT count(*) FROM {reader}('{out}')").fetchall()[0][0]
        assert count == result.total_events
