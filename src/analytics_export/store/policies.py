"""Privacy policies, pseudonym secrets and suppressed users, per project, in the job store."""

from __future__ import annotations

import secrets
from typing import Iterable

import sqlalchemy as sa

from ..connections import Sealer
from ..errors import Storage
from ..models import ExportRequest
from ..privacy.policy import Privacy
from ..privacy.rules import PrivacyRules
from .jobs import JobStore, aware, now
from .policy_read import SECRET_FIELD
from .tables import exports, privacy_policies, privacy_secrets, suppressions


class PrivacyStore:
    """Each policy change is a new version (kept, for audit); an export runs under the version
    that was current when it started, recorded on the export."""

    def __init__(self, jobs: JobStore, sealer: Sealer) -> None:
        self.jobs = jobs
        self.engine = jobs.engine
        self.sealer = sealer

    def policy(self, project: str, version: int | None = None) -> tuple[int, PrivacyRules, object]:
        """(version, rules, created_at) of the current policy or of `version`; (0, no rules, None) if none."""
        query = sa.select(privacy_policies).where(privacy_policies.c.project == project)
        query = (query.where(privacy_policies.c.version == version) if version is not None
                 else query.order_by(privacy_policies.c.version.desc()).limit(1))
        with self.engine.connect() as c:
            row = c.execute(query).first()
        if row is None:
            return 0, PrivacyRules(), None
        return row.version, PrivacyRules.model_validate(row.rules), aware(row.created_at)

    def set_policy(self, project: str, rules: PrivacyRules) -> int:
        """Store `rules` as the project's next version; returns it."""
        for _ in range(5):
            try:
                with self.engine.begin() as c:
                    current = c.execute(sa.select(sa.func.max(privacy_policies.c.version))
                                        .where(privacy_policies.c.project == project)).scalar() or 0
                    c.execute(privacy_policies.insert().values(project=project, version=current + 1,
                                                               rules=rules.model_dump(mode="json"), created_at=now()))
                    return current + 1
            except sa.exc.IntegrityError:  # another change took that version number: take the next
                continue
        raise Storage("the privacy policy is being changed by several requests at once; try again")

    def secret(self, project: str) -> bytes:
        """The project's pseudonym key, made on first use; sealed at rest, never shown."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(privacy_secrets.c.sealed).where(privacy_secrets.c.project == project)).first()
        if row is None:
            sealed = self.sealer.seal({SECRET_FIELD: secrets.token_hex(32)})
            try:
                with self.engine.begin() as c:
                    c.execute(privacy_secrets.insert().values(project=project, sealed=sealed, created_at=now()))
            except sa.exc.IntegrityError:  # made concurrently: use the stored one
                pass
            return self.secret(project)
        return bytes.fromhex(self.sealer.open(row.sealed)[SECRET_FIELD])

    def suppress(self, project: str, ids: Iterable[str]) -> int:
        """Add distinct_ids to the project's suppression list; returns how many were new."""
        wanted = list(dict.fromkeys(ids))
        added = 0
        with self.engine.begin() as c:
            for start in range(0, len(wanted), 5000):
                chunk = wanted[start:start + 5000]
                known = set(c.execute(sa.select(suppressions.c.distinct_id).where(
                    suppressions.c.project == project, suppressions.c.distinct_id.in_(chunk))).scalars())
                new = [{"project": project, "distinct_id": i, "created_at": now()} for i in chunk if i not in known]
                if new:
                    c.execute(suppressions.insert(), new)
                added += len(new)
        return added

    def unsuppress(self, project: str, ids: Iterable[str]) -> int:
        with self.engine.begin() as c:
            return c.execute(suppressions.delete().where(suppressions.c.project == project,
                                                         suppressions.c.distinct_id.in_(list(ids)))).rowcount

    def suppressed(self, project: str, limit: int | None = None, offset: int = 0) -> list[str]:
        query = (sa.select(suppressions.c.distinct_id).where(suppressions.c.project == project)
                 .order_by(suppressions.c.distinct_id).offset(offset))
        with self.engine.connect() as c:
            return list(c.execute(query.limit(limit) if limit else query).scalars())

    def suppression_mark(self, project: str) -> tuple[int, object]:
        """(count, newest addition) of the project's suppression list: it changed if this did."""
        with self.engine.connect() as c:
            return tuple(c.execute(sa.select(sa.func.count(), sa.func.max(suppressions.c.created_at))
                                   .where(suppressions.c.project == project)).one())

    def suppressed_count(self, project: str) -> int:
        with self.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(suppressions)
                             .where(suppressions.c.project == project)).scalar_one()

    def pin(self, export_id: str, project: str) -> int:
        """The policy version export `export_id` runs under: recorded when it first starts, so its
        partitions and retries within one run apply the same one."""
        with self.engine.begin() as c:
            pinned = c.execute(sa.select(exports.c.privacy_version).where(exports.c.id == export_id)).scalar()
            if pinned is not None:
                return pinned
            version = self.policy(project)[0]
            c.execute(exports.update().where(exports.c.id == export_id, exports.c.privacy_version.is_(None))
                      .values(privacy_version=version))
            return c.execute(sa.select(exports.c.privacy_version).where(exports.c.id == export_id)).scalar()

    def for_export(self, project: str, request: ExportRequest, version: int | None = None) -> Privacy:
        """What an export of `project` enforces: policy `version` (default: the current one) plus
        the request's own additions, with the project's secret and suppression list."""
        version, rules, _ = self.policy(project, version)
        return Privacy.of(version, rules, request.privacy, lambda: self.secret(project), self.suppressed(project))
