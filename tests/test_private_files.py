"""The job store and the event store, with their write-ahead logs, are created 0600 like secret.key."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import write_jsonl
from service import CLI

from analytics_export.ingest import ingest_file
from analytics_export.sources.duckdb import DuckDBEventStore
from analytics_export.store.jobs import JobStore

pytestmark = pytest.mark.server  # the service


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_stores_and_their_logs_are_private(tmp_path):
    previous = os.umask(0o022)  # the usual umask: files would be 0644
    try:
        data = tmp_path / "data"
        jobs = JobStore.for_data_dir(data)
        jobs.migrate()
        jobs.create_key("default")
        logs = [p for p in data.iterdir() if p.name.startswith("jobs.sqlite")]
        assert {p.name for p in logs} >= {"jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm"}
        assert {p.name: mode(p) for p in logs} == {p.name: 0o600 for p in logs}
        jobs.engine.dispose()

        store = DuckDBEventStore(data / "events.duckdb", read_only=False)
        wal = data / "events.duckdb.wal"
        try:
            for i in range(4):
                events = write_jsonl(tmp_path / f"e{i}.jsonl", [
                    {"event": "e", "distinct_id": f"u{i}", "timestamp": "2026-01-01T00:00:00Z"}])
                assert ingest_file(store, events, "default") == 1
                assert wal.stat().st_size > 0 or i == 2, "DuckDB wrote its log into the file made for it"
                assert mode(data / "events.duckdb") == mode(wal) == 0o600
                # the third write checkpoints, which deletes the log; the fourth writes into a new one
                store.execute(f"SET checkpoint_threshold = '{'1B' if i == 1 else '16MB'}'", [])
        finally:
            store.close()
        assert mode(data / "events.duckdb") == 0o600
        assert mode(data / "events.duckdb.tmp") == 0o700, "DuckDB's spill files are out of others' reach"

        fresh = tmp_path / "fresh"  # and as a user gets them: the CLI's first demo and the service's files
        done = subprocess.run([*CLI, "--data-dir", str(fresh), "demo", "--events", "100"], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        done = subprocess.run([*CLI, "--data-dir", str(fresh), "keys", "create", "--project", "default"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        private = [p for p in fresh.iterdir() if p.name.startswith(("events.duckdb", "jobs.sqlite"))]
        assert {"events.duckdb", "jobs.sqlite", "events.duckdb.tmp"} <= {p.name for p in private}
        assert {p.name: mode(p) for p in private} == {p.name: 0o700 if p.is_dir() else 0o600 for p in private}
    finally:
        os.umask(previous)
