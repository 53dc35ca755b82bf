"""Files the event store's engine writes itself (`pipeline/copied.py`: DuckDB's COPY for Parquet, its
Arrow lines for JSON): the same bytes as the batch path (Parquet: the same schema and rows), privacy
applied, and nothing partial on failure."""

from __future__ import annotations

import os
from pathlib import Path

import fastavro
import pyarrow.parquet as pq
import pytest

from analytics_export import ExportRequest, Settings, open_store
from analytics_export.destinations.local import LocalDestination
from analytics_export.errors import Invalid, Storage
from analytics_export.models import ExportFilter
from analytics_export.pipeline import run_export
from analytics_export.pipeline.copied import can_copy, copied_plan
from analytics_export.pipeline.files import export_query
from analytics_export.privacy.policy import Privacy
from analytics_export.privacy.rules import PrivacyRules
from helpers import decompress

WINDOW = dict(start_date="2026-08-03", end_date="2026-11-01")
SHAPES = {
    "all": {},
    "selected": {"properties": ["plan", "price", "$browser", "tags", "missing"]},
    "filtered, with ids": {"events": ["$pageview", "signup_completed"], "include": ["uuid", "inserted_at"],
                           "filters": [ExportFilter(property="price", operator="gte", value=100)]},
}
CASES = [("json", None), ("json", "gzip"), ("json_lines", None), ("json_lines", "zstd"), ("parquet", None),
         ("parquet", "snappy"), ("parquet", "zstd"), ("parquet", "lz4")]
PRIVACY = PrivacyRules.model_validate({"pseudonymize_distinct_id": True, "deny_properties": ["price"],
                                       "redact": [{"properties": ["plan"], "action": "mask", "mask": "***"}]})


@pytest.fixture(scope="module")
def one_thread(demo_settings) -> Settings:
    """The demo store scanned by one thread: rows come in the same order on both paths, so files compare
    byte for byte."""
    return demo_settings.model_copy(update={"duckdb_threads": 1})


def produce(settings: Settings, folder: Path, request: ExportRequest, engine: bool,
            privacy: Privacy | None = None) -> Path:
    store = open_store(settings)
    destination = LocalDestination(folder)
    try:
        result = run_export(request, store, destination, project="default", engine=engine, privacy=privacy)
    finally:
        destination.close()
        store.close()
    return Path(result.destination_path)


def writer_of(path: Path) -> str:
    return pq.ParquetFile(path).metadata.created_by


def assert_same(engine: Path, batches: Path, fmt: str, codec: str | None) -> None:
    if fmt == "parquet":
        assert writer_of(engine).startswith("DuckDB") and writer_of(batches).startswith("parquet-cpp")
        ours, theirs = pq.read_table(engine), pq.read_table(batches)
        assert ours.schema.remove_metadata() == theirs.schema.remove_metadata()
        assert ours.num_rows == theirs.num_rows > 0
        assert ours.equals(theirs)
        codecs = {pq.ParquetFile(p).metadata.row_group(0).column(0).compression for p in (engine, batches)}
        assert len(codecs) == 1, codecs
    else:
        assert decompress(engine.read_bytes(), codec) == decompress(batches.read_bytes(), codec)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt,codec", CASES)
def test_same_bytes_as_the_batch_path(one_thread, tmp_path, fmt, codec, shape):
    request = ExportRequest(format=fmt, compression=codec, **WINDOW, **SHAPES[shape])
    engine = produce(one_thread, tmp_path / "engine", request, engine=True)
    batches = produce(one_thread, tmp_path / "batches", request, engine=False)
    assert_same(engine, batches, fmt, codec)


@pytest.mark.parametrize("fmt", ["json", "json_lines", "parquet"])
def test_privacy_in_sql_is_applied_by_the_engine(one_thread, tmp_path, fmt):
    request = ExportRequest(format=fmt, **WINDOW)
    privacy = lambda: Privacy(PRIVACY, secret=b"s" * 32, suppressed=["user_1"])  # noqa: E731
    engine = produce(one_thread, tmp_path / "engine", request, engine=True, privacy=privacy())
    batches = produce(one_thread, tmp_path / "batches", request, engine=False, privacy=privacy())
    assert_same(engine, batches, fmt, None)
    text = pq.read_table(engine).to_pylist() if fmt == "parquet" else engine.read_text()
    assert "user_1\"" not in str(text) and "price" not in str(text) and "***" in str(text)


