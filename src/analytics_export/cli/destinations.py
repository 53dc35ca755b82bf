"""`destinations test`: try a destination's settings as the API's `POST /api/destinations/test` does."""

from __future__ import annotations

import json

import typer
from pydantic import TypeAdapter, ValidationError

from ..checks import describe_errors
from .common import err, exit_on_error, fail, job_store

app = typer.Typer(help="Destinations: try one before an export, schedule or stream uses it.", no_args_is_help=True)


@app.command("test")
def test(ctx: typer.Context, to: str = typer.Option(
        ..., "--to", help='the destination as JSON, e.g. \'{"type": "s3", "bucket": "lake", "connection": "aws"}\''),
        ) -> None:
    """Check the host, find the connection, then write, read back and delete a small file (a signed ping
    for a webhook, a rolled-back transaction for a table, the stream or queue for a broker). Prints each
    step; exits 1 when one fails, saying why."""
    from ..api.destinations import AnyDestination
    from ..probes import try_destination

    settings = ctx.obj
    try:
        spec = TypeAdapter(AnyDestination).validate_python(json.loads(to))
    except json.JSONDecodeError as exc:
        fail(f"--to is not JSON: {exc}")
    except ValidationError as exc:
        fail(describe_errors(exc.errors()))
    with exit_on_error():
        probe = try_destination(spec, settings.project, settings, job_store(settings))
    for step in probe.steps:
        mark = "[green]ok[/green]  " if step.ok else "[red]FAIL[/red]"
        err.print(f"{mark} {step.name:<12} {step.seconds:6.2f}s  {step.detail}", highlight=False, soft_wrap=True)
    if not probe.ok:
        fail(f"step {probe.steps[-1].name!r} failed: {probe.steps[-1].detail}", 1)
    typer.echo(f"{spec.type} destination works")
