"""Ingest JSON Lines, JSON, CSV and Parquet; idempotent on uuid; clear errors for bad files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analytics_export.errors import Invalid
from analytics_export.ingest import ingest_file
from analytics_export.sources.duckdb import DuckDBEventStore
from helpers import write_jsonl

EVENTS = [
    {"uuid": "0b5f6c7e-8d4a-4c3b-9a1e-2f3d4c5b6a70", "event": "signup", "distinct_id": "u1",
     "timestamp": "2026-01-01T10:00:00+02:00", "properties": {"plan": "pro", "n": 1}},
    {"event": "$pageview", "distinct_id": "u2", "timestamp": "2026-01-01 09:30:00.123456",
     "properties": {"$current_url": "https://x.example/a,b", "nested": {"k": [1, "two"]}}},
    {"event": "no_props", "distinct_id": 42, "timestamp": "2026-01-01T11:00:00Z"},
]


@pytest.fixture()
def store(tmp_path: Path):
    s = DuckDBEventStore(tmp_path / "events.duckdb", read_only=False)
    yield s
    s.close()


def rows(store: DuckDBEventStore) -> list[tuple]:
    return store.con.execute(
        """SELECT CAST(uuid AS VARCHAR), project_id, event, distinct_id, CAST("timestamp" AS VARCHAR),
                  CAST(properties AS VARCHAR) FROM events ORDER BY "timestamp" """
    ).fetchall()


def test_jsonl_ingest_is_idempotent(store, tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", EVENTS)
    assert ingest_file(store, path, "p1") == 3
    assert ingest_file(store, path, "p1") == 0, "same uuids (given or derived) are skipped"
    got = rows(store)
    assert [r[2] for r in got] == ["signup", "$pageview", "no_props"]
    assert got[0][0] == EVENTS[0]["uuid"]
    assert got[0][4] == "2026-01-01 08:00:00+00", "offsets are converted to UTC"
    assert got[1][4] == "2026-01-01 09:30:00.123456+00", "naive timestamps are UTC"
    assert got[2][3] == "42"
    assert json.loads(got[1][5]) == EVENTS[1]["properties"]
    assert json.loads(got[2][5]) == {}
    assert {r[1] for r in got} == {"p1"}


def test_duplicates_inside_one_file_are_kept_once(store, tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", EVENTS + EVENTS)
    assert ingest_file(store, path, "p") == 3


def test_csv_columns_become_properties(store, tmp_path):
    path = tmp_path / "e.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["event", "distinct_id", "timestamp", "plan", "price", "properties"])
        w.writerow(["buy", "u1", "2026-01-01T00:00:00Z", "pro, yearly", "9.5", '{"a": "x\\ny"}'])
        w.writerow(["buy", "u2", "2026-01-01T00:00:01Z", "", "", ""])
    assert ingest_file(store, path, "p") == 2
    props = [json.loads(r[5]) for r in rows(store)]
    assert props == [{"a": "x\ny", "plan": "pro, yearly", "price": 9.5}, {}]


def test_parquet_ingest(store, tmp_path):
    table = pa.table({
        "event": ["a", "b"], "distinct_id": ["1", "2"],
        "timestamp": pa.array([1_767_225_600_000_000, 1_767_225_600_000_001], pa.timestamp("us", tz="UTC")),
        "properties": ['{"x": 1}', '{"y": "z"}'],
    })
    pq.write_table(table, tmp_path / "e.parquet")
    assert ingest_file(store, tmp_path / "e.parquet", "p") == 2
    assert ingest_file(store, tmp_path / "e.parquet", "p") == 0
    assert [json.loads(r[5]) for r in rows(store)] == [{"x": 1}, {"y": "z"}]


def test_projects_are_separate(store, tmp_path):
    """uuids are unique per project: one tenant's events, even with a uuid another tenant used (or
    could guess), never suppress another tenant's."""
    path = write_jsonl(tmp_path / "e.jsonl", EVENTS[1:])
    assert ingest_file(store, path, "a") == 2
    assert ingest_file(store, path, "b") == 2
    assert ingest_file(store, path, "b") == 0


@pytest.mark.parametrize("content, message", [
    ('{"event": "a", "timestamp": "2026-01-01"}\n', "missing column.*distinct_id"),
    ('{"event": "a", "distinct_id": "u", "timestamp": "yesterday"}\n', "yesterday"),
    ('{"event": "a", "distinct_id": "u", "timestamp": "2026-01-01", "properties": [1]}\n', "JSON object"),
    ('{"event": "a", "distinct_id": "u", "timestamp": "2026-01-01", "uuid": "nope"}\n', "nope"),
    ('{"event": null, "distinct_id": "u", "timestamp": "2026-01-01"}\n', "NOT NULL|event"),
    ("not json at all\n", "e.jsonl"),
])
def test_bad_files_say_what_is_wrong(store, tmp_path, content, message):
    path = tmp_path / "e.jsonl"
    path.write_text(content)
    with pytest.raises(Invalid, match=message):
        ingest_file(store, path, "p")
    assert rows(store) == [], "nothing from a bad file is kept"


