"""Request bodies spooled in DATA_DIR/inbox: what a killed ingest left goes when `serve` or `ingest`
starts, and a spool a live ingest holds stays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service import CLI, Service, create_key

pytestmark = pytest.mark.server  # `serve` and `ingest` processes

HOLD = """
import sys, time
from pathlib import Path
from analytics_export.inbox import spooled
with spooled(Path(sys.argv[1]), b'[]', '.json') as spool:
    print(spool, flush=True)
    time.sleep(300)
"""


def holder(data: Path) -> tuple[subprocess.Popen, Path]:
    """A process inside an ingest's spool (as a POST /api/events is while DuckDB reads its body)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(data)], stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def aged(path: Path, seconds: float = 600) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_killed_ingests_spools_go_live_ones_stay(tmp_path):
    data = tmp_path / "data"
    key = create_key(data, "default")
    killed, killed_spool = holder(data)
    live, live_spool = holder(data)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        aged(killed_spool)
        aged(live_spool)  # old, but its ingest still runs
        before_locks = data / "inbox" / "tmpk2j3h4.json"  # an earlier version's spool, never locked
        before_locks.write_text("[]")
        aged(before_locks)
        young = data / "inbox" / "ingest-just-made.jsonl"  # created, not yet locked
        young.write_text("")
        svc = Service(data, 0)
        try:
            assert not killed_spool.exists() and not before_locks.exists()
            assert live_spool.exists() and young.exists()
            with svc.client(key) as client:
                sent = client.post("/api/events", json=[{"event": "e", "distinct_id": "u",
                                                          "timestamp": "2026-01-01T00:00:00Z"}])
                assert sent.status_code == 200, sent.text
            assert sorted(p.name for p in (data / "inbox").iterdir()) == sorted([live_spool.name, young.name])
        finally:
            svc.close()
    finally:
        live.kill()
        live.wait()
    aged(young)
    (tmp_path / "e.jsonl").write_text('{"event": "e", "distinct_id": "u", "timestamp": "2026-01-02T00:00:00Z"}\n')
    done = subprocess.run([*CLI, "--data-dir", str(data), "ingest", str(tmp_path / "e.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ingested": 1}
    assert list((data / "inbox").iterdir()) == []


LOAD_AND_HANG = """
import sys, time
import pyarrow as pa
from analytics_export.sources.clickhouse import ClickHouseEventStore

ts = pa.timestamp("us", tz="UTC")
batch = pa.record_batch({"uuid": ["00000000-0000-0000-0000-000000000001"], "project_id": ["p"], "event": ["e"],
                         "distinct_id": ["u"], "timestamp": pa.array([0], ts), "properties": ["{}"],
                         "inserted_at": pa.array([0], ts)})

def rows():
    yield batch
    print("staged", flush=True)  # the first batch is in the staging table
    time.sleep(300)

ClickHouseEventStore(sys.argv[1]).load(pa.RecordBatchReader.from_batches(batch.schema, rows()))
"""


def test_a_killed_clickhouse_ingest_leaves_no_staging_table(tmp_path):
    """Its staging table belongs to the session: a regular one stayed after a kill -9, for good."""
    from analytics_export.sources.clickhouse import ClickHouseEventStore

    url = f"chdb://{tmp_path / 'chdb'}"
    ClickHouseEventStore(url).close()
    proc = subprocess.Popen([sys.executable, "-c", LOAD_AND_HANG, url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "staged"
    finally:
        proc.kill()
        proc.wait()
    store = ClickHouseEventStore(url)
    try:
        assert store.ch.command("SELECT count() FROM system.tables WHERE name LIKE 'staging_%'") == 0
        assert store.is_empty()
    finally:
        store.close()
