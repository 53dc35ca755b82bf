"""Every event store answers every query identically: the same demo events in the embedded DuckDB
file and in PostgreSQL (127.0.0.1:5432), exported in every format with every kind of selection and
filter, must give the same rows, and for the text formats the same lines byte for byte."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import duckdb
import pytest
import hypothesis
from hypothesis import strategies as st
from conftest import DEMO_END
from helpers import canonical, decompress, read_records, strict_json, write_jsonl
from service import Service, create_key, wait_for

from analytics_export import Settings, export, open_store
from analytics_export.errors import Invalid
from analytics_export.ingest import ingest_file
from analytics_export.sources import RFC3339, EventQuery, utc_strftime

WINDOW = {"start_date": "2026-09-01", "end_date": "2026-11-01"}
CASES = {
    "all": {},
    "events+selection": {"events": ["$pageview", "purchase_completed"], "properties": ["plan", "price", "absent"]},
    "numbers": {"filters": [{"property": "price", "operator": "gte", "value": 100},
                            {"property": "quantity", "operator": "in", "value": [1, 2, 3]}]},
    "strings": {"filters": [{"property": "$browser", "operator": "neq", "value": "Chrome"},
                            {"property": "$current_url", "operator": "contains", "value": "/docs"}],
                "properties": ["$browser", "$current_url"]},
    "regex+set": {"filters": [{"property": "$os", "operator": "regex", "value": "^(Mac|Win)"},
                              {"property": "plan", "operator": "is_not_set"}]},
    "inserted_at": {"time_field": "inserted_at"},
}


@pytest.fixture(scope="module")
def stores(demo_settings, pg_url_module, tmp_path_factory) -> dict[str, Settings]:
    """The demo events in DuckDB and, copied row for row (uuids, timestamps, text), in PostgreSQL and
    in ClickHouse (chDB, the in-process engine, through the same clickhouse-connect client)."""
    out = {"duckdb": demo_settings}
    for name, url in (("postgres", pg_url_module), ("clickhouse", f"chdb://{tmp_path_factory.mktemp('chdb')}")):
        out[name] = Settings(data_dir=demo_settings.data_dir, events_url=url)
        store = open_store(out[name], read_only=False)
        try:
            store.execute(f"ATTACH '{demo_settings.events_path}' AS demo (READ_ONLY)", [])
            assert store.insert("SELECT * FROM demo.events") > 10_000
            assert store.insert("SELECT * FROM demo.events LIMIT 100") == 0, "idempotent on uuid"
        finally:
            store.close()
    return out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt,compression", [("json_lines", None), ("json", "gzip"), ("csv", "zstd"),
                                             ("parquet", "snappy"), ("avro", None)])
def test_every_store_exports_the_same(stores, tmp_path, case, fmt, compression):
    request = {**WINDOW, "format": fmt, "compression": compression, **CASES[case]}
    out = {name: export(settings=s, output=tmp_path / name, **request) for name, s in stores.items()}
    assert out["duckdb"].total_events == out["postgres"].total_events == out["clickhouse"].total_events > 0
    rows = {name: canonical(read_records(tmp_path / name, fmt, compression)) for name in stores}
    assert rows["duckdb"] == rows["postgres"] == rows["clickhouse"]
    if fmt in ("json_lines", "csv"):  # the text itself, properties included, is the same (order may differ)
        lines = {name: sorted(decompress((tmp_path / name).read_bytes(), compression).splitlines()) for name in stores}
        assert lines["duckdb"] == lines["postgres"] == lines["clickhouse"]


def test_estimates_bound_a_window_before_filters(stores):
    """The estimate partitions are planned with: exact in DuckDB and ClickHouse, the planner's
    statistics in PostgreSQL (close once ANALYZE has run, as autovacuum does)."""
    query = EventQuery(project="default", start=DEMO_END.replace(month=8), end=DEMO_END.replace(month=10),
                       events=("signup",))
    unfiltered = EventQuery(project="default", start=query.start, end=query.end)
    exact = {}
    for name, settings in stores.items():
        store = open_store(settings, read_only=name != "duckdb")
        try:
            if name == "postgres":
                with store.cursor() as cur:
                    cur.execute("ANALYZE events")
            exact[name] = store.count(unfiltered)
            assert store.estimate(query) == store.estimate(unfiltered), "filters are not counted"
            estimate = store.estimate(unfiltered)
        finally:
            store.close()
        assert 0.8 * exact[name] <= estimate <= 1.25 * exact[name] if name == "postgres" else estimate == exact[name]
    assert len(set(exact.values())) == 1


def test_a_project_named_with_quotes_is_read_as_its_own(stores, tmp_path):
    """PostgreSQL pages read the project from a session setting bound as a parameter: quotes and
    backslashes stay text."""
    project = "o'brien\\'; DROP TABLE events; --"
    events = [{"event": "signup", "distinct_id": f"q-{n}", "timestamp": "2026-11-20T10:00:00Z"} for n in range(7)]
    store = open_store(stores["postgres"], read_only=False)
    try:
        assert ingest_file(store, write_jsonl(tmp_path / "q.jsonl", events), project) == 7
        query = EventQuery(project=project, start=DEMO_END, end=DEMO_END.replace(month=12))
        assert sorted(r["distinct_id"] for r in store.batches(query, 100).read_all().to_pylist()) == [
            f"q-{n}" for n in range(7)]
        assert store.count(EventQuery(project="o'brien", start=query.start, end=query.end)) == 0
    finally:
        store.close()


def test_counts_and_ingest_into_postgres(stores, tmp_path):
    settings = stores["postgres"]
    events = [{"uuid": f"00000000-0000-4000-8000-{n:012d}", "event": "signup", "distinct_id": f"pg-{n}",
               "timestamp": "2026-11-20T10:00:00Z", "properties": {"n": n, "source": "pg test"}} for n in range(50)]
    path = write_jsonl(tmp_path / "new.jsonl", events)
    store = open_store(settings, read_only=False)
    try:
        assert ingest_file(store, path, "default") == 50
        assert ingest_file(store, path, "default") == 0, "uuids already stored are skipped"
        query = EventQuery(project="default", start=DEMO_END, end=DEMO_END.replace(month=12), events=("signup",))
        assert store.count(query) == 50
    finally:
        store.close()


def test_the_service_on_a_postgresql_event_store(stores, tmp_path):
    settings = stores["postgres"]
    env = {"ANALYTICS_EXPORT_EVENTS_URL": settings.events_url}
    svc = Service(tmp_path, 1, env)
    try:
        key = create_key(tmp_path, "tenant", env)
        with svc.client(key) as c:
            body = "\n".join(json.dumps({"event": "api", "distinct_id": f"t{n}", "timestamp": "2026-11-21T00:00:00Z",
                                         "properties": {"n": n}}) for n in range(30))
            posted = c.post("/api/events", content=body, headers={"Content-Type": "application/x-ndjson"})
            assert posted.status_code == 200 and posted.json() == {"ingested": 30}
            created = c.post("/api/exports", json={"start_date": "2026-11-21", "end_date": "2026-11-22",
                                                   "format": "csv"}).json()
            done = wait_for(c, created["id"])
            assert done["result"]["total_events"] == 30, "only the tenant's events, from PostgreSQL"
            text = c.get(done["result"]["download_url"]).text
            assert text.count("\r\n") == 31 and "t29" in text
    finally:
        svc.close()


def test_scans_page_through_the_window(stores, tmp_path):
    """Engines are read in time slices sized to about `page_rows`; with 997 (so slices are resized and
    re-read all the time) every event still arrives exactly once, in both time fields."""
    from analytics_export.destinations.local import LocalDestination
    from analytics_export.models import ExportRequest
    from analytics_export.pipeline import run_export

    for time_field in ("timestamp", "inserted_at"):
        request = ExportRequest(**WINDOW, format="json_lines", time_field=time_field)
        expected = export(settings=stores["duckdb"], output=tmp_path / "duckdb.jsonl", **request.model_dump(
            include={"start_date", "end_date", "format", "time_field"}))
        for name in ("postgres", "clickhouse"):
            store = open_store(stores[name])
            store.page_rows = 997
            try:
                result = run_export(request, store, LocalDestination(tmp_path, tmp_path / f"{name}.jsonl"),
                                    project="default")
            finally:
                store.close()
            assert result.total_events == expected.total_events > 5 * 997
            assert sorted((tmp_path / f"{name}.jsonl").read_bytes().splitlines()) == sorted(
                (tmp_path / "duckdb.jsonl").read_bytes().splitlines())


@pytest.mark.parametrize("fmt", ["json_lines", "csv"])
def test_every_store_applies_the_same_privacy_in_its_scan(stores, tmp_path, fmt):
    from analytics_export.destinations.local import LocalDestination
    from analytics_export.models import ExportRequest
    from analytics_export.pipeline import run_export
    from analytics_export.privacy.policy import Privacy
    from analytics_export.privacy.rules import PrivacyRules, RedactionRule

    rules = PrivacyRules(deny_properties=["plan"], pseudonymize_distinct_id=True, pseudonymize_properties=["$os"],
                         redact=[RedactionRule(properties=["$browser"]), RedactionRule(properties=["tags"], action="drop"),
                                 RedactionRule(pattern="(?i)shoes")])
    request = ExportRequest(**WINDOW, format=fmt,
                            properties=["plan", "$os", "$browser", "tags", "search_query"] if fmt == "csv" else None)
    lines, totals = {}, {}
    for name, settings in stores.items():
        privacy = Privacy(rules, version=7, secret=b"k" * 32, suppressed=["user_1", "user_2", "user_3"])
        store = open_store(settings)
        try:
            result = run_export(request, store, LocalDestination(tmp_path, tmp_path / f"{name}.{fmt}"),
                                project="default", privacy=privacy)
        finally:
            store.close()
        assert result.privacy_policy_version == 7 and result.dropped_properties == (["plan"] if fmt == "csv" else [])
        text = (tmp_path / f"{name}.{fmt}").read_text()
        lines[name], totals[name] = sorted(text.splitlines()), result.total_events
        for leaked in ('"plan"', "user_1,", '"user_1"', "Chrome", "Firefox", "shoes", '"tags"'):
            assert leaked not in text, (name, leaked)
    assert lines["duckdb"] == lines["postgres"] == lines["clickhouse"]
    assert totals["duckdb"] == totals["postgres"] == totals["clickhouse"] > 1000


@pytest.mark.parametrize("engine", ["duckdb", "clickhouse", "postgres"])
def test_nan_is_refused_at_ingest_and_a_stored_one_exports_as_null(engine, pg_url, tmp_path):
    """Every store ingests through the same SQL, which refuses NaN and Infinity; a NaN a store held
    anyway (put there before that check, or by another program) leaves every export as null, so each
    JSON text an export holds parses with a strict parser. PostgreSQL's jsonb cannot hold one at all."""
    url = {"duckdb": None, "clickhouse": f"chdb://{tmp_path / 'chdb'}", "postgres": pg_url}[engine]
    settings = Settings(data_dir=tmp_path / "data", events_url=url)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"event": "a", "distinct_id": "u", "timestamp": "2026-01-01"}])
    bad.write_text(bad.read_text().replace("}", ', "properties": {"x": NaN}}'))
    store = open_store(settings, read_only=False)
    try:
        with pytest.raises(Invalid, match='"x" holds NaN or Infinity'):
            ingest_file(store, bad, "default")
        if engine != "postgres":
            assert store.insert("""SELECT uuid() AS uuid, 'default' AS project_id, 'a' AS event, 'u' AS distinct_id,
                                   TIMESTAMPTZ '2026-01-01 00:00:00+00' AS "timestamp",
                                   '{"x": NaN, "y": [-Infinity, 1], "s": "a: NaN", "n": 1.5}'::JSON AS properties,
                                   now() AS inserted_at""") == 1
    finally:
        store.close()
    if engine == "postgres":
        return
    if engine == "duckdb":  # as a store from before ingest refused NaN: it has not recorded that it is finite
        con = duckdb.connect(str(settings.events_path))
        con.execute("DELETE FROM store_facts")
        con.close()
    window = {"start_date": "2026-01-01", "end_date": "2026-01-02"}
    expected = {"x": None, "y": [None, 1], "s": "a: NaN", "n": 1.5}
    for fmt in ("json", "json_lines", "csv", "parquet", "avro"):
        export(settings=settings, output=tmp_path / fmt, format=fmt, **window)
        [row] = read_records(tmp_path / fmt, fmt, None)  # a strict parser: NaN and Infinity are errors
        assert row["properties"] == expected, fmt
    if engine == "duckdb":  # opened for writing, the store makes its properties finite once, where they lie
        open_store(settings, read_only=False).close()
        con = duckdb.connect(str(settings.events_path), read_only=True)
        [(stored,)] = con.execute("SELECT CAST(properties AS VARCHAR) FROM events").fetchall()
        assert con.execute("SELECT count(*) FROM store_facts").fetchall() == [(1,)]
        con.close()
        assert strict_json(stored) == expected
        export(settings=settings, output=tmp_path / "after", format="json_lines", **window)
        assert read_records(tmp_path / "after", "json_lines", None)[0]["properties"] == expected


