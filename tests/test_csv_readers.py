"""The reader options docs/formats.md gives for our CSV read every value exactly: pandas, DuckDB,
ClickHouse (chDB) and polars, on values holding commas, quotes, line breaks and text that looks like
a number or a null, plain and compressed."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import chdb
import duckdb
import pandas as pd
import polars as pl
import pytest

from analytics_export import Settings, export, open_store
from analytics_export.ingest import ingest_file
from conftest import json_text
from helpers import ts_text, write_jsonl

EVENTS = [
    {"event": 'say, "hi"', "distinct_id": "00042", "timestamp": "2026-01-01T00:00:00Z",
     "properties": {"note": 'shoes, "running"', "lines": "line one\nline two", "n": 5, "empty": "",
                    "nested": {"a": [1, "x,y"], "q": 'say "x"'}}},
    {"event": "plain", "distinct_id": "u2", "timestamp": "2026-01-01T01:00:00.123456Z",
     "properties": {"note": "NA", "lines": "crlf\r\nend", "n": "five", "flag": True}},
    {"event": "café, crème", "distinct_id": "null", "timestamp": "2026-01-01T02:00:00Z", "properties": {}},
]
SELECTED = ["note", "lines", "n", "empty", "nested", "missing"]
SUFFIXES = {None: "", "gzip": ".gz", "zstd": ".zst"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[tuple[str, str | None], Path]:
    """The events exported as CSV with all properties and with SELECTED, plain and compressed."""
    data = tmp_path_factory.mktemp("csv-readers")
    settings = Settings(data_dir=data)
    store = open_store(settings, read_only=False)
    try:
        ingest_file(store, write_jsonl(data / "in.jsonl", EVENTS), settings.project)
    finally:
        store.close()
    window = {"format": "csv", "start_date": "2026-01-01", "end_date": "2026-01-02"}
    paths = {}
    for kind, properties in (("all", []), ("selected", SELECTED)):
        for compression, suffix in SUFFIXES.items():
            paths[kind, compression] = data / f"{kind}.csv{suffix}"
            export(settings=settings, output=paths[kind, compression], properties=properties,
                   compression=compression, **window)
    return paths


def expected(kind: str) -> list[dict]:
    """Each event as a row: text as is, `timestamp` as RFC 3339 text, `properties` parsed, a selected
    property as its string or JSON text, None where the event lacks it."""
    rows = []
    for e in EVENTS:
        row = {"event": e["event"], "distinct_id": e["distinct_id"],
               "timestamp": ts_text(datetime.fromisoformat(e["timestamp"]).astimezone(timezone.utc))}
        props = e["properties"]
        if kind == "all":
            row["properties"] = props
        else:
            row |= {p: None if p not in props else props[p] if isinstance(props[p], str) else json_text(props[p])
                    for p in SELECTED}
        rows.append(row)
    return sorted(rows, key=lambda r: r["timestamp"])


def normalised(rows: list[dict], missing: object = None) -> list[dict]:
    """`rows` with timestamps as RFC 3339 text, `properties` parsed and `missing` read as None."""
    out = []
    for row in rows:
        stamp = row["timestamp"]
        stamp = stamp.to_pydatetime() if isinstance(stamp, pd.Timestamp) else stamp
        row = {k: None if v is missing else v for k, v in row.items()} | {"timestamp": ts_text(stamp)}
        if "properties" in row:
            row["properties"] = json.loads(row["properties"])
        out.append(row)
    return sorted(out, key=lambda r: r["timestamp"])


def pandas_rows(path: Path) -> list[dict]:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, parse_dates=["timestamp"])
    assert str(df["timestamp"].dtype) == "datetime64[us, UTC]"
    return df.to_dict("records")


def duckdb_rows(path: Path) -> list[dict]:
    result = duckdb.sql(f"""SELECT * FROM read_csv('{path}', header = true, quote = '"', escape = '"',
                            all_varchar = true, allow_quoted_nulls = false, types = {{'timestamp': 'TIMESTAMPTZ'}})""")
    return [dict(zip(result.columns, row)) for row in result.fetchall()]


def clickhouse_rows(path: Path, kind: str) -> list[dict]:
    columns = ["properties String"] if kind == "all" else [f"{p} Nullable(String)" for p in SELECTED]
    structure = ", ".join(["event String", "distinct_id String", "timestamp DateTime64(6, ''UTC'')", *columns])
    text = chdb.query(f"SELECT * FROM file('{path}', 'CSVWithNames', '{structure}')", "JSONEachRow").data()
    rows = [json.loads(line) for line in text.splitlines()]
    for row in rows:
        row["timestamp"] = datetime.fromisoformat(row["timestamp"]).replace(tzinfo=timezone.utc)
    return rows


def polars_rows(path: Path) -> list[dict]:
    df = pl.read_csv(path, infer_schema=False).with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC"))
    return df.to_dicts()


@pytest.mark.parametrize("compression", SUFFIXES)
@pytest.mark.parametrize("kind", ["all", "selected"])
def test_the_documented_options_read_every_value(exports, kind, compression):
    path, want = exports[kind, compression], expected(kind)
    assert normalised(duckdb_rows(path)) == want
    assert normalised(clickhouse_rows(path, kind)) == want
    assert normalised(polars_rows(path)) == want
    # pandas reads `""` and a missing value alike: both are "" with keep_default_na=False
    assert normalised(pandas_rows(path)) == [{k: "" if v is None else v for k, v in row.items()} for row in want]


def test_the_documented_options_are_the_ones_on_the_page():
    page = (Path(__file__).parent.parent / "docs" / "formats.md").read_text()
    for call in ['pd.read_csv("export.csv", dtype=str, keep_default_na=False, parse_dates=["timestamp"])',
                 "allow_quoted_nulls = false, types = {'timestamp': 'TIMESTAMPTZ'}",
                 "'event String, distinct_id String, timestamp DateTime64(6, ''UTC''), properties String'",
                 'pl.read_csv("export.csv", infer_schema=False)', '.option("escape", \'"\')',
                 '.option("multiLine", True)']:
        assert call in page, call
