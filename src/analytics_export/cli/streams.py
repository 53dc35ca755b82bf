"""`analytics-export streams ...`: the stream API's operations on the local (or configured) job store.
Streams run in the workers of `analytics-export serve` (or `worker`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, List

import typer
from pydantic import ValidationError

from ..checks import describe_errors
from .common import exit_on_error, fail, job_store

if TYPE_CHECKING:
    from ..config import Settings

app = typer.Typer(help="Streaming exports: new events delivered continuously.", no_args_is_help=True)


def context(ctx: typer.Context):
    from ..store.streams import StreamStore

    settings: Settings = ctx.obj
    jobs = job_store(settings)
    return settings, jobs, StreamStore(jobs)


def show(stream, lag: tuple[int, float] | None = None) -> None:
    if stream is None:
        fail("no such stream in this project")
    out = {"stream": stream.spec.model_dump(mode="json"), "status": stream.status, "cursor": stream.cursor_at,
           "delivered_events": stream.delivered_events, "last_error": stream.last_error,
           "running_on": stream.lease_owner}
    if lag is not None:
        out["lag"] = {"events": lag[0], "seconds": lag[1]}
    typer.echo(json.dumps(out, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)))


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name"),
    to: str = typer.Option(..., "--to", help='destination as JSON, e.g. \'{"type": "nats", "subject": "events"}\''),
    event: List[str] = typer.Option([], "--event", "-e", help="event name to keep (repeatable)"),
    property: List[str] = typer.Option([], "--property", "-p", help="property to keep (repeatable)"),
    format: str = typer.Option("json_lines", "--format", "-f", help="webhook bodies and object-storage files"),
    max_batch_events: int = typer.Option(1000, "--max-batch-events"),
    max_batch_seconds: float = typer.Option(1.0, "--max-batch-seconds"),
    message: str = typer.Option("event", "--message", help="brokers: a message per event or per batch"),
) -> None:
    """Create a stream; it delivers events stored from now on."""
    from ..connections import checked_secrets
    from ..streaming.spec import StreamSpec

    settings, jobs, streams = context(ctx)
    try:
        spec = StreamSpec(name=name, destination=json.loads(to), events=event, properties=property or None,
                          format=format, max_batch_events=max_batch_events, max_batch_seconds=max_batch_seconds,
                          message=message)
    except json.JSONDecodeError as exc:
        fail(f"--to is not JSON: {exc}")
    except ValidationError as exc:
        fail(describe_errors(exc.errors()))
    with exit_on_error():
        checked_secrets(settings, jobs, settings.project, spec.destination)
    show(streams.create(settings.project, spec))


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """One JSON line per stream."""
    settings, _, streams = context(ctx)
    for stream in streams.list(settings.project, 1000, 0)[0]:
        show(stream)


@app.command("show")
def show_one(ctx: typer.Context, stream_id: str) -> None:
    """The stream, with its lag (events and seconds behind)."""
    from ..runtime.lag import lag

    settings, jobs, streams = context(ctx)
    stream = streams.get(settings.project, stream_id)
    with exit_on_error():
        show(stream, lag(settings, jobs, stream) if stream else None)


@app.command("pause")
def pause(ctx: typer.Context, stream_id: str) -> None:
    settings, _, streams = context(ctx)
    streams.set_status(settings.project, stream_id, paused=True)
    show(streams.get(settings.project, stream_id))


@app.command("resume")
def resume(ctx: typer.Context, stream_id: str) -> None:
    settings, _, streams = context(ctx)
    streams.set_status(settings.project, stream_id, paused=False)
    show(streams.get(settings.project, stream_id))


@app.command("delete")
def delete(ctx: typer.Context, stream_id: str) -> None:
    settings, _, streams = context(ctx)
    if not streams.delete(settings.project, stream_id):
        fail("no such stream in this project")
