"""Persons and sessions (docs/models.md): the worked example of the docs on every event store and in
every format, read back by independent readers; privacy in all three models; merges and late events
reported; the request's rules."""

from __future__ import annotations

import csv
import os
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import fastavro
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from analytics_export import Settings, export, open_store
from analytics_export.models import ExportRequest

DAY = {"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-01-02T00:00:00Z"}
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
STORED = datetime(2026, 1, 3, tzinfo=timezone.utc)


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def event(n: int, name: str, distinct_id: str, at: datetime, properties: dict, stored: datetime = STORED) -> dict:
    return {"uuid": uid(n), "event": name, "distinct_id": distinct_id, "timestamp": at, "properties": properties,
            "inserted_at": stored}


EXAMPLE = [
    event(1, "$pageview", "anon-1", T0.replace(hour=10), {"$current_url": "/", "utm_source": "ads",
                                                           "$set_once": {"plan": "free"}}),
    event(2, "$pageview", "anon-1", T0.replace(hour=10, minute=10), {"$current_url": "/pricing"}),
    event(3, "$identify", "ann@x.io", T0.replace(hour=10, minute=12), {"$anon_distinct_id": "anon-1",
                                                                        "$set": {"email": "ann@x.io"}}),
    event(4, "$pageview", "ann@x.io", T0.replace(hour=11), {"$current_url": "/app", "$set": {"plan": "pro"}}),
    event(5, "$create_alias", "ann@x.io", T0.replace(hour=11, minute=5), {"alias": "u-42"}),
]
PERSON = {"person_id": "ann@x.io", "distinct_ids": ["ann@x.io", "anon-1", "u-42"],
          "properties": {"email": "ann@x.io", "plan": "pro"}, "first_seen": T0.replace(hour=10),
          "last_seen": T0.replace(hour=11, minute=5), "event_count": 5}
NULLS = dict.fromkeys(["referrer", "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "browser",
                       "os"])
SESSIONS = [
    {"session_id": uid(1), "distinct_id": "anon-1", "person_id": "ann@x.io", "started_at": T0.replace(hour=10),
     "ended_at": T0.replace(hour=10, minute=10), "duration_seconds": 600.0, "event_count": 2, "pageview_count": 2,
     "entry_url": "/", "exit_url": "/pricing", **NULLS, "utm_source": "ads"},
    {"session_id": uid(3), "distinct_id": "ann@x.io", "person_id": "ann@x.io",
     "started_at": T0.replace(hour=10, minute=12), "ended_at": T0.replace(hour=10, minute=12),
     "duration_seconds": 0.0, "event_count": 1, "pageview_count": 0, "entry_url": None, "exit_url": None, **NULLS},
    {"session_id": uid(4), "distinct_id": "ann@x.io", "person_id": "ann@x.io", "started_at": T0.replace(hour=11),
     "ended_at": T0.replace(hour=11, minute=5), "duration_seconds": 300.0, "event_count": 2, "pageview_count": 1,
     "entry_url": "/app", "exit_url": "/app", **NULLS},
]


def put(settings: Settings, events: list[dict], tmp: Path) -> None:
    """Store `events` exactly as given (uuids, times, inserted_at), in whichever store `settings` names."""
    path = tmp / f"events-{len(list(tmp.glob('events-*')))}.jsonl"
    with path.open("w") as out:
        for e in events:
            out.write(json.dumps({**e, "project_id": "default", "timestamp": e["timestamp"].isoformat(),
                                  "inserted_at": e["inserted_at"].isoformat(),
                                  "properties": json.dumps(e["properties"], separators=(",", ":"))}) + "\n")
    store = open_store(settings, read_only=False)
    try:
        store.insert(f"""SELECT CAST(uuid AS UUID) AS uuid, project_id, event, distinct_id,
                                CAST("timestamp" AS TIMESTAMPTZ) AS "timestamp", CAST(properties AS JSON) AS properties,
                                CAST(inserted_at AS TIMESTAMPTZ) AS inserted_at
                         FROM read_json('{path}', columns={{uuid: 'VARCHAR', project_id: 'VARCHAR', event: 'VARCHAR',
                              distinct_id: 'VARCHAR', "timestamp": 'VARCHAR', properties: 'VARCHAR',
                              inserted_at: 'VARCHAR'}})""")
    finally:
        store.close()


