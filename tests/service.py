"""Starts the real service (uvicorn, workers) on 127.0.0.1 for the API tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "analytics_export.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(data_dir: Path, *args: str, env: dict | None = None) -> str:
    done = subprocess.run([*CLI, "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Service:
    """`analytics-export serve` in a subprocess, stopped on close."""

    def __init__(self, data_dir: Path, workers: int = 1, env: dict | None = None, *args: str,
                 own_group: bool = False) -> None:
        """`own_group`: `serve` leads a process group of its own (see test_streams.KillableService)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.log_path = Path(data_dir) / f"service-{self.port}.log"  # a file: a pipe nobody reads would fill up
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*CLI, "--data-dir", str(data_dir), "serve", "--port", str(self.port),
                                          "--workers", str(workers), *args], env={**os.environ, **(env or {})},
                                         stdout=subprocess.DEVNULL, stderr=log, start_new_session=own_group)
        deadline = time.monotonic() + 60  # a loaded 2-core machine took 25 s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                assert self.proc.poll() is None, self.logs()
                time.sleep(0.1)
        self.close()
        raise RuntimeError(f"service did not start: {self.logs()[-2000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def create_idle_stream(client: httpx.Client, name: str) -> str:
    """The id of a new stream (`name`) posting to a closed port on loopback: it exists, and sends nothing."""
    stream = client.post("/api/streams", json={"name": name, "destination": {
        "type": "webhook", "url": "http://127.0.0.1:9/nobody-listens"}})
    assert stream.status_code == 201, stream.text
    return stream.json()["stream"]["id"]


def wait_for(client: httpx.Client, export_id: str, status: str = "completed", timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/exports/{export_id}").json()
        if body["status"] == status:
            return body
        assert body["status"] != "failed", body
        time.sleep(0.05)
    raise AssertionError(f"export {export_id} never reached {status}: {body}")