def test_python_stages_and_writers_without_an_engine_form_take_the_batch_path(one_thread, tmp_path):
    detector = Privacy(PrivacyRules.model_validate({"redact": [{"detector": "email"}]}))
    path = produce(one_thread, tmp_path, ExportRequest(format="parquet", **WINDOW), engine=True, privacy=detector)
    assert writer_of(path).startswith("parquet-cpp")
    store = open_store(one_thread)
    try:
        def plan(window: dict = WINDOW, fragment: bool = False, **fields) -> object:
            request = ExportRequest(**window, **fields)
            query = export_query(request, "default")
            return copied_plan(request, query, store.estimate(query), fragment)

        assert can_copy(store, None) and not can_copy(store, detector)
        assert plan(format="json_lines") is not None and plan(format="json", compression="gzip") is not None
        assert plan(format="parquet", compression="zstd") is not None
        assert plan(format="csv") is None, "pyarrow's CSV writer measured 2.8x faster than DuckDB's"
        assert plan(format="avro") is None
        empty = {"start_date": "2000-01-01T00:00:00Z", "end_date": "2000-01-02T00:00:00Z"}
        for fmt in ("csv", "avro"):  # no event: the writer's file of no rows, the engine not asked
            assert plan(empty, format=fmt).options is None and plan(empty, format=fmt).head
            assert plan(empty, fragment=True, format=fmt) is None, "an assembly writes the head"
    finally:
        store.close()


EMPTY_CASES = [("json", None), ("json_lines", None), ("csv", None), ("csv", "gzip"), ("csv", "zstd"),
               ("parquet", None), ("avro", None), ("avro", "zstd"), ("avro", "gzip"), ("avro", "snappy")]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt,codec", EMPTY_CASES)
def test_an_empty_window_is_the_batch_paths_empty_file(one_thread, tmp_path, fmt, codec, shape):
    """No event: JSON's brackets, CSV's header and Avro's header (`Writer.empty`, no engine read) are
    what the batch path writes; Avro's differ only in the sync marker, which each file draws at random."""
    fields = dict(start_date="2020-01-01", end_date="2020-01-02", format=fmt, compression=codec, **SHAPES[shape])
    if fmt == "csv":
        fields["csv_formula_guard"] = codec is not None  # the guard's header too
    engine = produce(one_thread, tmp_path / "engine", ExportRequest(**fields), engine=True)
    batches = produce(one_thread, tmp_path / "batches", ExportRequest(**fields), engine=False)
    if fmt == "parquet":
        assert pq.read_table(engine).num_rows == 0
        assert pq.read_table(engine).schema.remove_metadata() == pq.read_table(batches).schema.remove_metadata()
    elif fmt == "avro":
        readers = [fastavro.reader(open(path, "rb")) for path in (engine, batches)]
        assert [list(r) for r in readers] == [[], []]
        assert readers[0].writer_schema == readers[1].writer_schema
        assert readers[0].metadata == readers[1].metadata
        assert engine.read_bytes()[:-16] == batches.read_bytes()[:-16]
    else:
        assert decompress(engine.read_bytes(), codec) == decompress(batches.read_bytes(), codec)


def test_an_engine_error_leaves_nothing(one_thread, tmp_path):
    bad = ExportRequest(format="json_lines", **WINDOW, filters=[ExportFilter(property="plan", operator="regex",
                                                                      value="(?<=a)b")])
    with pytest.raises(Invalid):
        produce(one_thread, tmp_path, bad, engine=True)
    assert list(tmp_path.iterdir()) == []


