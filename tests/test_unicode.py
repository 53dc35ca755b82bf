"""Arbitrary text in event names, distinct_ids and property values survives every format exactly.

Both paths are compared byte for byte: the store's engine writing the file (DuckDB's COPY) and
Arrow batches through our writers. Every example ingests into a project of its own in one event store, opened once for the module and
exported from through the pipeline itself: opening DuckDB costs more than exporting a dozen events,
and `export()` (which opens the store per call) has tests of its own (test_layers, test_privacy)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics_export import ExportRequest, Settings, open_store
from analytics_export.destinations.local import LocalDestination
from analytics_export.ingest import ingest_file
from analytics_export.pipeline import run_export
from analytics_export.sources import EventStore
from conftest import expected
from helpers import canonical, read_records, write_jsonl

# Any Unicode scalar value (JSON cannot carry lone surrogates), including NUL, CR/LF, quotes and emoji.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ['"', "'", ",", "\r\n", "\n", "\r", '""', '","', "\\", "\\u0000", "🚀🎉", "é\u0301", "\u2028\u2029", "x" * 5000]
)
scalar = text | st.integers(-(2**53), 2**53) | st.booleans() | st.none() | st.floats(allow_nan=False, allow_infinity=False, width=32)
event = st.fixed_dictionaries({
    "event": text.filter(bool),
    "distinct_id": text,
    "properties": st.fixed_dictionaries({"s": text}, optional={"n": scalar, "t": text, "l": st.lists(scalar, max_size=3)}),
})
counter = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventStore]:
    # one thread: rows in the same order on both paths, so their files compare byte for byte
    store = open_store(Settings(data_dir=tmp_path_factory.mktemp("unicode"), duckdb_threads=1), read_only=False)
    yield store
    store.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(event, min_size=1, max_size=12))
def test_text_survives_every_format(store: EventStore, tmp_path: Path, events):
    project = f"p{next(counter)}"
    rows = [dict(e, timestamp=f"2026-03-01T00:00:{i:02d}.000001Z") for i, e in enumerate(events)]
    assert ingest_file(store, write_jsonl(tmp_path / f"in-{project}.jsonl", rows), project) == len(rows)
    for fmt in ("json", "json_lines", "csv", "parquet", "avro"):
        for selected in (None, ["s", "n", "l"]):
            out, batches = tmp_path / f"out-{project}.{fmt}", tmp_path / f"batches-{project}.{fmt}"
            request = ExportRequest(start_date="2026-03-01", end_date="2026-03-02", format=fmt, properties=selected)
            for path, engine in ((out, True), (batches, False)):  # the engine's COPY where it can, and batches
                destination = LocalDestination(tmp_path, path)
                try:
                    run_export(request, store, destination, project=project, engine=engine)
                finally:
                    destination.close()
            if fmt == "parquet":
                assert pq.read_table(out).equals(pq.read_table(batches))
            elif fmt == "avro":  # batches both ways; each file has a random sync marker
                assert read_records(out, fmt, None) == read_records(batches, fmt, None)
            else:
                assert out.read_bytes() == batches.read_bytes(), (fmt, selected)
            want = expected(rows, fmt, selected)
            got = read_records(out, fmt, None)
            if selected and fmt not in ("json", "json_lines"):
                got, want = as_values(got), as_values(want)
            assert canonical(got) == canonical(want), (fmt, selected)


def as_values(rows: list[dict]) -> list[dict]:
    """Tabular property columns compared by value: a number's JSON text may be spelled either way
    (`1e16` or `10000000000000000.0`), and CSV cannot tell an empty string from a missing value."""
    out = []
    for row in rows:
        row = {k: (None if v == "" else v) for k, v in row.items()}
        for k in ("n", "l"):
            if row[k] is not None and not isinstance(row[k], str):
                raise AssertionError(f"{k} must be text, got {row[k]!r}")
        out.append(row | {"n_l": [parse(row.pop("n")), parse(row.pop("l"))]})
    return out


def parse(text: str | None) -> object:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return text