@pytest.fixture(params=["duckdb", "postgres", "clickhouse"])
def store(request, tmp_path: Path) -> Settings:
    """Settings of an empty event store of each engine."""
    data = tmp_path / "data"
    if request.param == "duckdb":
        return Settings(data_dir=data)
    if request.param == "postgres":
        return Settings(data_dir=data, events_url=request.getfixturevalue("pg_url"))
    return Settings(data_dir=data, events_url=f"chdb://{tmp_path / 'chdb'}")


def read(path: Path, fmt: str) -> list[dict]:
    """Rows as an independent reader sees them, JSON text columns parsed, times as datetimes."""
    if fmt == "parquet":
        rows = pq.read_table(path).to_pylist()
    elif fmt == "avro":
        with path.open("rb") as f:
            rows = list(fastavro.reader(f))
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(path.read_text(), newline="")))
    elif fmt == "json":
        rows = json.loads(path.read_text())
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [typed(row) for row in rows]


def typed(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if value == "" and key not in ("properties", "distinct_ids"):
            value = None  # CSV: an empty cell is a missing value
        if key in ("distinct_ids", "properties") and isinstance(value, str):
            value = json.loads(value)
        elif key.endswith(("_seen", "_at")) and isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        elif key.endswith("_count") and value is not None:
            value = int(value)
        elif key == "duration_seconds" and value is not None:
            value = float(value)
        if isinstance(value, datetime):
            value = value.astimezone(timezone.utc)
        out[key] = value
    return out


def test_the_worked_example_on_every_store(store: Settings, tmp_path: Path):
    put(store, EXAMPLE, tmp_path)
    persons = export(settings=store, model="persons", format="json_lines", output=tmp_path / "p.jsonl", **DAY)
    sessions = export(settings=store, model="sessions", format="json_lines", output=tmp_path / "s.jsonl", **DAY)
    assert (persons.total_events, sessions.total_events) == (1, 3)
    assert read(tmp_path / "p.jsonl", "json_lines") == [PERSON]
    assert read(tmp_path / "s.jsonl", "json_lines") == SESSIONS


@pytest.mark.parametrize("fmt,compression", [("json", None), ("csv", None), ("parquet", "zstd"), ("avro", "snappy")])
def test_every_format_reads_back_whole(tmp_path: Path, fmt: str, compression: str | None):
    settings = Settings(data_dir=tmp_path / "data")
    put(settings, EXAMPLE, tmp_path)
    for model, expected in (("persons", [PERSON]), ("sessions", SESSIONS)):
        out = tmp_path / f"{model}.{fmt}"
        export(settings=settings, model=model, format=fmt, compression=compression, output=out, **DAY)
        assert read(out, fmt) == expected
        if fmt == "avro":  # the record is named for what a row is
            with out.open("rb") as f:
                assert fastavro.reader(f).writer_schema["name"] == f"analytics_export.{model[:-1].title()}"
        if fmt == "parquet":  # DuckDB reads the same rows, typed
            assert duckdb.sql(f"SELECT count(*), min(typeof(event_count)) FROM '{out}'").fetchall()[0] == (
                len(expected), "BIGINT")


def test_a_policy_applies_alike_to_events_persons_and_sessions(tmp_path: Path):
    """Ids are pseudonymised with one keyed hash (a persons export joins its events and sessions); the
    property rules apply to person properties and to the session columns taken from properties."""
    settings = Settings(data_dir=tmp_path / "data")
    put(settings, EXAMPLE, tmp_path)
    rules = {"pseudonymize_distinct_id": True, "deny_properties": ["utm_source"],
             "redact": [{"action": "drop", "properties": ["$current_url"]},
                        {"action": "mask", "detector": "email", "mask": "[email]"}]}
    for model in ("events", "persons", "sessions"):
        export(settings=settings, model=model, format="json_lines", output=tmp_path / f"{model}.jsonl",
               privacy=rules, **DAY)
    events = read(tmp_path / "events.jsonl", "json_lines")
    (person,) = read(tmp_path / "persons.jsonl", "json_lines")
    sessions = read(tmp_path / "sessions.jsonl", "json_lines")
    ann = next(e["distinct_id"] for e in events if e["event"] == "$identify")
    anon = next(e["distinct_id"] for e in events if e["event"] == "$pageview" and e["distinct_id"] != ann)
    assert len(ann) == 64 and person["person_id"] == ann, "the merge ran on the stored ids"
    assert {ann, anon} < set(person["distinct_ids"]) and len(person["distinct_ids"]) == 3
    assert person["distinct_ids"] == sorted(person["distinct_ids"])
    assert [(s["distinct_id"], s["person_id"]) for s in sessions] == [(anon, ann), (ann, ann), (ann, ann)]
    assert person["properties"] == {"email": "[email]", "plan": "pro"}, "detectors apply to person properties"
    assert all(s["entry_url"] is None and s["exit_url"] is None and s["utm_source"] is None for s in sessions)
    assert [s["pageview_count"] for s in sessions] == [2, 0, 1]


def test_a_suppressed_user_is_in_no_model(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data")
    put(settings, EXAMPLE, tmp_path)
    from analytics_export.privacy.policy import Privacy
    from analytics_export.privacy.rules import PrivacyRules
    from analytics_export.pipeline import run_export
    from analytics_export.destinations.local import LocalDestination

    privacy = Privacy(PrivacyRules(), suppressed=["anon-1"])
    store = open_store(settings)
    try:
        for model in ("persons", "sessions"):
            request = ExportRequest(model=model, format="json_lines", **DAY)
            run_export(request, store, LocalDestination(tmp_path, tmp_path / f"{model}.jsonl"), project="default",
                       privacy=privacy)
    finally:
        store.close()
    (person,) = read(tmp_path / "persons.jsonl", "json_lines")
    assert person["distinct_ids"] == ["ann@x.io", "u-42"] and person["event_count"] == 3
    assert person["properties"] == {"email": "ann@x.io", "plan": "pro"}
    assert [s["distinct_id"] for s in read(tmp_path / "sessions.jsonl", "json_lines")] == ["ann@x.io", "ann@x.io"]


def test_a_person_merged_in_a_later_window_is_reported(store: Settings, tmp_path: Path):
    """Day 1 has anon-1 alone; day 2 links it to ann@x.io, whose id is smaller: anon-1's row is gone."""
    day2 = T0 + timedelta(days=1)
    put(store, [event(1, "$pageview", "anon-1", T0.replace(hour=9), {}),
                event(2, "$identify", "ann@x.io", day2.replace(hour=9), {"$anon_distinct_id": "anon-1"})], tmp_path)
    first = tmp_path / "first"
    export(settings=store, model="persons", format="json_lines", output_dir=first, **DAY)
    assert [p["person_id"] for p in read(next(first.glob("*.jsonl")), "json_lines")] == ["anon-1"]
    assert not list(first.glob("*manifest*")), "nothing to report"
    second = tmp_path / "second"
    result = export(settings=store, model="persons", format="json_lines", output_dir=second,
                    start_date=day2, end_date=day2 + timedelta(days=1))
    (person,) = read(next(second.glob("*.jsonl")), "json_lines")
    assert person["person_id"] == "ann@x.io" and person["distinct_ids"] == ["ann@x.io", "anon-1"]
    assert result.destination_path.endswith(".jsonl"), "the file, its manifest beside it"
    manifest = json.loads((second / f"export_{result.export_id}_20260102_to_20260103.manifest.json").read_text())
    assert manifest["model"] == "persons" and manifest["merged_persons"] == [
        {"person_id": "anon-1", "merged_into": "ann@x.io"}]


def test_late_events_update_a_session_of_an_earlier_window(store: Settings, tmp_path: Path):
    """A session of day 1 exported at its end gets an event stored after that: the export of day 2
    carries the session again, whole, and its manifest names it."""
    gap = timedelta(minutes=30)
    put(store, [event(1, "$pageview", "u", T0.replace(hour=23, minute=50), {}, stored=T0 + timedelta(hours=23, minutes=51)),
                event(2, "$pageview", "u", T0.replace(hour=23, minute=55), {}, stored=T0 + timedelta(days=1, hours=3))],
        tmp_path)
    day2 = T0 + timedelta(days=1)
    result = export(settings=store, model="sessions", format="json_lines", output_dir=tmp_path / "d2",
                    start_date=day2, end_date=day2 + timedelta(days=1))
    (session,) = read(next((tmp_path / "d2").glob("*.jsonl")), "json_lines")
    assert session["session_id"] == uid(1) and session["event_count"] == 2
    manifest = json.loads(next((tmp_path / "d2").glob("*manifest.json")).read_text())
    assert manifest["updated_sessions"] == [uid(1)] and result.total_events == 1
    assert day2 + gap < datetime(2026, 1, 2, 3, tzinfo=timezone.utc)


@pytest.mark.parametrize("fields,message", [
    ({"model": "persons", "events": ["$pageview"]}, "a persons export takes no events"),
    ({"model": "sessions", "properties": ["$browser"]}, "a sessions export takes no properties"),
    ({"model": "persons", "filters": [{"property": "plan", "operator": "eq", "value": "pro"}], "include": ["uuid"]},
     "takes no filters, include"),
    ({"model": "sessions", "session_gap_minutes": 0}, "greater than or equal to 1"),
    ({"model": "persons", "destination": {"type": "s3", "bucket": "lake", "path_template": "{event_date}/"}},
     "cannot lay files out"),
])
def test_the_request_refuses_what_a_model_cannot_take(fields: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        ExportRequest(**DAY, **fields)


def test_a_sessions_window_is_final_only_once_the_gap_has_passed():
    now = datetime.now(timezone.utc)
    with pytest.raises(ValidationError, match="known only once the gap has passed"):
        ExportRequest(model="sessions", start_date=now - timedelta(hours=1), end_date=now - timedelta(minutes=10))
    ExportRequest(model="sessions", start_date=now - timedelta(hours=1), end_date=now - timedelta(minutes=10),
                  session_gap_minutes=5)


def test_a_cancelled_export_stops_while_it_derives_and_leaves_nothing(tmp_path: Path):
    from analytics_export.destinations.local import LocalDestination
    from analytics_export.errors import Cancelled
    from analytics_export.pipeline import run_export

    settings = Settings(data_dir=tmp_path / "data")
    put(settings, EXAMPLE, tmp_path)
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 1  # the first staged batch goes in, then the export is cancelled

    store = open_store(settings)
    try:
        for model in ("persons", "sessions"):
            request = ExportRequest(model=model, format="parquet", **DAY)
            with pytest.raises(Cancelled):
                run_export(request, store, LocalDestination(tmp_path / "out"), project="default",
                           should_stop=should_stop)
            calls.clear()
    finally:
        store.close()
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True
    assert not staging_folders(os.getpid())


def staging_folders(pid: int) -> list[Path]:
    import tempfile

    return list(Path(tempfile.gettempdir()).glob(f"analytics-export-model-{pid}-*"))


def test_a_killed_export_leaves_no_file_and_its_staging_goes_with_the_next(tmp_path: Path):
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "data"
    cli = [sys.executable, "-m", "analytics_export.cli", "--data-dir", str(data)]
    subprocess.run([*cli, "demo", "-n", "300000"], check=True, capture_output=True)
    out = tmp_path / "sessions.parquet"
    # ending yesterday: a window ending today is refused until the session gap has passed after midnight
    start = (datetime.now(timezone.utc) - timedelta(days=91)).date().isoformat()
    end = (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()
    child = subprocess.Popen([*cli, "export", "--model", "sessions", "--start", start, "--end", end, "-f", "parquet",
                              "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not staging_folders(child.pid) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert staging_folders(child.pid), "the export was staging"
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not out.exists(), "nothing at the final name"
    assert staging_folders(child.pid), "a killed process cannot clean up"
    subprocess.run([*cli, "export", "--model", "persons", "--start", start, "--end", end, "-f", "csv",
                    "-o", str(tmp_path / "p.csv")], check=True, capture_output=True)
    assert not staging_folders(child.pid), "the next export removed it"
    assert len(list(csv.reader((tmp_path / "p.csv").open()))) > 1000


def test_persons_split_into_parts_on_s3_with_their_manifest(tmp_path: Path, s3_server):
    """A remote destination takes a model like events: parts of at most 10 persons, then the manifest
    listing them (their digests, the model, its columns), read back from the bucket."""
    import hashlib

    settings = Settings(data_dir=tmp_path / "data", destination_allow=["127.0.0.1"])
    put(settings, EXAMPLE + [event(100 + n, "click", f"user-{n:02d}", T0.replace(hour=12), {}) for n in range(24)],
        tmp_path)
    bucket = s3_server.make_bucket("persons")
    result = export(settings=settings, model="persons", format="csv", **DAY,
                    destination={"type": "s3", "bucket": bucket, "endpoint_url": s3_server.endpoint, "prefix": "p",
                                 "max_events_per_file": 10},
                    secrets={"access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key})
    client = s3_server.client()
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"p/export_{result.export_id}_20260101_to_20260102"
                                                                 ".manifest.json")["Body"].read())
    assert manifest["model"] == "persons" and manifest["columns"][:2] == ["person_id", "distinct_ids"]
    rows = []
    for part in manifest["files"]:
        body = client.get_object(Bucket=bucket, Key=f"p/{part['name']}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == part["sha256"] and part["events"] <= 10
        rows += [typed(row) for row in csv.DictReader(io.StringIO(body.decode(), newline=""))]
    assert len(manifest["files"]) == 3 and result.total_events == len(rows) == 25
    assert rows[0] == PERSON and [r["person_id"] for r in rows[1:]] == [f"user-{n:02d}" for n in range(24)]


def test_a_rerun_with_nothing_to_report_takes_back_the_old_manifest(tmp_path: Path):
    """The same export run again, now with no merge to report (the merged id is suppressed since): the
    first run's manifest, which would vouch for the file just rewritten, is gone."""
    from analytics_export.destinations.local import LocalDestination
    from analytics_export.pipeline import run_export
    from analytics_export.privacy.policy import Privacy
    from analytics_export.privacy.rules import PrivacyRules

    settings = Settings(data_dir=tmp_path / "data")
    day2 = T0 + timedelta(days=1)
    put(settings, [event(1, "$pageview", "anon-1", T0.replace(hour=9), {}),
                   event(2, "$identify", "ann@x.io", day2.replace(hour=9), {"$anon_distinct_id": "anon-1"})], tmp_path)
    request = ExportRequest(model="persons", format="json_lines", start_date=day2, end_date=day2 + timedelta(days=1))
    out = tmp_path / "out"
    store = open_store(settings)
    try:
        run_export(request, store, LocalDestination(out), project="default")
        assert (out / request.manifest_name).exists()
        run_export(request, store, LocalDestination(out), project="default",
                   privacy=Privacy(PrivacyRules(), suppressed=["anon-1"]))
    finally:
        store.close()
    assert not (out / request.manifest_name).exists()
    assert [p["distinct_ids"] for p in read(out / request.file_name, "json_lines")] == [["ann@x.io"]]
