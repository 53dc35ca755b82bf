"""The contract: enum mappings, validation messages, file names, destination union."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from pydantic import TypeAdapter, ValidationError

from analytics_export.enums import Compression, ExportFormat, ExportStatus
from analytics_export.models import ExportDestination, ExportRequest, ExportResult, ScheduledExport
from analytics_export.streaming.spec import StreamSpec


def test_formats_map_like_the_seed():
    assert {f.value: (f.content_type, f.file_extension) for f in ExportFormat} == {
        "json": ("application/json", "json"),
        "json_lines": ("application/x-ndjson", "jsonl"),
        "csv": ("text/csv", "csv"),
        "parquet": ("application/octet-stream", "parquet"),
        "avro": ("application/avro", "avro"),
    }
    assert ExportFormat.parse("jsonl") is ExportFormat.JSON_LINES
    assert ExportFormat.parse(".PARQUET") is ExportFormat.PARQUET
    assert [c.value for c in Compression] == ["gzip", "zstd", "snappy", "lz4"]
    assert [s.value for s in ExportStatus] == ["pending", "processing", "completed", "failed", "expired"]


def test_request_defaults_and_utc():
    r = ExportRequest(start_date=date(2026, 1, 1), end_date="2026-01-02T05:00:00+05:00", format="csv")
    assert r.start_date == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert r.end_date == datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert r.status is ExportStatus.PENDING and r.destination.type == "download"
    assert r.properties is None and r.filters == [] and r.events == []
    assert r.file_name == f"export_{r.id}_20260101_to_20260102.csv"


@pytest.mark.parametrize("fields, message", [
    ({"end_date": "2026-01-01"}, "end_date .* must be after start_date"),
    ({"format": "xml"}, r"unknown format 'xml': use one of json \(json\), json_lines \(jsonl\)"),
    ({"compression": "brotli"}, "Input should be 'gzip', 'zstd', 'snappy' or 'lz4'"),
    ({"properties": ["ok", "not ok'"]}, "not a plain key"),
    ({"events": [""]}, "non-empty"),
    ({"filters": [{"property": "a", "operator": "between", "value": 1}]}, "operator"),
    ({"destination": {"type": "ftp"}}, "does not match any of the expected tags"),
    ({"destination": {"type": "s3"}}, "bucket"),
    ({"surprise": 1}, "Extra inputs are not permitted"),
])
def test_request_validation_names_the_field(fields, message):
    base = {"start_date": "2026-01-01", "end_date": "2026-01-02", "format": "json"}
    with pytest.raises(ValidationError, match=message):
        ExportRequest.model_validate(base | fields)


@pytest.mark.parametrize("model, base", [
    (ExportRequest, {"start_date": "2026-01-01", "end_date": "2026-01-02"}),
    (ScheduledExport, {"name": "daily", "schedule": "0 2 * * *"}),
    (StreamSpec, {"name": "s", "destination": {"type": "webhook", "url": "https://x"}}),
])
def test_empty_properties_mean_all_and_jsonl_is_json_lines(model, base):
    """The seed's contract: `properties: []` is all, as null is; `jsonl` is the CLI's name for json_lines."""
    for spelling in ([], None):
        assert model.model_validate(base | {"properties": spelling}).properties is None
    assert model.model_validate(base | {"properties": ["a", "b", "a"]}).properties == ["a", "b"]
    made = model.model_validate(base | {"format": "jsonl"})
    assert made.format is ExportFormat.JSON_LINES and made.model_dump(mode="json")["format"] == "json_lines"
    with pytest.raises(ValidationError, match="not a plain key"):
        model.model_validate(base | {"properties": ["ok", "not ok'"]})


def test_destinations_are_a_tagged_union():
    adapter = TypeAdapter(ExportDestination)
    assert adapter.validate_python({"type": "s3", "bucket": "bkt", "prefix": "p/"}).bucket == "bkt"
    assert adapter.validate_python({"type": "sftp", "host": "h", "username": "u"}).port == 22
    assert adapter.validate_python({"type": "webhook", "url": "https://x"}).url == "https://x"
    assert adapter.validate_python({"type": "gcs", "bucket": "gcs"}).type == "gcs"
    assert adapter.validate_python({"type": "azure", "container": "box"}).type == "azure"


def test_result_and_schedule_shapes():
    res = ExportResult(export_id="x", status="completed", total_events=3, file_size=10)
    assert res.model_dump()["download_url"] is None
    s = ScheduledExport(name="daily", schedule="0 2 * * *")
    assert s.date_range.value == "last_day" and s.enabled and s.next_run is None
    assert ExportRequest(start_date="2026-01-01", end_date=datetime(2026, 1, 1) + timedelta(microseconds=1),
                         format="json").end_date.microsecond == 1


def test_project_names():
    from analytics_export.checks import check_project_name

    for good in ("default", "acme", "acme-prod.eu_1", "_internal", "7", "x" * 100):
        assert check_project_name(good) == good
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", ".hidden", "-rf", "x" * 101, "a b", "é", "a\x00"):
        with pytest.raises(ValueError, match="1-100 letters, digits or `_ . -`"):
            check_project_name(bad)
    with pytest.raises(ValueError) as refused:
        check_project_name("x" * 1_000_000)
    assert len(str(refused.value)) < 300, "the message quotes a long name cut short"
