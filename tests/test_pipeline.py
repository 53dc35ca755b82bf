"""The pipeline's guarantees: nothing partial on failure or cancel, progress reported, read-ahead bounded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import FailingSource

from analytics_export import ExportRequest, Settings, open_store
from analytics_export.destinations.local import LocalDestination
from analytics_export.errors import Cancelled, Storage
from analytics_export.pipeline import run_export
from analytics_export.pipeline.batches import read_ahead
from analytics_export.sources import EventQuery

REQUEST = dict(start_date="2000-01-01", end_date="2100-01-01")


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet", "avro"])
def test_source_failure_leaves_nothing(demo_settings, tmp_path: Path, fmt):
    store = open_store(demo_settings)
    try:
        with pytest.raises(Storage, match="lost"):
            run_export(ExportRequest(format=fmt, compression="gzip", **REQUEST), FailingSource(store, 2),
                       LocalDestination(tmp_path), project=demo_settings.project, batch_size=2048)
    finally:
        store.close()
    assert list(tmp_path.iterdir()) == []


def test_cancel_stops_and_cleans_up(demo_settings, tmp_path: Path):
    seen = []
    store = open_store(demo_settings)
    try:
        with pytest.raises(Cancelled):
            run_export(ExportRequest(format="json_lines", **REQUEST), store, LocalDestination(tmp_path),
                       project=demo_settings.project, batch_size=1024, engine=False,
                       on_progress=lambda p: seen.append((p.events, p.bytes)), should_stop=lambda: len(seen) >= 3)
    finally:
        store.close()
    assert list(tmp_path.iterdir()) == []
    assert [e for e, _ in seen] == [1024, 2048, 3072]
    assert all(b2 > b1 for (_, b1), (_, b2) in zip(seen, seen[1:])), "bytes grow with every batch"


@pytest.mark.parametrize("fmt", ["json", "json_lines", "parquet"])
def test_cancel_stops_the_engine_and_cleans_up(big_store, tmp_path: Path, fmt):
    """The engine's COPY (1M events, a second or more) is interrupted at the first report after the cancel."""
    seen = []
    store = open_store(Settings(data_dir=big_store))
    try:
        with pytest.raises(Cancelled):
            run_export(ExportRequest(format=fmt, **REQUEST), store, LocalDestination(tmp_path),
                       project="default", on_progress=lambda p: seen.append((p.events, p.bytes)),
                       should_stop=lambda: len(seen) >= 2)
    finally:
        store.close()
    assert list(tmp_path.iterdir()) == []
    assert len(seen) == 2 and seen[-1][1] > 0, seen
    assert all(e2 >= e1 and b2 >= b1 for (e1, b1), (e2, b2) in zip(seen, seen[1:])), "progress never goes back"


def test_progress_ends_with_the_totals(demo_settings, tmp_path: Path):
    seen = []
    store = open_store(demo_settings)
    try:
        result = run_export(ExportRequest(format="csv", compression="zstd", **REQUEST), store,
                            LocalDestination(tmp_path), project=demo_settings.project, batch_size=4096,
                            on_progress=lambda p: seen.append((p.events, p.bytes)))
    finally:
        store.close()
    assert seen[-1] == (result.total_events, result.file_size)


def test_batches_are_bounded(demo_settings):
    store = open_store(demo_settings)
    try:
        query = EventQuery(project=demo_settings.project, start=ExportRequest(**REQUEST, format="csv").start_date,
                           end=ExportRequest(**REQUEST, format="csv").end_date)
        sizes = [b.num_rows for b in store.batches(query, 3000)]
    finally:
        store.close()
    assert max(sizes) <= 3000 and sum(sizes) == 20_000


def test_read_ahead_stops_its_thread_when_the_consumer_leaves():
    produced = []

    def batches():
        for i in range(1000):
            produced.append(i)
            yield i

    reader = read_ahead(batches(), 2)
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    reader.close()
    assert len(produced) <= 6, "the producer never runs far ahead"
    assert not any(t.name == "export-source" for t in threading.enumerate())


def test_read_ahead_passes_errors_on():
    def batches():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(read_ahead(batches(), 2))


class Recording:
    """An upload that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list = []

    def write(self, data) -> int:
        self.got.append(data)
        return len(data)

    def commit(self) -> str:
        return "recorded"


def test_background_upload_copies_reusable_buffers_and_passes_arrow_views_as_they_are():
    import pyarrow as pa

    from analytics_export.destinations import BackgroundUpload

    reused, arrow = bytearray(b"first"), memoryview(pa.py_buffer(b"lines\n"))[1:]
    upload = BackgroundUpload(Recording())
    upload.write(memoryview(reused))
    reused[:] = b"later"  # a writer reusing its buffer once write returned
    upload.write(arrow)
    upload.commit()
    first, second = upload.upload.got
    assert first == b"first" and isinstance(first, bytes)
    assert second is arrow, "an immutable Arrow buffer's view is not copied"


@given(st.lists(st.text(), max_size=20), st.integers(0, 5), st.sampled_from(["string", "large_string"]))
def test_string_bytes_are_the_values_concatenated(values, cut, kind):
    import pyarrow as pa

    from analytics_export.formats import string_bytes

    array = pa.array(values, type=getattr(pa, kind)()).slice(min(cut, len(values)))
    assert bytes(string_bytes(array)) == "".join(values[min(cut, len(values)):]).encode()
