"""What a command loads before it works: `--help` no model and no engine, an export the engine writes no
pyarrow, numpy, polars or job store. Checked by the modules a real process ends with, never by a clock
(bench/export_bench.py times them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server  # the CLI as a program

PROBE = """
import json, sys
sys.argv = ["analytics-export", *json.loads(sys.argv[1])]
from analytics_export.cli import run
try:
    run()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def loaded(data_dir: Path, *args: str) -> tuple[set[str], str]:
    """The top-level modules a command loaded, and what it printed."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(["--data-dir", str(data_dir), *args])],
                          capture_output=True, text=True, timeout=120)
    modules = json.loads(done.stderr.strip().splitlines()[-1])
    return {m.split(".")[0] for m in modules} | {m for m in modules if m.startswith("analytics_export")}, done.stdout


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("startup")
    events = data / "events.jsonl"
    events.write_text('{"event": "signup", "distinct_id": "u1", "timestamp": "2026-01-01T00:00:00Z", '
                      '"properties": {"plan": "pro"}}\n')
    done = subprocess.run([sys.executable, "-m", "analytics_export.cli", "--data-dir", str(data), "ingest", str(events)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return data


def test_help_loads_no_model_and_no_engine(tmp_path):
    modules, out = loaded(tmp_path, "--help")
    assert "export" in out
    assert not modules & {"pydantic_settings", "duckdb", "pyarrow", "numpy", "polars", "sqlalchemy",
                          "analytics_export.models", "analytics_export.config"}


@pytest.mark.parametrize("fmt", ["parquet", "json", "jsonl"])
def test_an_export_the_engine_writes_loads_no_arrow_beyond_its_lines(store_dir, tmp_path, fmt):
    """Parquet is the engine's COPY: no Arrow at all. JSON's lines come as the engine's Arrow buffers,
    so pyarrow (and numpy, which pyarrow loads) are loaded there, and nothing heavier."""
    out = tmp_path / f"out.{fmt}"
    modules, printed = loaded(store_dir, "export", "-f", fmt, "--start", "2026-01-01", "--end", "2026-01-02",
                              "-o", str(out))
    assert json.loads(printed)["total_events"] == 1
    assert "duckdb" in modules and "analytics_export.pipeline.copied" in modules
    assert not modules & {"polars", "sqlalchemy", "alembic"}
    assert ("pyarrow" in modules) == ("numpy" in modules) == (fmt != "parquet")


@pytest.mark.parametrize("fmt, body", [("parquet", None), ("json", b"[]\n"), ("jsonl", b""),
                                       ("csv", b"event,distinct_id,timestamp,properties\r\n"), ("avro", None)])
def test_an_export_of_an_empty_window_loads_no_arrow(store_dir, tmp_path, fmt, body):
    """No event in the window: JSON's brackets, JSON Lines' nothing, CSV's header and Avro's header are
    written without opening the engine's Arrow stream; Parquet's COPY writes its empty file as ever."""
    out = tmp_path / f"out.{fmt}"
    modules, printed = loaded(store_dir, "export", "-f", fmt, "--start", "2025-01-01", "--end", "2025-01-02",
                              "-o", str(out))
    assert json.loads(printed)["total_events"] == 0
    assert not modules & {"pyarrow", "numpy", "polars", "sqlalchemy"}
    if fmt == "parquet":
        import pyarrow.parquet as pq

        assert pq.read_table(out).num_rows == 0 and pq.read_table(out).column_names[0] == "event"
    elif fmt == "avro":
        import fastavro

        with open(out, "rb") as file:
            reader = fastavro.reader(file)
            assert list(reader) == [] and [f["name"] for f in reader.writer_schema["fields"]][:3] == [
                "event", "distinct_id", "timestamp"]
    else:
        assert out.read_bytes() == body


def test_the_batch_path_still_loads_arrow(store_dir, tmp_path):
    """The probe can tell: CSV is written by pyarrow."""
    modules, printed = loaded(store_dir, "export", "-f", "csv", "--start", "2026-01-01", "--end", "2026-01-02",
                              "-o", str(tmp_path / "out.csv"))
    assert json.loads(printed)["total_events"] == 1
    assert "pyarrow" in modules


def test_an_export_reads_its_policy_without_the_job_store_modules(store_dir, tmp_path):
    """A data dir with a job store and a policy: the export reads the policy with sqlite3, and writes
    what the full way writes (the first export makes the project's pseudonym secret the full way)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "events.duckdb").symlink_to(store_dir / "events.duckdb")
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"pseudonymize_distinct_id": True, "deny_properties": ["plan"]}))
    done = subprocess.run([sys.executable, "-m", "analytics_export.cli", "--data-dir", str(data), "privacy", "set",
                           str(policy)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outputs = []
    for run in range(2):
        out = tmp_path / f"out{run}.jsonl"
        modules, printed = loaded(data, "export", "-f", "jsonl", "--start", "2026-01-01", "--end", "2026-01-02",
                                  "-o", str(out))
        assert json.loads(printed)["total_events"] == 1
        assert ("sqlalchemy" in modules) == (run == 0), "the first run makes the secret"
        outputs.append(json.loads(out.read_text()))
    assert outputs[0] == outputs[1]
    assert outputs[0]["distinct_id"] != "u1" and "plan" not in outputs[0]["properties"]
