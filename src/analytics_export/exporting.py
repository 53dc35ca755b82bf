"""One export run in this process, as the library's `export()` and the CLI's `export` command run it:
the project's privacy, the destination, the event store, the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .checks import check_project_name
from .config import Settings
from .destinations import Placement, destination_for
from .destinations.local import LocalDestination
from .errors import Invalid
from .models import ExportRequest, ExportResult
from .pipeline import run_export
from .pipeline.batches import Progress
from .privacy.policy import Privacy
from .privacy.rules import PrivacyRules
from .sources.stores import open_store


def project_privacy(settings: Settings, request: ExportRequest) -> Privacy:
    """The privacy rules an export in this process enforces: the project's policy from the job store
    plus the request's own. Where no job store exists there is no policy to read: the request's rules
    apply without creating one, unless they pseudonymise, which needs the project's secret kept there.
    A SQLite job store is read with sqlite3 (`store/policy_read.py`); the job store's own modules
    (SQLAlchemy, alembic: about 0.6 s) load only where that cannot do."""
    path = settings.data_dir / "jobs.sqlite"
    if not settings.database_url and not path.exists():
        rules = PrivacyRules().stricter(request.privacy)
        if not (rules.pseudonymize_distinct_id or rules.pseudonymize_properties):
            return Privacy(rules)
    elif not settings.database_url:
        from .store.policy_read import sqlite_privacy

        def unseal(token: bytes) -> dict[str, str]:
            from .connections import Sealer  # cryptography: only for a policy that pseudonymises

            return Sealer(settings.signing_key()).open(token)

        if (privacy := sqlite_privacy(path, settings.project, request.privacy, unseal)) is not None:
            return privacy
    from .connections import Sealer
    from .store.jobs import JobStore
    from .store.policies import PrivacyStore

    jobs = JobStore.for_data_dir(settings.data_dir, settings.database_url)
    try:
        jobs.migrate()
        return PrivacyStore(jobs, Sealer(settings.signing_key())).for_export(settings.project, request)
    finally:
        jobs.engine.dispose()


def export(
    request: ExportRequest | None = None,
    *,
    settings: Settings | None = None,
    output: str | Path | None = None,
    output_dir: str | Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    secrets: dict[str, str] | None = None,
    **fields: Any,
) -> ExportResult:
    """Run one export in this process and return its result.

    Pass an ExportRequest, or its fields as keyword arguments. A download goes to `output` exactly,
    or to `output_dir` (default: the data dir's `exports/`) under the export's standard name; any
    other `destination` gets its credentials from `secrets` (a connection's fields) or the environment.
    The project's privacy policy applies, as in every export.
    """
    settings = settings or Settings()
    try:
        check_project_name(settings.project)  # settings may have been changed after they were checked
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    request = request or ExportRequest.model_validate(fields)
    privacy = project_privacy(settings, request)
    if request.destination.type == "download":
        destination = LocalDestination(Path(output_dir) if output_dir else settings.export_dir,
                                       Path(output) if output else None)
    else:
        destination = destination_for(Placement.for_export(request, settings.project, settings, secrets or {}))
    try:
        store = open_store(settings)
        try:
            return run_export(request, store, destination, project=settings.project,
                              batch_size=settings.export.batch_size, on_progress=on_progress, privacy=privacy,
                              engine=settings.export.engine_writes)
        finally:
            store.close()
    finally:
        destination.close()