HEAD = '{"event": "a", "distinct_id": "u", "timestamp": "2026-01-01T00:00:00Z"'
NAN_FILES = {
    "properties NaN": ("e.jsonl", HEAD + ', "properties": {"x": NaN}}\n', '"x"'),
    "top-level Infinity": ("e.jsonl", HEAD + ', "x": -Infinity}\n', '"x"'),
    "nested, lower case": ("e.json", "[" + HEAD + ', "properties": {"o": {"deep": [1, nan]}}}]', "a property"),
    "csv cell": ("e.csv", "event,distinct_id,timestamp,x\na,u,2026-01-01,1.5\na,u,2026-01-02,NaN\n", '"x"'),
    "csv properties": ("e.csv", 'event,distinct_id,timestamp,properties\na,u,2026-01-01,"{""x"": inf}"\n', '"x"'),
}


@pytest.mark.parametrize("name", NAN_FILES)
def test_nan_and_infinity_are_refused_naming_the_key(store, tmp_path, name):
    """JSON has no NaN or Infinity; stored, they made exports that strict parsers reject."""
    file, content, key = NAN_FILES[name]
    (tmp_path / file).write_text(content)
    with pytest.raises(Invalid, match=f"{key} holds NaN or Infinity"):
        ingest_file(store, tmp_path / file, "p")
    assert rows(store) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), '{"x": NaN}'])
def test_parquet_nan_is_refused(store, tmp_path, value):
    column = "properties" if isinstance(value, str) else "x"
    table = pa.table({"event": ["a", "a"], "distinct_id": ["u", "u"], "timestamp": ["2026-01-01", "2026-01-02"],
                      column: [value, value if isinstance(value, str) else 2.5]})
    pq.write_table(table, tmp_path / "e.parquet")
    with pytest.raises(Invalid, match='"x" holds NaN or Infinity'):
        ingest_file(store, tmp_path / "e.parquet", "p")


def test_nan_in_a_string_is_text(store, tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [{"event": "a", "distinct_id": "u", "timestamp": "2026-01-01",
                                               "properties": {"NaN": "Infinity", "s": "banana info", "t": "ratio: NaN, [inf",
                                                              "n": 1e300}}])
    assert ingest_file(store, path, "p") == 1
    assert json.loads(rows(store)[0][5]) == {"NaN": "Infinity", "s": "banana info", "t": "ratio: NaN, [inf", "n": 1e300}


@pytest.mark.parametrize("stamp", ["2026-01-01T00:00:00+25:00", "2026-01-01T00:00:00-24:00",
                                   "2026-01-01T00:00:00+01:60", "2026-01-01 00:00:00+2500", "infinity"])
def test_timestamps_past_rfc_3339_are_refused(store, tmp_path, stamp):
    """DuckDB takes +25:00 as 25 hours and `infinity` as a time: neither is a time an event happened."""
    path = write_jsonl(tmp_path / "e.jsonl", [{"event": "a", "distinct_id": "u", "timestamp": stamp}])
    with pytest.raises(Invalid, match="offset past RFC 3339|not a finite time"):
        ingest_file(store, path, "p")


def test_offsets_within_rfc_3339_are_taken(store, tmp_path):
    stamps = ["2026-01-01T00:00:00+23:59", "2026-01-01T00:00:00-23:00", "2026-01-01T00:00:00.5+05:30",
              "2026-01-01 00:00:00+0100", "2026-01-01T00:00:00Z", "2026-01-01"]
    path = write_jsonl(tmp_path / "e.jsonl", [{"event": "a", "distinct_id": f"u{i}", "timestamp": s}
                                              for i, s in enumerate(stamps)])
    assert ingest_file(store, path, "p") == len(stamps)


def test_csv_with_an_unbalanced_quote_is_refused(store, tmp_path):
    """RFC 4180, what exports write: a quote that never closes is a broken file, not part of a value."""
    path = tmp_path / "e.csv"
    path.write_text('event,distinct_id,timestamp\na,"u,2026-01-01T00:00:00Z\n')
    with pytest.raises(Invalid, match="e.csv"):
        ingest_file(store, path, "p")
    assert rows(store) == []
    path.write_text('event,distinct_id,timestamp,note\na,"u ""q"", x",2026-01-01,"two\nlines"\n')
    assert ingest_file(store, path, "p") == 1
    assert rows(store)[0][3] == 'u "q", x'


