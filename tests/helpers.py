"""Independent readers and reference data for the tests: nothing here uses the code under test."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fastavro
import pyarrow.parquet as pq

RFC3339 = "%Y-%m-%dT%H:%M:%S.%fZ"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
"""Debian's headless browser and its flags, for the console tests."""
TEXT_FORMATS = ("json", "json_lines", "csv")
OFFERED = {
    "json": ["gzip", "zstd"],
    "json_lines": ["gzip", "zstd"],
    "csv": ["gzip", "zstd"],
    "parquet": ["gzip", "zstd", "snappy", "lz4"],
    "avro": ["gzip", "zstd", "snappy"],
}
"""The codecs each format offers, written out independently of the code: what common readers open
whole (test_codecs.py proves it and that every other codec is refused)."""


def refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON: strict parsers (JavaScript's JSON.parse, Go, Rust) reject it")


def strict_json(text: str | bytes) -> Any:
    """`json.loads` without Python's extensions: NaN, Infinity and -Infinity are errors."""
    return json.loads(text, parse_constant=refuse_constant)


def decompress(data: bytes, compression: str | None) -> bytes:
    """Decode with the standard command-line tools (gzip, zstd): the codecs text formats offer."""
    if compression is None:
        return data
    tool = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dc"]}[compression]
    return subprocess.run(tool, input=data, capture_output=True, check=True).stdout


def ts_text(value: datetime) -> str:
    assert value.tzinfo is not None, "timestamps must be timezone-aware UTC"
    return value.astimezone(timezone.utc).strftime(RFC3339)


def read_records(path: Path, fmt: str, compression: str | None) -> list[dict[str, Any]]:
    """Rows of an export as dicts: timestamp as RFC 3339 text, `properties` parsed when it is JSON."""
    raw = Path(path).read_bytes()
    if fmt in TEXT_FORMATS:
        raw = decompress(raw, compression)
    if fmt == "json":
        return strict_json(raw)
    if fmt == "json_lines":
        text = raw.decode("utf-8")
        assert text == "" or text.endswith("\n")
        return [strict_json(line) for line in text.split("\n")[:-1]]
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
        for row in rows:
            if "properties" in row:
                row["properties"] = strict_json(row["properties"])
        return rows
    if fmt == "parquet":
        table = pq.read_table(io.BytesIO(raw))
        rows = table.to_pylist()
    else:
        rows = list(fastavro.reader(io.BytesIO(raw)))
    for row in rows:
        row["timestamp"] = ts_text(row["timestamp"])
        if "properties" in row:
            row["properties"] = strict_json(row["properties"])
    return rows


def canonical(rows: list[dict[str, Any]]) -> Counter:
    """Rows as a multiset, comparable across formats."""
    return Counter(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows)


def write_jsonl(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events), encoding="utf-8")
    return path