def test_the_embedded_store_caps_duckdb_by_what_the_query_runs(demo_settings):
    """A query runs under 128MB, more for each in-list filter and JSON call site (filters, selected
    properties); a cap set in the settings holds for every query."""
    from datetime import datetime, timezone

    from analytics_export.models import ExportFilter

    window = EventQuery(project="default", start=datetime(2000, 1, 1, tzinfo=timezone.utc),
                        end=datetime(2100, 1, 1, tzinfo=timezone.utc))
    in_list = ExportFilter(property="plan", operator="in", value=["pro", "free"])
    equal = ExportFilter(property="plan", operator="eq", value="pro")
    shapes = [(window, "128MB"), (EventQuery(**{**window.__dict__, "properties": ("plan",) * 4}), "130MB"),
              (EventQuery(**{**window.__dict__, "filters": (in_list, equal)}), "145MB"), (window, "128MB")]

    def cap(store) -> str:
        return store.execute("SELECT current_setting('memory_limit')", []).fetchall()[0][0]

    store = open_store(demo_settings)
    try:
        for query, wanted in shapes:
            store.batches(query, 1024).read_all()
            assert cap(store) == cap_text(wanted), query
    finally:
        store.close()
    store = open_store(demo_settings.model_copy(update={"duckdb_memory_limit": "300MB"}))
    try:
        for query, _ in shapes:
            store.batches(query, 1024).read_all()
            assert cap(store) == cap_text("300MB")
    finally:
        store.close()