def cut_gzip(path: Path) -> None:
    import gzip
    data = gzip.compress(b"".join(b'{"event":"a","distinct_id":"u%d","timestamp":"2026-01-01"}\n' % i
                                  for i in range(20_000)))
    path.write_bytes(data[: len(data) // 2])


BROKEN_FILES = {
    "not gzip": ("e.jsonl.gz", lambda p: p.write_bytes(b'{"event": "a"}\n'), "is not gzip-compressed"),
    "corrupt gzip": ("e.jsonl.gz", lambda p: p.write_bytes(b"\x1f\x8bgarbage"), "is corrupt or cut off"),
    "cut gzip": ("e.jsonl.gz", cut_gzip, r"is corrupt or cut off \(Unexpected end of GZIP stream\)"),
    "not zstd": ("e.csv.zst", lambda p: p.write_bytes(b"event,distinct_id,timestamp\n"), "is not zstd-compressed"),
    "empty": ("e.jsonl", lambda p: p.write_bytes(b""), "is empty"),
    "directory": ("e.jsonl", lambda p: p.mkdir(), "is a directory"),
    "empty array": ("e.json", lambda p: p.write_text("[]"), "holds no event objects"),
    "ragged csv": ("e.csv", lambda p: p.write_text("event,distinct_id,timestamp\n" + "a,u,2026-01-01\n" * 30_000
                                                    + "a,u,2026-01-01,x\n"), "Expected Number of Columns: 3 Found: 4"),
    "not utf-8": ("e.csv", lambda p: p.write_bytes(b"event,distinct_id,timestamp\na,\xff\xfe,2026-01-01\n"),
                  "not utf-8 encoded"),
}


@pytest.mark.parametrize("name", BROKEN_FILES)
def test_broken_files_say_why(store, tmp_path, name):
    file, make, message = BROKEN_FILES[name]
    make(tmp_path / file)
    with pytest.raises(Invalid, match=message) as raised:
        ingest_file(store, tmp_path / file, "p")
    assert "\n" not in str(raised.value), "one line"
    assert rows(store) == []


def test_unknown_extension_and_missing_file(store, tmp_path):
    (tmp_path / "e.xml").write_text("<a/>")
    with pytest.raises(Invalid, match="use .jsonl"):
        ingest_file(store, tmp_path / "e.xml", "p")
    with pytest.raises(Invalid, match="no such file"):
        ingest_file(store, tmp_path / "missing.jsonl", "p")


def test_the_same_events_ingested_at_once_by_many_threads_are_stored_once(tmp_path: Path):
    """A client's retried POST can run while its first one still does: each insert must see the other's."""
    from concurrent.futures import ThreadPoolExecutor

    events = [{"uuid": f"00000000-0000-4000-8000-{i:012d}", "event": "e", "distinct_id": "u",
               "timestamp": "2026-01-01T00:00:00Z"} for i in range(20_000)]
    path = write_jsonl(tmp_path / "events.jsonl", events)
    DuckDBEventStore(tmp_path / "events.duckdb", read_only=False).close()

    def ingest(_: int) -> int:
        store = DuckDBEventStore(tmp_path / "events.duckdb", read_only=False)
        try:
            return ingest_file(store, path, "p")
        finally:
            store.close()

    with ThreadPoolExecutor(4) as pool:
        added = list(pool.map(ingest, range(8)))
    assert sorted(added) == [0] * 7 + [20_000]
    store = DuckDBEventStore(tmp_path / "events.duckdb")
    try:
        assert store.execute("SELECT count(*), count(DISTINCT uuid) FROM events", []).fetchall() == [(20_000, 20_000)]
    finally:
        store.close()


def test_ingests_that_arrive_together_share_one_connection_each_with_its_own_result(tmp_path: Path):
    """The API's writer: bodies posted at once are stored by one connection, opened and closed around
    them (the file is free for other processes between groups); each gets its own count or error, and
    the first open of a new store by several of them records its facts once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from analytics_export.api.ingest_writer import GroupWriter

    opened, gate = [], threading.Event()

    def open_store() -> DuckDBEventStore:
        gate.wait(5)  # the first group waits until every body is queued behind it
        opened.append(1)
        return DuckDBEventStore(tmp_path / "events.duckdb", read_only=False)

    writer = GroupWriter(open_store)
    bodies = [write_jsonl(tmp_path / f"b{i}.jsonl", [{"event": "e", "distinct_id": f"u{i}-{j}",
                                                      "timestamp": "2026-01-01T00:00:00Z"} for j in range(i + 1)])
              for i in range(6)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event": "e"}\n')

    def ingest(path: Path) -> int | str:
        try:
            return writer.ingest(path, "p")
        except Invalid as exc:
            return str(exc)

    with ThreadPoolExecutor(7) as pool:
        results = [pool.submit(ingest, path) for path in [*bodies, bad]]
        while len(writer.waiting) < 6:  # one caller has the turn, the six others wait for it
            threading.Event().wait(0.01)
        gate.set()
        results = [r.result() for r in results]
    assert results[:6] == [1, 2, 3, 4, 5, 6]
    assert "distinct_id" in results[6]
    assert len(opened) == 2, "the first caller's body alone, then the six that queued behind it together"
    store = DuckDBEventStore(tmp_path / "events.duckdb")  # no connection of the writer holds the file
    try:
        assert store.execute("SELECT count(*) FROM events", []).fetchall() == [(21,)]
    finally:
        store.close()
