"""The `analytics-export` command: ingest, demo data, and exports with a live progress bar."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import demo as demo_data
from . import logs
from .checks import describe_errors
from .config import Settings
from .destinations import Target, destination_for
from .destinations.local import LocalDestination
from .errors import ExportError, Invalid, Storage
from .inbox import clean_inbox
from .ingest import ingest_file
from .jobs.policies import project_privacy
from .models import COMPRESSION_DOC, Compression, ExportFilter, ExportFormat, ExportRequest, FilterOperator
from .pipeline import run_export
from .pipeline.batches import Progress as ExportProgress
from .privacy_cli import privacy_app, retention_app
from .schedules_cli import app as schedules_app
from .sources import EventQuery, EventSource
from .sources.stores import open_store
from .streams_cli import app as streams_app

if TYPE_CHECKING:
    from .jobs.store import JobStore

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
err = Console(stderr=True)
log = logging.getLogger(__name__)
FILTER = re.compile(
    r"^\s*(?P<prop>.+?)\s+(?P<op>" + "|".join(sorted((o.value for o in FilterOperator), key=len, reverse=True))
    + r")(?:\s+(?P<value>.*?))?\s*$"
)


@app.callback()
def main(
    ctx: typer.Context,
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data dir [env ANALYTICS_EXPORT_DATA_DIR; default ./.analytics-export]"),
    project: Optional[str] = typer.Option(None, "--project", help="Project (tenant) [env ANALYTICS_EXPORT_PROJECT; default 'default']"),
) -> None:
    """Export product-analytics events to JSON, JSON Lines, CSV, Parquet or Avro, compressed or not."""
    overrides = {k: v for k, v in {"data_dir": data_dir, "project": project}.items() if v is not None}
    try:
        ctx.obj = Settings(**overrides)
    except ValidationError as exc:  # --project, or a setting from the environment
        fail(describe_errors(exc.errors()))
    if ctx.obj.data_dir.exists() and not ctx.obj.data_dir.is_dir():
        fail(f"the data dir {ctx.obj.data_dir} is a file, not a folder: give --data-dir (or "
             "ANALYTICS_EXPORT_DATA_DIR) a folder", 1)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Our errors as a one-line reason: exit 2 for bad input, 1 for a store or disk failure."""
    try:
        yield
    except Invalid as exc:
        fail(str(exc))
    except ExportError as exc:
        fail(str(exc), 1)


def parse_value(text: str | None, operator: FilterOperator) -> object:
    """A filter value: JSON when it parses (`10`, `true`, `"10"`, `["a","b"]`), else the raw text."""
    if text is None or text == "":
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        if text.lstrip()[:1] in ("[", "{", '"'):  # meant as JSON: a typo must not become a text to match
            raise Invalid(f"filter value {text} is not JSON: {exc}") from None
        value = text
    if operator in (FilterOperator.IN, FilterOperator.NOT_IN) and not isinstance(value, list):
        value = [parse_value(part.strip(), FilterOperator.EQ) for part in text.split(",")]
    return value


def parse_filter(text: str) -> ExportFilter:
    """`'PROP OP VALUE'`, e.g. `'plan eq pro'`, `'price gte 10'`, `'country in US,DE'`, `'email is_set'`."""
    match = FILTER.match(text)
    if not match:
        ops = ", ".join(o.value for o in FilterOperator)
        raise Invalid(f"filter {text!r} is not 'PROPERTY OPERATOR [VALUE]' with an operator among {ops}")
    operator = FilterOperator(match["op"])
    return ExportFilter(property=match["prop"], operator=operator, value=parse_value(match["value"], operator))


