"""`analytics-export alerts ...`: the project's alert history and its notification channels, on the local
(or configured) job store. Alerts are sent by the workers of `analytics-export serve` (or `worker`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import List, Optional

import typer
from pydantic import ValidationError

from ..checks import describe_errors
from .common import exit_on_error, fail, job_store

app = typer.Typer(help="Alerts: incidents of exports, schedules, streams and retention, and their channels.",
                  no_args_is_help=True)
channels_app = typer.Typer(help="Notification channels: webhook, slack or email.", no_args_is_help=True)
app.add_typer(channels_app, name="channels")


def line(value: dict) -> str:
    return json.dumps(value, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


def context(ctx: typer.Context):
    from ..store.alerts import AlertStore

    jobs = job_store(ctx.obj)
    return ctx.obj, jobs, AlertStore(jobs)


@app.command("list")
def list_(ctx: typer.Context, limit: int = typer.Option(50, "--limit", min=1, max=1000)) -> None:
    """One JSON line per incident, newest first, with each channel's delivery."""
    settings, _, store = context(ctx)
    for incident in store.history(settings.project, limit, 0)[0]:
        typer.echo(line(incident))


@channels_app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name"),
    type: str = typer.Option(..., "--type", help="webhook, slack or email"),
    url: Optional[str] = typer.Option(None, "--url", help="webhook and slack: where to POST"),
    connection: Optional[str] = typer.Option(None, "--connection", help="webhook: a webhook connection (signing "
                                             "secret); email: an smtp connection"),
    to: List[str] = typer.Option([], "--to", help="email: a recipient (repeatable)"),
    kind: List[str] = typer.Option([], "--kind", help="an incident kind to be told of (repeatable; default all): "
                                   "export_failed, schedule_paused, schedule_missed, stream_failing, retention_failed"),
    stream_failing_minutes: float = typer.Option(5, "--stream-failing-minutes"),
) -> None:
    """Create a channel; prints it as JSON."""
    from ..alerts import ChannelSpec
    from ..api.alerts import view
    from ..runtime.alerts import check_channel

    settings, jobs, store = context(ctx)
    fields = {"name": name, "type": type, "url": url, "connection": connection, "to": to or None,
              "stream_failing_minutes": stream_failing_minutes, **({"kinds": kind} if kind else {})}
    try:
        spec = ChannelSpec.model_validate(fields)
    except ValidationError as exc:
        fail(describe_errors(exc.errors()))
    with exit_on_error():
        check_channel(settings, jobs, settings.project, spec)
        typer.echo(view(store.create_channel(settings.project, spec)).model_dump_json())


@channels_app.command("list")
def list_channels(ctx: typer.Context) -> None:
    """One JSON line per channel (a Slack URL shown by its host only)."""
    from ..api.alerts import view

    settings, _, store = context(ctx)
    for channel in store.channels(settings.project, 1000, 0)[0]:
        typer.echo(view(channel).model_dump_json())


@channels_app.command("delete")
def delete(ctx: typer.Context, channel_id: str) -> None:
    """Delete a channel; its alerts not yet sent are skipped."""
    settings, _, store = context(ctx)
    if not store.delete_channel(settings.project, channel_id):
        fail(f"no alert channel {channel_id} in this project; `alerts channels list` shows the ids")
