"""Starts the real service (uvicorn, workers) on 127.0.0.1 for the API tests; `make_service` is the
fixture every test module starts its shared service with."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from servers import free_port

from analytics_export.store.jobs import JobStore

CLI = [sys.executable, "-m", "analytics_export.cli"]


def cli(data_dir: Path, *args: str, env: dict | None = None) -> str:
    done = subprocess.run([*CLI, "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def create_key(data_dir: Path, project: str, env: dict | None = None) -> str:
    """A new API key for `project`, made in-process in the job store `keys create` opens (the
    ANALYTICS_EXPORT_DATABASE_URL of `env` or the environment, else DATA_DIR/jobs.sqlite, migrated
    first): a CLI start costs about 2 s, so only the CLI's own tests pay it."""
    jobs = JobStore.for_data_dir(Path(data_dir), {**os.environ, **(env or {})}.get("ANALYTICS_EXPORT_DATABASE_URL"))
    try:
        jobs.migrate()
        return jobs.create_key(project)
    finally:
        jobs.engine.dispose()


class Service:
    """`analytics-export serve` in a subprocess, stopped on close."""

    def __init__(self, data_dir: Path, workers: int = 1, env: dict | None = None, *args: str,
                 own_group: bool = False) -> None:
        """`own_group`: `serve` leads a process group of its own (see test_streams.KillableService)."""
        self.data = Path(data_dir)
        self.keys: dict[str, str] = {}  # project -> API key, filled by `make_service`
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

    @property
    def key(self) -> str:
        """The key of the first project in `keys`."""
        return next(iter(self.keys.values()))

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


@pytest.fixture(scope="module")
def make_service() -> Iterator[Callable[..., Service]]:
    """`make_service(data, workers, env, *args, projects=("default",), kind=Service)` starts a service
    (`kind`: Service or a subclass) with a key per project in `keys`; each is stopped after the module."""
    started: list[Service] = []

    def make(data: Path, workers: int = 1, env: dict | None = None, *args: str,
             projects: tuple[str, ...] = ("default",), kind: type[Service] = Service) -> Service:
        svc = kind(data, workers, env, *args)
        started.append(svc)
        svc.keys = {project: create_key(data, project, env) for project in projects}
        return svc

    yield make
    for svc in started:
        svc.close()


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