def cap_text(size: str) -> str:
    """DuckDB's spelling of a memory setting (`128MB` reads back as `122.0 MiB`)."""
    connection = duckdb.connect(config={"memory_limit": size})
    try:
        return connection.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    finally:
        connection.close()


def test_writers_that_hold_batches_in_python_leave_duckdb_less():
    """CSV and Avro hold Arrow batches (and polars) in Python, and JSON's lines pass through Arrow: their
    reads run under a smaller cap."""
    from analytics_export.models import ExportRequest
    from analytics_export.pipeline.files import export_query
    from analytics_export.sources.duckdb import memory_for

    caps = {fmt: memory_for(export_query(ExportRequest(format=fmt, start_date="2026-01-01", end_date="2026-01-02"),
                                         "default"))
            for fmt in ("csv", "avro", "parquet", "json_lines")}
    assert caps == {"csv": "64MB", "avro": "48MB", "parquet": "128MB", "json_lines": "64MB"}


def test_privacy_rules_take_their_memory_from_the_cap():
    """Privacy's functions hold memory outside DuckDB's cap, which their query's cap gives back, down to
    a floor."""
    from analytics_export.models import ExportRequest
    from analytics_export.pipeline.files import export_query
    from analytics_export.privacy.policy import Privacy
    from analytics_export.privacy.rules import PrivacyRules
    from analytics_export.sources.duckdb import memory_for

    privacy = Privacy(PrivacyRules(deny_properties=["price"]))
    queries = {fmt: export_query(ExportRequest(format=fmt, start_date="2026-01-01", end_date="2026-01-02"),
                                 "default", privacy) for fmt in ("csv", "avro", "parquet", "json_lines")}
    assert {fmt: memory_for(q) for fmt, q in queries.items()} == {
        "csv": "64MB", "avro": "64MB", "parquet": "96MB", "json_lines": "64MB"}