class Failing(LocalDestination):
    """A folder whose uploads fail after `limit` bytes, as a full disk or a dropped connection would."""

    limit = 1 << 20

    def open(self, name: str):
        upload = super().open(name)
        write, seen = upload.write, [0]

        def failing(data):
            seen[0] += len(data)
            if seen[0] > self.limit:
                raise Storage("the destination went away")
            return write(data)

        upload.write = failing
        return upload


@pytest.mark.parametrize("fmt", ["json_lines", "parquet"])
def test_a_destination_failure_stops_the_engine_and_leaves_nothing(big_store, tmp_path, fmt):
    store = open_store(Settings(data_dir=big_store))
    destination = Failing(tmp_path)
    try:
        with pytest.raises(Storage, match="went away"):
            run_export(ExportRequest(format=fmt, start_date="2000-01-01", end_date="2100-01-01"), store,
                       destination, project="default")
        assert not store.is_empty(), "the store's connection is free again: the engine has stopped"
    finally:
        destination.close()
        store.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["csv", "avro"])
def test_a_failed_batch_export_leaves_the_stores_connection_free(big_store, tmp_path, fmt):
    """The batch path's stream, stopped by the failure part-read, is closed by the store's next query:
    a library user's next export on the same store runs."""
    store = open_store(Settings(data_dir=big_store))
    destination = Failing(tmp_path)
    request = ExportRequest(format=fmt, start_date="2000-01-01", end_date="2100-01-01")
    try:
        with pytest.raises(Storage, match="went away"):
            run_export(request, store, destination, project="default")
        destination.limit = 1 << 40
        run_export(request, store, destination, project="default")
    finally:
        destination.close()
        store.close()
    assert len(list(tmp_path.iterdir())) == 1


def test_a_stream_given_up_on_does_not_hold_the_connection(one_thread):
    store = open_store(one_thread)
    try:
        query = export_query(ExportRequest(**WINDOW, format="csv"), "default")
        stream = store.batches(query, 100)
        next(iter(stream))
        lines = store.lines(query, "c0", 100)
        next(iter(lines))
        assert store.count(query) > 100
        assert store.batches(query, 100).read_all().num_rows == store.count(query)
    finally:
        store.close()


def test_uncompressed_lines_run_on_one_engine_thread_and_the_next_query_on_all(one_thread, tmp_path):
    settings = one_thread.model_copy(update={"duckdb_threads": 2})
    request = ExportRequest(**WINDOW, format="json_lines")
    query = export_query(request, "default")
    assert copied_plan(request, query, 1, False).threads == 1
    assert copied_plan(request.model_copy(update={"compression": "zstd"}), query, 1, False).threads is None
    protected = export_query(request, "default", Privacy(PRIVACY, secret=b"s" * 32))
    assert copied_plan(request, protected, 1, False).threads is None, "privacy's SQL runs on every thread"
    store = open_store(settings)
    try:
        def threads() -> int:
            return store.con.execute("SELECT current_setting('threads')").fetchall()[0][0]

        assert threads() == 2
        lines = store.lines(query, "c0", 100, 1)
        rows = lines.read_all().num_rows
        lines.close()
        assert threads() == 1
        assert rows == store.count(query) and threads() == 2
    finally:
        store.close()
    engine = produce(settings, tmp_path / "engine", request, engine=True)
    batches = produce(one_thread, tmp_path / "batches", request, engine=False)
    assert sorted(engine.read_bytes().splitlines()) == sorted(batches.read_bytes().splitlines())


def test_the_engine_path_works_in_a_process_holding_many_files(one_thread, tmp_path):
    """A worker with many open files (streams, uploads, sockets) gets descriptors past 1024, which
    select() refuses: the engine's pipe (Parquet's COPY) is waited on with poll()."""
    held = []
    try:
        while not held or held[-1] <= 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        request = ExportRequest(**WINDOW, format="parquet")
        store = open_store(one_thread)
        try:
            query = export_query(request, "default")
            assert copied_plan(request, query, store.estimate(query), False).options is not None
        finally:
            store.close()
        path = produce(one_thread, tmp_path, request, engine=True)
        assert pq.ParquetFile(path).metadata.num_rows > 1000
    finally:
        for fd in held:
            os.close(fd)
