"""`analytics-export schedules ...`: the schedule API's operations on the local (or configured) job store."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, List, Optional

import typer
from pydantic import ValidationError

from ..checks import describe_errors, utc
from ..errors import Invalid, NotFound
from ..enums import DateRange, ExportModel
from .common import fail, job_store
from .exports import COUNT_HELP, GAP_HELP, MODEL_HELP

if TYPE_CHECKING:
    from ..config import Settings

app = typer.Typer(help="Scheduled exports: cron, windows, backfills, run history.", no_args_is_help=True)


def store(ctx: typer.Context):
    from ..runtime.scheduler import Schedules

    settings: Settings = ctx.obj
    jobs = job_store(settings)
    return settings.project, jobs, Schedules(jobs, settings.export)


def show(value: object) -> None:
    typer.echo(json.dumps(value, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)))


def found(item: dict | None, schedule_id: str) -> dict:
    if item is None:
        fail(f"no schedule {schedule_id} in this project")
    return item


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name"),
    cron: str = typer.Option(..., "--cron", help="e.g. '0 2 * * *'"),
    timezone: str = typer.Option("UTC", "--timezone"),
    range_: DateRange = typer.Option(DateRange.LAST_DAY, "--range"),
    format: str = typer.Option("json_lines", "--format", "-f"),
    event: List[str] = typer.Option([], "--event", "-e"),
    time_field: str = typer.Option("inserted_at", "--time-field", help="inserted_at (no late event missed) or timestamp"),
    delay: float = typer.Option(60, "--delay", help="seconds to wait after a window ends"),
    catch_up: str = typer.Option("all", "--catch-up", help="all or latest missed windows after downtime"),
    to: Optional[str] = typer.Option(None, "--to", help="destination as JSON; default download"),
    csv_formula_guard: bool = typer.Option(False, "--csv-formula-guard", help="CSV: start cells a spreadsheet "
                                           "would run as formulas with '"),
    include: List[str] = typer.Option([], "--include", help="Extra column (repeatable): uuid or inserted_at"),
    model: ExportModel = typer.Option(ExportModel.EVENTS, "--model", help=MODEL_HELP),
    session_gap_minutes: int = typer.Option(30, "--session-gap-minutes", help=GAP_HELP),
    person_event_count: str = typer.Option("all", "--person-event-count", help=COUNT_HELP),
) -> None:
    """Create a schedule; prints it as JSON."""
    from ..models import ScheduledExport
    from ..store.jobs import now

    project, _, schedules = store(ctx)
    try:
        spec = ScheduledExport(name=name, schedule=cron, timezone=timezone, date_range=range_, format=format,
                               events=event, time_field=time_field, delay_seconds=delay, catch_up=catch_up,
                               destination=json.loads(to) if to else {"type": "download"},
                               csv_formula_guard=csv_formula_guard, include=include, model=model,
                               session_gap_minutes=session_gap_minutes, person_event_count=person_event_count)
    except json.JSONDecodeError as exc:
        fail(f"--to is not JSON: {exc}")
    except ValidationError as exc:
        fail(describe_errors(exc.errors()))
    try:
        show(schedules.create(project, spec, now()))
    except Invalid as exc:
        fail(str(exc))


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """One JSON line per schedule."""
    project, _, schedules = store(ctx)
    for item in schedules.list(project, 1000, 0)[0]:
        show(item)


@app.command("pause")
def pause(ctx: typer.Context, schedule_id: str) -> None:
    project, _, schedules = store(ctx)
    show(found(schedules.pause(project, schedule_id, "paused by request"), schedule_id))


@app.command("resume")
def resume(ctx: typer.Context, schedule_id: str) -> None:
    from ..store.jobs import now

    project, _, schedules = store(ctx)
    try:
        show(found(schedules.update(project, schedule_id, {"enabled": True}, now()), schedule_id))
    except Invalid as exc:
        fail(str(exc))


@app.command("delete")
def delete(ctx: typer.Context, schedule_id: str) -> None:
    project, _, schedules = store(ctx)
    if not schedules.delete(project, schedule_id):
        found(None, schedule_id)


@app.command("backfill")
def backfill_(ctx: typer.Context, schedule_id: str, start: datetime = typer.Option(..., "--start"),
              end: datetime = typer.Option(..., "--end"),
              force: bool = typer.Option(False, "--force", help="export completed windows again")) -> None:
    """Queue the schedule's windows overlapping [start, end); workers export them."""
    from ..runtime.scheduler import backfill

    project, jobs, _ = store(ctx)
    if utc(end) <= utc(start):
        fail("--end must be after --start")
    try:
        show(backfill(jobs, project, schedule_id, utc(start), utc(end), force))
    except (Invalid, NotFound) as exc:
        fail(str(exc))


@app.command("runs")
def runs(ctx: typer.Context, schedule_id: str, limit: int = typer.Option(100, "--limit")) -> None:
    """The schedule's runs, newest window first, one JSON line each."""
    from ..runtime.scheduler import run_history

    project, jobs, schedules = store(ctx)
    found(schedules.get(project, schedule_id), schedule_id)
    for run in run_history(jobs, schedule_id, limit, 0):
        show(run)
