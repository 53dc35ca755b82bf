"""`keys`: API keys, each of one project; only their hashes are stored."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Optional

import typer

from .common import exit_on_error, fail, job_store

if TYPE_CHECKING:
    pass


keys_app = typer.Typer(help="API keys: each belongs to one project.", no_args_is_help=True)


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
