"""Exports hold a bounded number of open files however many parts or batches they make, and a full
disk is reported as such, with nothing partial left."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from analytics_export import Settings, export
from analytics_export.models import ExportRequest
from servers import HookServer
from service import CLI, Service, create_key, wait_for

FEW_THOUSAND = {"start_date": "2026-10-22", "end_date": "2026-11-01"}  # ~2,200 of the 20,000 demo events
ONE_DAY = {"start_date": "2026-10-31", "end_date": "2026-11-01"}  # ~220 demo events
OPEN_FILES = 256


class Receiver(HookServer):
    """A webhook receiver that keeps connections alive and records each body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        super().__init__()

    def respond(self, headers: Any, body: bytes) -> tuple[int, dict[str, str]]:
        self.bodies.append(body)
        return 204, {}


class PeakOpenFiles:
    """The most file descriptors this process held while the block ran, sampled every few ms."""

    def __enter__(self) -> PeakOpenFiles:
        self.before = self.peak = open_files()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()
        return self

    def watch(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, open_files())

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.after = open_files()


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.server
def test_webhook_export_of_one_event_batches_runs_under_a_low_open_file_limit(demo_settings):
    """Each batch's body used to be a temporary file of its own, held open until all were sent: a
    few thousand batches ran the worker out of descriptors and DuckDB aborted the process."""
    receiver = Receiver()
    to = json.dumps({"type": "webhook", "url": receiver.url, "batch_max_events": 1})
    try:
        done = subprocess.run(
            [*CLI, "--data-dir", str(demo_settings.data_dir), "export", "-f", "jsonl", "--start",
             FEW_THOUSAND["start_date"], "--end", FEW_THOUSAND["end_date"], "--to", to],
            env={**os.environ, "ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]'}, capture_output=True,
            text=True, timeout=600,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES)))
    finally:
        receiver.shutdown()
    assert done.returncode == 0, done.stderr[-2000:]
    total = json.loads(done.stdout)["total_events"]
    assert total > 4 * OPEN_FILES and len(receiver.bodies) == total
    assert all(body.count(b"\n") == 1 and json.loads(body)["event"] for body in receiver.bodies)
    assert not list((demo_settings.data_dir / "spool").iterdir())


@pytest.mark.parametrize("kind", ["download", "s3", "sftp", "webhook", *(pytest.param(kind, marks=pytest.mark.server)
                                                                         for kind in ("gcs", "azure"))])
def test_one_event_parts_hold_a_bounded_number_of_open_files(kind, demo_settings, tmp_path, request, monkeypatch):
    """A few hundred parts (files, or webhook requests) of one event each: what each part opens is
    closed when it is done, so the process never holds more than a few descriptors beyond its own."""
    secrets: dict[str, str] = {}
    settings = Settings(data_dir=demo_settings.data_dir, destination_allow=["127.0.0.1"])
    receiver = None
    if kind == "download":
        destination: dict = {"type": "download"}
    elif kind == "s3":
        s3 = request.getfixturevalue("s3_server")
        destination = {"type": "s3", "bucket": s3.make_bucket("parts-fds"), "endpoint_url": s3.endpoint,
                       "region": s3.region}
        secrets = {"access_key_id": s3.access_key, "secret_access_key": s3.secret_key}
    elif kind == "gcs":
        gcs = request.getfixturevalue("gcs_server")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)  # anonymous credentials, never a metadata probe
        destination = {"type": "gcs", "bucket": gcs.make_bucket("parts-fds")}
    elif kind == "azure":
        az = request.getfixturevalue("azurite")
        destination = {"type": "azure", "container": az.make_container("parts-fds"), "account_url": az.account_url}
        secrets = {"account_name": az.account_name, "account_key": az.account_key}
    elif kind == "sftp":
        sftp = request.getfixturevalue("sftp_server")
        destination = {"type": "sftp", "host": sftp.host, "port": sftp.port, "username": sftp.username,
                       "path": "parts-fds"}
        secrets = {"password": sftp.password, "known_hosts": sftp.known_hosts_line}
    else:
        receiver = Receiver()
        destination = {"type": "webhook", "url": receiver.url}
    split = {"batch_max_events": 1} if kind == "webhook" else {"max_events_per_file": 1}
    export_request = ExportRequest(**ONE_DAY, format="json_lines", destination={**destination, **split})
    try:
        with PeakOpenFiles() as files:
            result = export(export_request, settings=settings, secrets=secrets, output_dir=tmp_path)
    finally:
        if receiver is not None:
            receiver.shutdown()
    assert result.total_events > 150
    assert files.peak - files.before < 40, f"{files.peak - files.before} more open files at the peak"
    assert files.after - files.before < 10


@contextmanager
def small_disk(path: Path, size: str = "1m") -> Iterator[Path]:
    """`path` as the mount point of a tmpfs of `size`, unmounted on exit: a disk that fills up."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


@pytest.mark.server
def test_cli_export_to_a_full_disk_says_so_in_one_line(demo_settings, tmp_path):
    data = tmp_path / "data"
    with small_disk(data):
        done = subprocess.run(
            [*CLI, "--data-dir", str(data), "export", "-f", "json", "--start", "2026-01-01", "--end", "2027-01-01"],
            env={**os.environ, "ANALYTICS_EXPORT_EVENTS_URL": str(demo_settings.events_path)},
            capture_output=True, text=True, timeout=120)
        left = list((data / "exports").iterdir())
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: no space left on the device at {data / 'exports'}\n"
    assert left == [], "no partial file, no final one"


@pytest.mark.server
def test_service_exports_and_ingest_on_a_full_disk_fail_saying_so(demo_settings, tmp_path):
    """Downloads, webhook bodies being spooled and ingested bodies each meet a full disk: the export
    fails with the reason (not an internal error) and leaves no file; the ingest answers 503."""
    data = tmp_path / "data"
    env = {"ANALYTICS_EXPORT_EVENTS_URL": str(demo_settings.events_path), "ANALYTICS_EXPORT_EXPORT__MAX_ATTEMPTS": "1",
           "ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]'}
    key = create_key(data, "default", env)
    receiver = Receiver()
    with small_disk(data / "exports" / "default"), small_disk(data / "spool"), small_disk(data / "inbox"):
        svc = Service(data, 1, env)
        try:
            with svc.client(key) as c:
                window = {"start_date": "2026-01-01", "end_date": "2027-01-01", "format": "json"}
                download = c.post("/api/exports", json=window).json()["id"]
                webhook = c.post("/api/exports", json={**window, "destination": {
                    "type": "webhook", "url": receiver.url}}).json()["id"]
                failed = [wait_for(c, export_id, "failed", timeout=120)["result"]["error"]
                          for export_id in (download, webhook)]
                events = "\n".join(json.dumps({"event": "e", "distinct_id": "u", "timestamp": "2026-10-01T00:00:00Z",
                                               "properties": {"pad": "x" * 1000}}) for _ in range(2000))
                ingest = c.post("/api/events", content=events, headers={"Content-Type": "application/x-ndjson"})
            left = list((data / "exports" / "default").iterdir()) + list((data / "spool").iterdir())
        finally:
            svc.close()
            receiver.shutdown()
    assert failed == ["no space left on the device at DATA_DIR/exports/default",  # the API hides server paths
                      "no space left on the device at DATA_DIR/spool"]
    assert left == [] and receiver.bodies == []
    assert ingest.status_code == 503 and ingest.json()["detail"] == "no space left on the device at DATA_DIR/inbox"
