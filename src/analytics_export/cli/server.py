"""`worker` and `serve`: the service's processes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Optional

import typer

from .. import logs
from .common import job_store

if TYPE_CHECKING:
    from ..config import Settings
    pass


log = logging.getLogger(__name__)


def worker(
    ctx: typer.Context,
    lease: float = typer.Option(30.0, help="Lease seconds; a dead worker's job is taken over after this"),
    parent: Optional[int] = typer.Option(None, hidden=True, help="Stop when this process (serve) is gone"),
    nice: int = typer.Option(10, min=0, max=19, help="Scheduling niceness: exports are batch work and yield the "
                                                     "CPU to the API"),
) -> None:
    """Run export jobs from the job store until interrupted."""
    settings: Settings = ctx.obj
    os.nice(max(0, nice - os.nice(0)))  # at least `nice` (serve starts workers niced already)
    logs.configure()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if parent is not None:
        threading.Thread(target=stop_with_parent, args=(parent, stop), daemon=True).start()
    from ..runtime.worker import Worker

    try:
        Worker(settings, job_store(settings), lease=timedelta(seconds=lease)).run(stop)
    except KeyboardInterrupt:
        stop.set()


def stop_with_parent(parent: int, stop: threading.Event) -> None:
    """Set `stop` once `parent` has exited (this process is then re-parented)."""
    while not stop.wait(1.0):
        if os.getppid() != parent:
            stop.set()


def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Address to listen on"),
    port: int = typer.Option(8000, help="Port"),
    workers: int = typer.Option(os.cpu_count() or 1, min=0,
                                help="Worker processes started with the API [default: one per core; 0: none, "
                                     "run `worker`s yourself]"),
    api_processes: int = typer.Option(1, min=1, help="Processes serving the API (status polls scale with them)"),
    lease: float = typer.Option(30.0, help="The workers' lease seconds; a dead worker's job is taken over after this"),
) -> None:
    """Serve the REST API (docs at /docs) and start export workers beside it.

    Workers are child processes, so heavy exports never hold the API's interpreter lock; one that
    dies (killed, out of memory) is started again."""
    import resource
    from functools import partial

    import uvicorn

    from ..api.limits import GuardedHttpProtocol

    settings: Settings = ctx.obj
    logs.configure()
    job_store(settings)  # migrated before any process uses it
    command = [sys.executable, "-m", "analytics_export.cli", "--data-dir", str(settings.data_dir), "worker",
               "--parent", str(os.getpid()), "--lease", str(lease)]
    supervisor = WorkerSupervisor(command, workers)
    # API processes build the app from the environment: pass this command's settings on.
    os.environ.update({"ANALYTICS_EXPORT_DATA_DIR": str(settings.data_dir.absolute()),
                       "ANALYTICS_EXPORT_PROJECT": settings.project})
    if settings.database_url:
        os.environ["ANALYTICS_EXPORT_DATABASE_URL"] = settings.database_url
    # Every connection is a file descriptor: allow as many as the system lets this process hold
    # (an unlimited hard limit, RLIM_INFINITY = -1 as on macOS, is one the kernel refuses: keep the soft one).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, hard), hard))
    http = partial(GuardedHttpProtocol, header_timeout=settings.header_timeout_seconds,
                   max_header_bytes=settings.max_header_bytes)
    try:
        # With --api-processes, uvicorn kills a process that does not answer its health ping within
        # timeout_worker_healthcheck (5 s by default) and starts another: on a busy machine the
        # imports alone took longer, and the processes were restarted forever without serving.
        uvicorn.run("analytics_export.api.app:app_from_environment", factory=True, host=host, port=port,
                    workers=api_processes, log_level="warning", http=http,
                    limit_concurrency=settings.max_connections, timeout_worker_healthcheck=60)
    finally:
        supervisor.close()


class WorkerSupervisor:
    """`serve`'s worker processes, each started again when it dies: the job a worker died holding
    counts that as a failed attempt (see `JobStore.fail_abandoned`), which takes a live worker to
    notice, so a job that kills one worker after another must not leave none. A worker that keeps
    dying within a minute of its start waits longer each time (doubling, up to a minute)."""

    def __init__(self, command: list[str], count: int) -> None:
        self.command = command
        self.children = [self.start() for _ in range(count)]
        self.started = [time.monotonic()] * count
        self.quick_deaths = [0] * count
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch, name="worker-supervisor", daemon=True)
        if count:
            self.thread.start()

    def start(self) -> subprocess.Popen:
        """A worker, niced from the start: even its imports yield to the API."""
        return subprocess.Popen(self.command, preexec_fn=lambda: os.nice(10))

    def watch(self) -> None:
        """Every half second, start again each worker that exited, once its wait is over."""
        restart_at: dict[int, float] = {}
        while not self.stop.wait(0.5):
            for slot, child in enumerate(self.children):
                if child.poll() is None:
                    continue
                if slot not in restart_at:
                    quick = time.monotonic() - self.started[slot] < 60
                    self.quick_deaths[slot] = self.quick_deaths[slot] + 1 if quick else 0
                    wait = min(60.0, 0.5 * 2 ** self.quick_deaths[slot]) if quick else 0.0
                    restart_at[slot] = time.monotonic() + wait
                    log.warning("worker %d exited with status %d; starting another in %.1fs", child.pid,
                                child.returncode, wait)
                if time.monotonic() >= restart_at[slot]:
                    del restart_at[slot]
                    self.children[slot], self.started[slot] = self.start(), time.monotonic()

    def close(self) -> None:
        """Stop restarting, then stop every worker (SIGTERM; SIGKILL after 30 s)."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        for child in self.children:
            child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
