"""`analytics-export privacy ...` and `retention ...`: a project's data protection on the local (or
configured) job store, as the API's /api/projects/{project}/privacy, suppressions and retention."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer
from pydantic import ValidationError

from ..checks import describe_errors
from .common import exit_on_error, fail, job_store

if TYPE_CHECKING:
    from ..config import Settings

privacy_app = typer.Typer(help="Privacy policy and suppression list applied to every export.", no_args_is_help=True)
retention_app = typer.Typer(help="Export before deletion: archive, verify, then delete old events.",
                            no_args_is_help=True)


def show(value: object) -> None:
    typer.echo(json.dumps(value, default=lambda v: v.isoformat() if isinstance(v, (datetime, date)) else str(v)))


def context(ctx: typer.Context):
    from ..connections import Sealer
    from ..store.policies import PrivacyStore

    settings: Settings = ctx.obj
    jobs = job_store(settings)
    return settings, jobs, PrivacyStore(jobs, Sealer(settings.signing_key()))


def parsed(model, path: Path):
    try:
        return model.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        fail(f"{path}: {describe_errors(exc.errors())}")
    except OSError as exc:
        fail(f"{path}: {exc.strerror}")


@privacy_app.command("show")
def privacy_show(ctx: typer.Context, version: Optional[int] = typer.Option(None, help="an earlier version")) -> None:
    """Print the project's policy (version 0: none)."""
    settings, _, policies = context(ctx)
    number, rules, updated = policies.policy(settings.project, version)
    show({"project": settings.project, "version": number, "updated_at": updated,
          "rules": rules.model_dump(mode="json"), "suppressed_users": policies.suppressed_count(settings.project)})


@privacy_app.command("set")
def privacy_set(ctx: typer.Context, file: Path = typer.Argument(..., help="a JSON PrivacyRules document")) -> None:
    """Replace the policy with FILE's rules (a new version)."""
    from ..privacy.rules import PrivacyRules

    settings, _, policies = context(ctx)
    show({"version": policies.set_policy(settings.project, parsed(PrivacyRules, file))})


@privacy_app.command("suppress")
def suppress(ctx: typer.Context, distinct_id: List[str] = typer.Argument(None),
             file: Optional[Path] = typer.Option(None, "--file", help="one distinct_id a line"),
             remove: bool = typer.Option(False, "--remove", help="take them off the list instead")) -> None:
    """Exclude users from every export (or, with --remove, include them again)."""
    settings, _, policies = context(ctx)
    ids = list(distinct_id or []) + ([line.strip() for line in file.read_text().splitlines() if line.strip()]
                                     if file else [])
    if not ids:
        fail("give distinct_ids as arguments or --file")
    if remove:
        show({"removed": policies.unsuppress(settings.project, ids)})
    else:
        show({"added": policies.suppress(settings.project, ids), "total": policies.suppressed_count(settings.project)})


@retention_app.command("set")
def retention_set(ctx: typer.Context, file: Path = typer.Argument(..., help="a JSON RetentionPolicy document")) -> None:
    """Set the project's retention policy (`{"days": 90}` archives to the data dir's archive/)."""
    from ..models import RetentionPolicy
    from ..runtime.retention import get_policy, set_policy

    settings, jobs, _ = context(ctx)
    with exit_on_error():
        set_policy(jobs, settings.project, parsed(RetentionPolicy, file), settings.export.min_schedule_interval_seconds)
    policy, row = get_policy(jobs, settings.project)
    show({"policy": policy.model_dump(mode="json"), "next_run": row.next_run})


@retention_app.command("run")
def retention_run(ctx: typer.Context, dry_run: bool = typer.Option(False, "--dry-run", help="show what would go")) -> None:
    """Run the project's retention policy now, in this process; one JSON line per day."""
    from ..runtime.retention import Retention, get_policy

    settings, jobs, _ = context(ctx)
    found = get_policy(jobs, settings.project)
    if found is None:
        fail("this project has no retention policy: `retention set FILE` first")
    with exit_on_error():
        for report in Retention(settings, jobs, settings.project).run(found[0], dry_run=dry_run):
            show(report)


@retention_app.command("history")
def retention_history(ctx: typer.Context, limit: int = typer.Option(100)) -> None:
    """Each day's archive and deletion, newest first."""
    from ..runtime.retention import Retention

    settings, jobs, _ = context(ctx)
    for row in Retention(settings, jobs, settings.project).history(limit):
        show(row)