def test_every_store_lays_files_out_by_day_and_event(stores, sftp_server):
    """`date={event_date}/event={event}` from each store: the same events in each partition (a store
    read in pages may write a partition as several files), and a manifest listing every file."""
    got = {}
    for name, settings in stores.items():
        folder = f"/laid-{name}-{uuid.uuid4().hex[:6]}"
        destination = {"type": "sftp", "host": sftp_server.host, "port": sftp_server.port,
                       "username": sftp_server.username, "path": folder, "allow_unknown_host_key": True,
                       "path_template": "date={event_date}/event={event}"}
        result = export(settings=settings.model_copy(update={"destination_allow": ["127.0.0.1"]}),
                        secrets={"password": sftp_server.password}, destination=destination, format="parquet",
                        **WINDOW)
        root = sftp_server.root / folder.strip("/")
        [manifest] = root.glob("*.manifest.json")
        listed = json.loads(manifest.read_text())
        assert sorted(f["name"] for f in listed["files"]) == sorted(
            p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))
        got[name] = duckdb.sql(f"SELECT date::VARCHAR, event, count(*), count(DISTINCT distinct_id) FROM read_parquet("
                               f"'{root}/**/*.parquet', hive_partitioning = true, hive_types_autocast = false) "
                               "GROUP BY ALL ORDER BY ALL").fetchall()
        assert sum(row[2] for row in got[name]) == result.total_events > 1000
    assert got["duckdb"] == got["postgres"] == got["clickhouse"]


