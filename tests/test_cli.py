"""The `analytics-export` command as a user runs it: summaries, errors, and a kill -9 mid-export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analytics_export import Settings, export
from analytics_export.errors import Invalid
from helpers import read_records

pytestmark = pytest.mark.server  # the CLI as a program (and big_store's 1M events)

CLI = [sys.executable, "-m", "analytics_export.cli"]


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=120)


def test_demo_ingest_export(tmp_path):
    data = tmp_path / "data"
    done = run(data, "demo", "--events", "5000")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"generated": 5000}
    assert json.loads(run(data, "demo", "--events", "10", "--if-empty").stdout) == {"generated": 0}

    (tmp_path / "more.jsonl").write_text(
        '{"event": "cli_event", "distinct_id": "me", "timestamp": "2030-01-01T00:00:00Z", "properties": {"k": 1}}\n')
    done = run(data, "ingest", str(tmp_path / "more.jsonl"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ingested": 1}

    out = tmp_path / "out.csv"
    done = run(data, "export", "--format", "csv", "--start", "2030-01-01", "--end", "2030-01-02",
               "--filter", "k gte 1", "--property", "k", "--output", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["total_events"] == 1 and summary["path"] == str(out) and summary["file_size"] == out.stat().st_size
    assert read_records(out, "csv", None) == [
        {"event": "cli_event", "distinct_id": "me", "timestamp": "2030-01-01T00:00:00.000000Z", "k": "1"}]

    done = run(data, "export", "-f", "jsonl", "-c", "zstd", "--start", "2000-01-01", "--end", "2100-01-01",
               "-e", "$pageview", "-e", "cli_event", "--output-dir", str(tmp_path / "exports"))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["path"].endswith(f"export_{summary['id']}_20000101_to_21000101.jsonl.zst")
    records = read_records(Path(summary["path"]), "json_lines", "zstd")
    assert len(records) == summary["total_events"] > 1
    assert {r["event"] for r in records} == {"$pageview", "cli_event"}


@pytest.mark.parametrize("args, message", [
    (["--format", "xml"], "unknown format 'xml'"),
    (["--format", "csv", "--start", "2026-01-02", "--end", "2026-01-01"], "must be after start_date"),
    (["--format", "csv", "--start", "soon"], "start_date"),
    (["--format", "csv", "--filter", "plan"], "is not 'PROPERTY OPERATOR"),
    (["--format", "csv", "--filter", "a'b eq 1"], "not a plain key"),
    (["--format", "csv", "--filter", "price gt"], "needs a single value"),
    (["--format", "csv", "--property", "x;drop"], "not a plain key"),
    (["--format", "csv", "--compression", "brotli"], "brotli"),
    (["--format", "csv", "--output", "a", "--output-dir", "b"], "give one of --output, --output-dir and --to"),
    (["--format", "csv", "--filter", "plan in [pro,"], "filter value [pro, is not JSON"),
    (["--format", "csv", "--filter", 'plan eq "pro'], "is not JSON"),
    (["--format", "csv", "--to", '{"type": "s3",'], "--to is not JSON"),
    (["--format", "csv", "--output", "."], ". is a folder"),
])
def test_bad_input_exits_nonzero_with_one_line(tmp_path, args, message):
    base = {"--start": "2026-01-01", "--end": "2026-01-02"}
    for flag, value in base.items():
        if flag not in args:
            args = [*args, flag, value]
    done = run(tmp_path, "export", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


HEAD = '{"event": "a", "distinct_id": "u", "timestamp": '
BAD_INGESTS = {
    "missing": ("missing.jsonl", None, "no such file"),
    "directory": ("folder.jsonl", "mkdir", "is a directory"),
    "empty": ("e.jsonl", b"", "is empty"),
    "wrong extension": ("e.txt", b"x", "cannot ingest .txt"),
    "corrupt gzip": ("e.jsonl.gz", b"\x1f\x8bnot gzip at all", "is corrupt or cut off"),
    "not gzip": ("e.jsonl.gz", (HEAD + '"2026-01-01"}\n').encode(), "is not gzip-compressed"),
    "NaN": ("e.jsonl", (HEAD + '"2026-01-01", "properties": {"p": NaN}}\n').encode(), '"p" holds NaN'),
    "offset +25:00": ("e.jsonl", (HEAD + '"2026-01-01T00:00:00+25:00"}\n').encode(), "offset past RFC 3339"),
    "unbalanced quote": ("e.csv", b'event,distinct_id,timestamp\na,"u,2026-01-01\n', "not RFC 4180 CSV"),
    "bad JSON": ("e.jsonl", b"{not json\n", "Malformed JSON"),
}


@pytest.mark.parametrize("case", BAD_INGESTS)
def test_bad_ingest_input_exits_2_with_one_line(tmp_path, case):
    name, content, message = BAD_INGESTS[case]
    path = tmp_path / name
    if content == "mkdir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    done = run(tmp_path / "data", "ingest", str(path))
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert message in done.stderr and str(path) in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_export_into_a_file_named_as_the_output_dir_exits_2(tmp_path):
    (tmp_path / "taken").write_text("")
    done = run(tmp_path / "data", "export", "-f", "csv", "--start", "2026-01-01", "--end", "2026-01-02",
               "--output-dir", str(tmp_path / "taken"))
    assert (done.returncode, done.stdout) == (2, "") and "is a file, not a folder" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


EXPORT = ["export", "-f", "csv", "--start", "2026-01-01", "--end", "2026-01-02", "--output-dir", "out"]


@pytest.mark.parametrize("damage, args, message", [
    ("data dir is a file", EXPORT, "is a file, not a folder"),
    ("data dir is a file", ["keys", "create", "--project", "p"], "is a file, not a folder"),
    ("corrupt jobs.sqlite", ["keys", "create", "--project", "p"], "jobs.sqlite: file is not a database"),
    ("corrupt jobs.sqlite", ["schedules", "list"], "jobs.sqlite: file is not a database"),
    ("corrupt jobs.sqlite", ["serve", "--workers", "0", "--port", "0"], "jobs.sqlite: file is not a database"),
    ("corrupt events.duckdb", EXPORT, "not a valid DuckDB database file"),
    ("corrupt events.duckdb", ["ingest", "e.jsonl"], "not a valid DuckDB database file"),
])
def test_a_broken_environment_exits_1_with_one_line(tmp_path, damage, args, message):
    """A store, a disk or a folder that is not what it should be: exit 1 and the reason, no traceback."""
    data = tmp_path / "data"
    if damage == "data dir is a file":
        data.write_text("")
    else:
        data.mkdir()
        (data / damage.split()[1]).write_bytes(b"this is not a database" * 1000)
    (tmp_path / "e.jsonl").write_text(HEAD + '"2026-01-01"}\n')
    done = subprocess.run([*CLI, "--data-dir", str(data), *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith('{"time"')]  # serve's log lines
    assert len(errors) == 1 and message in errors[0], done.stderr


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_killed_export_leaves_no_file(big_store, tmp_path, fmt):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / f"export.{fmt}"
    proc = subprocess.Popen([*CLI, "--data-dir", str(big_store), "export", "-f", fmt, "--start", "2000-01-01",
                             "--end", "2100-01-01", "--output", str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partial = [p for p in out_dir.iterdir() if p.name.endswith(".partial")]
        if partial and partial[0].stat().st_size > 1_000_000:
            break
        assert proc.poll() is None, "export finished before it could be killed"
        time.sleep(0.01)
    else:
        pytest.fail("export never started writing")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    assert [p.name for p in out_dir.iterdir() if not p.name.endswith(".partial")] == []


def test_python_api_returns_result(big_store, tmp_path):
    from analytics_export import ExportStatus, export

    result = export(settings=Settings(data_dir=big_store), output_dir=tmp_path, start_date="2000-01-01",
                    end_date="2100-01-01", format="parquet", compression="zstd", events=["signup_completed"])
    assert result.status is ExportStatus.COMPLETED
    assert result.total_events > 0 and result.file_size > 0
    assert Path(result.destination_path).parent == tmp_path


def test_progress_bar_on_a_terminal(big_store, tmp_path):
    """With stderr on a terminal the export draws a live bar; stdout still gets the JSON summary."""
    import pty

    primary, secondary = pty.openpty()
    proc = subprocess.Popen([*CLI, "--data-dir", str(big_store), "export", "-f", "csv", "--start", "2000-01-01",
                             "--end", "2100-01-01", "-o", str(tmp_path / "x.csv")],
                            stdout=subprocess.PIPE, stderr=secondary, env={**os.environ, "COLUMNS": "150"})
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    out, _ = proc.communicate(timeout=120)
    os.close(primary)
    assert proc.returncode == 0
    text = screen.decode("utf-8", "replace")
    assert "exporting" in text and "1,000,000/1,000,000 events" in text and "ev/s" in text and "MB" in text
    assert json.loads(out)["total_events"] == 1_000_000


def test_data_dir_from_the_environment(tmp_path):
    env = {**os.environ, "ANALYTICS_EXPORT_DATA_DIR": str(tmp_path / "env-data"), "ANALYTICS_EXPORT_PROJECT": "acme"}
    done = subprocess.run([*CLI, "demo", "--events", "100"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "env-data" / "events.duckdb").exists()
    done = subprocess.run([*CLI, "export", "-f", "json", "--start", "2000-01-01", "--end", "2100-01-01"],
                          capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    summary = json.loads(done.stdout)
    assert summary["total_events"] == 100
    assert Path(summary["path"]).parent == tmp_path / "env-data" / "exports"
    other = subprocess.run([*CLI, "--project", "other", "export", "-f", "json", "--start", "2000-01-01",
                            "--end", "2100-01-01", "-o", str(tmp_path / "o.json")],
                           capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(other.stdout)["total_events"] == 0, "another project sees none of acme's events"


@pytest.mark.parametrize("name", ["../../../tmp/x", "", "a/b", ".hidden", "-rf", "x" * 101, "tab\there", "é"])
def test_project_names_are_checked_wherever_they_come_in(tmp_path, name):
    """A project name names folders (exports, archives): `../../x` wrote outside the data dir, and an
    empty name was taken. `keys create`, `--project` and ANALYTICS_EXPORT_PROJECT each refuse it in one line."""
    data = tmp_path / "data"
    for done in (run(data, "keys", "create", "--project", name),
                 run(data, "--project", name, "demo", "--events", "10"),
                 subprocess.run([*CLI, "--data-dir", str(data), "demo", "--events", "10"], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "ANALYTICS_EXPORT_PROJECT": name})):
        assert done.returncode == 2, done.stderr
        assert "project name" in done.stderr and "1-100 letters, digits or `_ . -`" in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert done.stdout == ""
    assert not (data / "events.duckdb").exists()
    assert not (tmp_path / "tmp").exists()


def test_python_api_refuses_a_bad_project(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    settings.project = "../escape"  # changed after the settings were checked
    with pytest.raises(Invalid, match="project name '../escape'"):
        export(settings=settings, format="json", start_date="2026-01-01", end_date="2026-01-02")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "data" / "escape").exists()
    assert run(tmp_path / "data", "keys", "create", "--project", "acme-prod.eu_1").returncode == 0