@app.command()
def export(
    ctx: typer.Context,
    format: str = typer.Option(..., "--format", "-f", help="json, json_lines (jsonl), csv, parquet or avro"),
    start: str = typer.Option(..., "--start", help="Start (inclusive), ISO 8601; naive means UTC"),
    end: str = typer.Option(..., "--end", help="End (exclusive), ISO 8601"),
    compression: Optional[Compression] = typer.Option(None, "--compression", "-c", help=COMPRESSION_DOC),
    event: List[str] = typer.Option([], "--event", "-e", help="Event name to keep (repeatable); default all"),
    property: List[str] = typer.Option([], "--property", "-p", help="Property to keep (repeatable); default all"),
    filter: List[str] = typer.Option([], "--filter", help="'PROPERTY OPERATOR [VALUE]' (repeatable, all must match)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write exactly this file"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Write the standard file name here [default DATA_DIR/exports]"),
    to: Optional[str] = typer.Option(None, "--to", help="""Remote destination as JSON, e.g. '{"type": "s3", "bucket": "lake"}'; credentials from the environment"""),
    csv_formula_guard: bool = typer.Option(False, "--csv-formula-guard", help="CSV: start cells a spreadsheet would "
                                           "run as formulas (=, +, -, @, tab, CR; not plain numbers) with '"),
    include: List[str] = typer.Option([], "--include", help="Extra column (repeatable): uuid (to drop duplicates "
                                      "downstream) or inserted_at (when the event was stored)"),
) -> None:
    """Export events in [start, end) to a file or a remote destination; prints a JSON summary line when done."""
    settings: Settings = ctx.obj
    try:
        request = ExportRequest(
            format=ExportFormat.parse(format), start_date=start, end_date=end, compression=compression,
            events=event, properties=property or None, filters=[parse_filter(f) for f in filter],
            destination=json.loads(to) if to else {"type": "download"}, csv_formula_guard=csv_formula_guard,
            include=include,
        )
    except json.JSONDecodeError as exc:
        fail(f"--to is not JSON: {exc}")
    except (ValueError, Invalid) as exc:  # ValidationError is a ValueError
        fail(describe_errors(exc.errors()) if isinstance(exc, ValidationError) else str(exc))
    if sum(x is not None for x in (output, output_dir, to)) > 1:
        fail("give one of --output, --output-dir and --to")
    with exit_on_error():
        privacy = project_privacy(settings, request)
        if to:
            destination = destination_for(Target(request, settings.project, settings))
        else:
            destination = LocalDestination(output_dir or settings.export_dir, output)
        try:
            store = open_store(settings)
            try:
                with ProgressDisplay(store, request, settings.project) as on_progress:
                    result = run_export(request, store, destination, project=settings.project,
                                        batch_size=settings.export.batch_size, on_progress=on_progress,
                                        privacy=privacy)
            finally:
                store.close()
        finally:
            destination.close()
    summary = {"id": result.export_id, "total_events": result.total_events, "file_size": result.file_size,
               "path": result.destination_path, "privacy_policy_version": result.privacy_policy_version}
    if result.dropped_properties:
        summary["dropped_properties"] = result.dropped_properties
    typer.echo(json.dumps(summary))


class ProgressDisplay:
    """A rich progress bar on a terminal (events, bytes, events/s, ETA); nothing otherwise."""

    def __init__(self, store: EventSource, request: ExportRequest, project: str) -> None:
        self.active = err.is_terminal
        if not self.active:
            return
        total = store.count(EventQuery.from_request(request, project))
        self.started = time.monotonic()
        self.bar = Progress(
            TextColumn("[bold]exporting"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} events"),
            TextColumn("{task.fields[size]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            TimeRemainingColumn(), console=err, transient=False,
        )
        self.task = self.bar.add_task("export", total=total, size="0 B", rate="")

    def __enter__(self):
        if not self.active:
            return None
        self.bar.start()
        return self.update

    def update(self, p: ExportProgress) -> None:
        rate = p.events / max(time.monotonic() - self.started, 1e-6)
        self.bar.update(self.task, completed=p.events, size=human_bytes(p.bytes), rate=f"{rate:,.0f} ev/s")

    def __exit__(self, *exc) -> None:
        if self.active:
            self.bar.stop()


def human_bytes(n: float) -> str:
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            break
        n /= 1024
    return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"


@app.command()
def ingest(ctx: typer.Context, files: List[Path] = typer.Argument(..., help="JSON Lines, JSON, CSV or Parquet files"),
           restore: bool = typer.Option(False, "--restore", help="Files are retention archives: keep their inserted_at")
           ) -> None:
    """Load events from files; events whose uuid is already stored are skipped."""
    settings: Settings = ctx.obj
    total = 0
    with exit_on_error():
        clean_inbox(settings.data_dir)  # what ingests killed with the API left
        store = open_store(settings, read_only=False)
        try:
            for path in files:
                added = ingest_file(store, path, settings.project, restore=restore)
                total += added
                err.print(f"{path}: {added:,} new events", highlight=False)
        finally:
            store.close()
    typer.echo(json.dumps({"ingested": total}))


@app.command()
def demo(
    ctx: typer.Context,
    events: int = typer.Option(1_000_000, "--events", "-n", min=1, max=1_000_000_000, help="How many events"),
    if_empty: bool = typer.Option(False, "--if-empty", help="Do nothing when the store already has events"),
) -> None:
    """Generate realistic demo events (30 event names, 200k users, 90 days, 5-15 properties each)."""
    settings: Settings = ctx.obj
    with exit_on_error():
        store = open_store(settings, read_only=False)
        try:
            if if_empty and not store.is_empty():
                err.print("event store already has events; no demo data added")
                added = 0
            else:
                started = time.monotonic()
                with err.status(f"generating {events:,} events"):
                    added = demo_data.generate(store, events, settings.project)
                err.print(f"generated {added:,} events in {time.monotonic() - started:.1f}s "
                          f"into {settings.events_store_name}")
        finally:
            store.close()
    typer.echo(json.dumps({"generated": added}))


keys_app = typer.Typer(help="API keys: each belongs to one project.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(schedules_app, name="schedules")
app.add_typer(privacy_app, name="privacy")
app.add_typer(retention_app, name="retention")
app.add_typer(streams_app, name="streams")


def job_store(settings: Settings) -> JobStore:
    """The migrated job store; Storage, saying which and why, when it cannot be opened (a corrupt
    jobs.sqlite, a database that cannot be reached)."""
    from sqlalchemy.exc import SQLAlchemyError

    from .jobs.store import JobStore  # the service's imports stay out of `export` and `ingest`

    where = ("the job store at ANALYTICS_EXPORT_DATABASE_URL" if settings.database_url
             else f"the job store {settings.data_dir / 'jobs.sqlite'}")
    try:
        jobs = JobStore.for_data_dir(settings.data_dir, settings.database_url)
        jobs.migrate()
    except SQLAlchemyError as exc:  # the URL stays out: it may hold a password
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise Storage(f"cannot open {where}: {reason} (a damaged file: move it aside, or restore a backup)"
                      if not settings.database_url and "not a database" in reason
                      else f"cannot open {where}: {reason}") from exc
    except OSError as exc:
        raise Storage(f"cannot open {where}: {exc.strerror}") from exc
    return jobs


@keys_app.command("create")
def keys_create(ctx: typer.Context, project: str = typer.Option(..., "--project", help="The key's project")) -> None:
    """Print a new API key for PROJECT; only its hash is stored, so keep it now."""
    with exit_on_error():
        key = job_store(ctx.obj).create_key(project)
    typer.echo(key)


def key_line(key: object) -> str:
    """A key as one JSON line: id, prefix, project and times, never the key or its hash."""
    from dataclasses import asdict

    return json.dumps({k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in asdict(key).items()})


@keys_app.command("list")
def keys_list(ctx: typer.Context, project: Optional[str] = typer.Option(
        None, "--project", help="Only this project's keys [default: every project's]")) -> None:
    """One JSON line per key, oldest first: id, prefix, project, created_at, last_used_at (to within
    5 minutes), revoked_at. The key itself is never shown again."""
    for key in job_store(ctx.obj).list_keys(project):
        typer.echo(key_line(key))


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: str = typer.Argument(..., help="The key's id, from `keys list`")) -> None:
    """Revoke a key (of any project): every API process refuses it within a few seconds."""
    key = job_store(ctx.obj).revoke_key(key_id, None)
    if key is None:
        fail(f"no key {key_id}; `keys list` shows the ids")
    typer.echo(key_line(key))


@app.command()
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
    from .jobs.worker import Worker

    try:
        Worker(settings, job_store(settings), lease=timedelta(seconds=lease)).run(stop)
    except KeyboardInterrupt:
        stop.set()


def stop_with_parent(parent: int, stop: threading.Event) -> None:
    """Set `stop` once `parent` has exited (this process is then re-parented)."""
    while not stop.wait(1.0):
        if os.getppid() != parent:
            stop.set()


@app.command()
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

    from .api.limits import GuardedHttpProtocol

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


def run() -> None:
    """The command: `app`, with every failure it can expect as a one-line reason on stderr, exit 2
    for bad input and 1 for the environment (a store, a disk, a file system); only a bug leaves a
    traceback."""
    try:
        app()
    except Invalid as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (ExportError, OSError) as exc:
        where = f"{exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        err.print(f"[red]error:[/red] {where}{reason}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    run()