def test_a_read_that_runs_out_of_memory_as_it_starts_says_so(big_store):
    """Running out of memory as a stream opens (DuckDB runs its first part then) or as it is read is the
    store's OutOfMemory, with what to fix, not DuckDB's own exception nor a bare query failure."""
    from analytics_export.errors import OutOfMemory
    from analytics_export.sources.duckdb import DuckDBEventStore

    store = DuckDBEventStore(big_store / "events.duckdb", memory_limit="4MB")
    try:
        with pytest.raises(OutOfMemory, match="ran out of its memory cap .*MEMORY_LIMIT higher"):
            for _ in store.batches(EventQuery(project="default", start=DEMO_END.replace(month=7), end=DEMO_END),
                                   4096):
                pass
    finally:
        store.close()


@pytest.fixture(scope="module")
def duck() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    yield con
    con.close()


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
                    timezones=st.just(timezone.utc)),
       st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]))
def test_utc_strftime_is_the_instant_as_utc_text(duck, when, zone):
    """The text formats' timestamps and a layout's days and hours, whatever the session's time zone:
    Python's own RFC 3339 text, as strftime of the TIMESTAMPTZ in a UTC session gives (the SQL formats
    the instant, not ICU's calendar)."""
    con = duck.cursor()
    con.execute(f"SET TimeZone = '{zone}'")
    ours = con.execute(f"SELECT {utc_strftime('$1::TIMESTAMPTZ')}", [when]).fetchone()[0]
    con.execute("SET TimeZone = 'UTC'")
    assert ours == when.isoformat(timespec="microseconds").replace("+00:00", "Z")
    assert ours == con.execute(f"SELECT strftime($1::TIMESTAMPTZ, '{RFC3339}')", [when]).fetchone()[0]
    con.execute(f"SET TimeZone = '{zone}'")
    day, hour = con.execute(f"SELECT {utc_strftime('$1::TIMESTAMPTZ', '%Y-%m-%d')}, "
                            f"{utc_strftime('$1::TIMESTAMPTZ', '%H')}", [when]).fetchone()
    assert (day, hour) == (ours[:10], ours[11:13]), "a layout's partitions (`{event_date}`, `{event_hour}`)"

