"""The job store: exports and API keys in SQLite (default) or PostgreSQL, shared by API and workers.

Workers claim a job by taking a lease (owner + expiry) in one conditional UPDATE, extend it with
heartbeats, and can only finish a job whose lease they still hold; a job whose worker died is
claimed again once its lease expires.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa

from ..checks import check_project_name
from ..errors import Invalid, Limited
from ..enums import ExportStatus
from ..models import ExportRequest, ExportResult
from ..private import create_private
from .incidents import open_incident, resolve_incident
from .records import Job, Partition, aware
from .tables import api_keys, connections, export_parts, exports, leases
from .revision import HEAD, MIGRATIONS
from .wakeups import notify

log = logging.getLogger(__name__)
KEY_PREFIX = "aek_"
KEY_CACHE_SECONDS = 2.0
"""How long an API process trusts a key it looked up: a revoked key stops working within this, in
every process (a status poll still costs no query most of the time)."""
KEY_SHOWN = 8
"""Characters of a key kept to tell keys apart in listings (`aek_` and 4 of its 43 random ones)."""
KEY_LAST_USED_EVERY = timedelta(minutes=5)
"""A key's last_used_at is written at most this often: a write per request would contend with workers."""
# Built once: status polls run it hundreds of times a second, and a reused statement skips
# SQLAlchemy's expression building and cache-key walk.
GET_EXPORT = sa.select(exports).where(exports.c.id == sa.bindparam("export_id"),
                                      exports.c.project == sa.bindparam("project"))
ACTIVE = (ExportStatus.PENDING.value, ExportStatus.PROCESSING.value)


def now() -> datetime:
    return datetime.now(timezone.utc)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class ApiKey:
    """An API key as listed: never the key or its hash."""

    id: str
    project: str
    prefix: str | None  # None for keys made before prefixes were kept
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        return cls(id=row.id, project=row.project, prefix=row.prefix, created_at=aware(row.created_at),
                   last_used_at=aware(row.last_used_at), revoked_at=aware(row.revoked_at))


class JobStore:
    def __init__(self, url: str) -> None:
        self.url = url
        sqlite = url.startswith("sqlite")
        # The pool holds as many connections as the API has request threads, so none is opened per request.
        self.engine = sa.create_engine(url, connect_args={"timeout": 30} if sqlite else {}, pool_pre_ping=not sqlite,
                                       pool_size=40 if sqlite else 10, max_overflow=0 if sqlite else 20)
        self.keys: dict[str, tuple[str, float]] = {}  # key hash -> (project, looked up at)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    @classmethod
    def for_data_dir(cls, data_dir: Path, url: str | None = None) -> JobStore:
        """The configured store: `url` (e.g. postgresql+psycopg://...) or `DATA_DIR/jobs.sqlite`."""
        if url:
            return cls(url)
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        path = Path(data_dir).absolute() / "jobs.sqlite"
        create_private(path)  # keys' hashes, sealed secrets; SQLite gives its -wal, -shm, -journal this mode
        return cls(f"sqlite:///{path}")

    def migrate(self) -> None:
        """Bring the schema to the newest alembic revision; a store already there is left alone
        without loading alembic (about 0.5 s of every process start, and of each library export)."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        if self.revision() == HEAD:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def revision(self) -> str | None:
        """The schema's alembic revision; None before the first migration."""
        with self.engine.connect() as connection:
            if not sa.inspect(connection).has_table("alembic_version"):
                return None
            return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    # -- API keys ---------------------------------------------------------------------------

    def take_lease(self, name: str, owner: str, at: datetime, until: datetime) -> bool:
        """Take or renew the named lease (a leader, one project's retention run) until `until`; False
        while another owner's has not expired."""
        with self.engine.begin() as c:
            taken = c.execute(leases.update().where(
                leases.c.name == name, sa.or_(leases.c.owner == owner, leases.c.expires_at < at),
            ).values(owner=owner, expires_at=until)).rowcount
            if taken:
                return True
            if c.execute(sa.select(leases.c.name).where(leases.c.name == name)).first() is not None:
                return False
        try:
            with self.engine.begin() as c:
                c.execute(leases.insert().values(name=name, owner=owner, expires_at=until))
            return True
        except sa.exc.IntegrityError:
            return False

    def drop_lease(self, name: str, owner: str) -> None:
        with self.engine.begin() as c:
            c.execute(leases.delete().where(leases.c.name == name, leases.c.owner == owner))

    def create_key(self, project: str) -> str:
        """A new API key for `project`; only its hash is stored, so this is the one time it is seen
        (listings show its id and first KEY_SHOWN characters)."""
        try:
            check_project_name(project)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as c:
            c.execute(api_keys.insert().values(key_hash=hash_key(key), id=secrets.token_hex(8),
                                               prefix=key[:KEY_SHOWN], project=project, created_at=now()))
        return key

    def project_for_key(self, key: str) -> str | None:
        """The project of a key that is not revoked; a key found is trusted for KEY_CACHE_SECONDS."""
        digest = hash_key(key)
        cached = self.keys.get(digest)
        if cached and time.monotonic() - cached[1] < KEY_CACHE_SECONDS:
            return cached[0]
        with self.engine.connect() as c:
            row = c.execute(sa.select(api_keys.c.project, api_keys.c.last_used_at).where(
                api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None))).first()
        if row is None:
            self.keys.pop(digest, None)
            return None
        self.keys[digest] = (row.project, time.monotonic())
        stamp = now()
        if row.last_used_at is None or aware(row.last_used_at) < stamp - KEY_LAST_USED_EVERY:
            # off the request's path: on SQLite the write may wait for a worker's transaction
            threading.Thread(target=self._key_used, args=(digest, stamp), daemon=True).start()
        return row.project

    def _key_used(self, digest: str, at: datetime) -> None:
        try:
            with self.engine.begin() as c:
                c.execute(api_keys.update().where(api_keys.c.key_hash == digest).values(last_used_at=at))
        except sa.exc.SQLAlchemyError as exc:  # only a listing's hint is lost; the next lookup tries again
            log.warning("could not record an API key's last use: %s", exc)

    def list_keys(self, project: str | None) -> list[ApiKey]:
        """The keys of `project` (None: every project's), oldest first, revoked ones included."""
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if project is not None:
            query = query.where(api_keys.c.project == project)
        with self.engine.connect() as c:
            return [ApiKey.from_row(r) for r in c.execute(query).all()]

    def revoke_key(self, key_id: str, project: str | None) -> ApiKey | None:
        """Revoke key `key_id` of `project` (None: of any project); None if there is no such key. A key
        revoked already keeps its first revocation time. Other processes notice within KEY_CACHE_SECONDS."""
        mine = api_keys.c.id == key_id
        if project is not None:
            mine = mine & (api_keys.c.project == project)
        with self.engine.begin() as c:
            c.execute(api_keys.update().where(mine, api_keys.c.revoked_at.is_(None)).values(revoked_at=now()))
            row = c.execute(sa.select(api_keys).where(mine)).first()
        if row is None:
            return None
        self.keys.pop(row.key_hash, None)
        return ApiKey.from_row(row)

    # -- connections ------------------------------------------------------------------------

    def create_connection(self, project: str, name: str, type: str, fields: list[str], sealed: bytes) -> bool:
        """Store a connection; False if the project already has one of that name."""
        try:
            with self.engine.begin() as c:
                check_room(c, connections, project, MAX_CONNECTIONS, "connections")
                c.execute(connections.insert().values(project=project, name=name, type=type, fields=fields,
                                                      sealed=sealed, created_at=now()))
        except sa.exc.IntegrityError:
            return False
        return True

    def connection(self, project: str, name: str) -> Any | None:
        """The row (name, type, fields, sealed, created_at) of the project's connection `name`."""
        with self.engine.connect() as c:
            return c.execute(sa.select(connections).where(
                connections.c.project == project, connections.c.name == name)).first()

    def list_connections(self, project: str) -> list[Any]:
        with self.engine.connect() as c:
            return c.execute(sa.select(connections).where(connections.c.project == project)
                             .order_by(connections.c.name)).all()

    def delete_connection(self, project: str, name: str) -> bool:
        with self.engine.begin() as c:
            return bool(c.execute(connections.delete().where(
                connections.c.project == project, connections.c.name == name)).rowcount)

    # -- exports ----------------------------------------------------------------------------

    def create(self, project: str, request: ExportRequest, limit: int) -> Job:
        """Queue `request` unless `limit` of the project's exports are pending or running already
        (then Limited): counted and inserted in one transaction, so parallel creates never pass it."""
        with self.writing() as c:
            if not self.room(c, project, limit):
                raise at_limit(limit)
            self.insert(c, project, request)
        return self.get(project, request.id)

    @contextmanager
    def writing(self) -> Iterator[sa.Connection]:
        """A transaction that on SQLite holds the database's write lock from its start (BEGIN
        IMMEDIATE): what it reads stays true until it commits. (SQLite's driver would begin only at
        the first write, after the reads.)"""
        with self.engine.begin() as c:
            if c.dialect.name == "sqlite":
                c.exec_driver_sql("BEGIN IMMEDIATE")
            yield c

    @staticmethod
    def room(c: sa.Connection, project: str, limit: int) -> int:
        """How many more exports `project` may queue in this transaction (of `writing`), at most `limit`
        pending or processing; a partitioned export counts once. Holds the project's queue until the
        transaction ends, so no other transaction counts the same room: on PostgreSQL an advisory lock
        on the project, on SQLite the write lock `writing` took."""
        if c.dialect.name == "postgresql":
            c.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                      {"key": f"analytics-export queue {project}"})
        active = c.execute(sa.select(sa.func.count()).where(
            exports.c.project == project, exports.c.status.in_(ACTIVE))).scalar_one()
        return max(0, limit - active)

    @staticmethod
    def insert(c: sa.Connection, project: str, request: ExportRequest) -> None:
        """Queue `request` inside the caller's transaction."""
        c.execute(exports.insert().values(
            id=request.id, project=project, request=request.model_dump(mode="json"),
            status=ExportStatus.PENDING.value, created_at=request.created_at,
        ))
        notify(c)

    def get(self, project: str, export_id: str) -> Job | None:
        with self.engine.connect() as c:
            row = c.execute(GET_EXPORT, {"export_id": export_id, "project": project}).first()
        return Job.from_row(row) if row else None

    def get_any(self, export_id: str) -> Job | None:
        """An export whatever its project: only for links whose signature already proved access."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(exports).where(exports.c.id == export_id)).first()
        return Job.from_row(row) if row else None

    def list(self, project: str, limit: int, offset: int) -> tuple[list[Job], int]:
        """Newest first, with the project's total count."""
        with self.engine.connect() as c:
            total = c.execute(sa.select(sa.func.count()).where(exports.c.project == project)).scalar_one()
            rows = c.execute(sa.select(exports).where(exports.c.project == project)
                             .order_by(exports.c.created_at.desc(), exports.c.id).limit(limit).offset(offset)).all()
        return [Job.from_row(r) for r in rows], total

    def claim(self, worker: str, lease: timedelta) -> Job | None:
        """Take work for `worker`: first a runnable partition of a running export, else the oldest
        runnable export (pending, or processing under an expired lease)."""
        if (job := self._claim_partition(worker, lease)) is not None:
            return job
        t = now()
        runnable = sa.or_(
            sa.and_(exports.c.status == ExportStatus.PENDING.value,
                    sa.or_(exports.c.retry_at.is_(None), exports.c.retry_at <= t)),
            sa.and_(exports.c.status == ExportStatus.PROCESSING.value, exports.c.lease_expires < t),
        )
        with self.engine.begin() as c:
            pick = sa.select(exports.c.id, exports.c.parts).where(runnable, exports.c.cancel_requested.is_(False)) \
                .order_by(exports.c.created_at).limit(1)
            if c.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            row = c.execute(pick).first()
            if row is None:
                return None
            if not c.execute(exports.update().where(exports.c.id == row.id, runnable).values(
                    status=ExportStatus.PROCESSING.value, lease_owner=worker, lease_expires=t + lease,
                    attempts=exports.c.attempts + 1, started_at=sa.func.coalesce(exports.c.started_at, t),
                    **({} if row.parts else {"events_done": 0, "bytes_done": 0}),
            )).rowcount:
                return None
            return Job.from_row(c.execute(sa.select(exports).where(exports.c.id == row.id)).first())

    def fail_abandoned(self, max_attempts: int) -> list[tuple[str, str]]:
        """Fail each export, and each partition (with its export), whose worker died holding it (its
        lease ran out unrenewed) on attempt `max_attempts`: a run whose worker dies is a failed
        attempt, so an export that kills every worker running it stops at the limit instead of taking
        the workers down one after another. Returns (export id, error) of each."""
        t = now()
        p = export_parts.c
        failed = []
        dead = sa.and_(exports.c.status == ExportStatus.PROCESSING.value, exports.c.lease_expires < t,
                       exports.c.attempts >= max_attempts, exports.c.cancel_requested.is_(False))
        with self.engine.begin() as c:
            pick = sa.select(exports.c.id, exports.c.attempts, exports.c.lease_owner).where(dead)
            if c.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            for row in c.execute(pick).all():
                error = died(row.attempts, max_attempts, row.lease_owner)
                if c.execute(exports.update().where(exports.c.id == row.id, dead).values(
                        status=ExportStatus.FAILED.value, error=error, completed_at=t, lease_owner=None,
                        lease_expires=None)).rowcount:
                    failed_for_good(c, row.id, error)
                    failed.append((row.id, error))
        dead_part = sa.and_(p.status == ExportStatus.PROCESSING.value, p.lease_expires < t, p.attempts >= max_attempts)
        with self.engine.begin() as c:
            pick = sa.select(p.export_id, p.number, p.window_start, p.window_end, p.attempts, p.lease_owner,
                             exports.c.parts).join(exports, exports.c.id == p.export_id).where(
                dead_part, exports.c.status == ExportStatus.PROCESSING.value)
            for row in c.execute(pick).all():
                self._lock_export(c, row.export_id)  # then the partition, re-checked: the lock order of every writer
                mine = (p.export_id == row.export_id) & (p.number == row.number)
                error = died(row.attempts, max_attempts, row.lease_owner)
                if not c.execute(export_parts.update().where(mine, dead_part).values(
                        status=ExportStatus.FAILED.value, error=error, lease_owner=None,
                        lease_expires=None)).rowcount:
                    continue
                error = (f"partition {row.number} of {row.parts} ({aware(row.window_start):%Y-%m-%dT%H:%M:%SZ} to "
                         f"{aware(row.window_end):%Y-%m-%dT%H:%M:%SZ}) failed: {error}")
                if c.execute(exports.update().where(
                        exports.c.id == row.export_id, exports.c.status == ExportStatus.PROCESSING.value,
                ).values(status=ExportStatus.FAILED.value, completed_at=t, error=error)).rowcount:
                    failed_for_good(c, row.export_id, error)
                    failed.append((row.export_id, error))
        return failed

    def partition(self, export_id: str, worker: str, windows: list[tuple[datetime, datetime]]) -> bool:
        """Turn an export `worker` holds into partitions, one per window; the export then runs, leased
        by none, while workers claim its partitions. False if the lease was lost meanwhile."""
        with self.engine.begin() as c:
            if not c.execute(exports.update().where(
                    exports.c.id == export_id, exports.c.lease_owner == worker,
                    exports.c.status == ExportStatus.PROCESSING.value,
            ).values(parts=len(windows), parts_done=0, lease_owner=None, lease_expires=None)).rowcount:
                return False
            c.execute(export_parts.delete().where(export_parts.c.export_id == export_id))
            c.execute(export_parts.insert(), [
                {"export_id": export_id, "number": n, "window_start": start, "window_end": end,
                 "status": ExportStatus.PENDING.value}
                for n, (start, end) in enumerate(windows, 1)])
            notify(c)
        return True

    def _claim_partition(self, worker: str, lease: timedelta) -> Job | None:
        t = now()
        p = export_parts.c
        runnable = sa.or_(
            sa.and_(p.status == ExportStatus.PENDING.value, sa.or_(p.retry_at.is_(None), p.retry_at <= t)),
            sa.and_(p.status == ExportStatus.PROCESSING.value, p.lease_expires < t),
        )
        with self.engine.begin() as c:
            pick = sa.select(p.export_id, p.number).join(exports, exports.c.id == p.export_id).where(
                runnable, exports.c.status == ExportStatus.PROCESSING.value,
                exports.c.cancel_requested.is_(False)).order_by(exports.c.created_at, p.number).limit(1)
            if c.dialect.name == "postgresql":
                pick = pick.with_for_update(of=export_parts, skip_locked=True)
            key = c.execute(pick).first()
            if key is None:
                return None
            mine = (p.export_id == key.export_id) & (p.number == key.number)
            if not c.execute(export_parts.update().where(mine, runnable).values(
                    status=ExportStatus.PROCESSING.value, lease_owner=worker, lease_expires=t + lease,
                    attempts=p.attempts + 1, events_done=0, bytes_done=0)).rowcount:
                return None
            part = c.execute(sa.select(export_parts).where(mine)).first()
            job = Job.from_row(c.execute(sa.select(exports).where(exports.c.id == key.export_id)).first())
        job.partition = Partition(part.number, aware(part.window_start), aware(part.window_end), part.attempts)
        return job

    @staticmethod
    def _lock_export(c: sa.Connection, export_id: str) -> None:
        """On PostgreSQL, lock the export's row first: every transaction that touches an export and
        its partitions takes the locks in that order, so none can deadlock."""
        if c.dialect.name == "postgresql":
            c.execute(sa.select(exports.c.id).where(exports.c.id == export_id).with_for_update())

    def partition_heartbeat(self, job: Job, worker: str, lease: timedelta, events: int, size: int) -> bool:
        """Extend the partition's lease, record its progress and the export's; False when it is no
        longer this worker's to run (the export was cancelled or failed, or the lease was lost)."""
        p = export_parts.c
        running = sa.exists().where(exports.c.id == job.id, exports.c.status == ExportStatus.PROCESSING.value,
                                    exports.c.cancel_requested.is_(False))
        with self.engine.begin() as c:
            self._lock_export(c, job.id)
            if not c.execute(export_parts.update().where(
                    p.export_id == job.id, p.number == job.partition.number, p.lease_owner == worker,
                    p.status == ExportStatus.PROCESSING.value, running,
            ).values(lease_expires=now() + lease, events_done=events, bytes_done=size)).rowcount:
                return False
            self._sum_progress(c, job.id)
        return True

    @staticmethod
    def _sum_progress(c: sa.Connection, export_id: str) -> None:
        p = export_parts.c
        c.execute(exports.update().where(exports.c.id == export_id).values(
            events_done=sa.select(sa.func.coalesce(sa.func.sum(p.events_done), 0))
            .where(p.export_id == export_id).scalar_subquery(),
            bytes_done=sa.select(sa.func.coalesce(sa.func.sum(p.bytes_done), 0))
            .where(p.export_id == export_id).scalar_subquery()))

    def partition_done(self, job: Job, worker: str, lease: timedelta, files: list[dict]) -> bool | None:
        """Record a partition's files. True: it was the last, and `worker` now holds the export's
        lease to assemble it; False: others remain; None: the partition was no longer this worker's."""
        p = export_parts.c
        t = now()
        with self.engine.begin() as c:
            self._lock_export(c, job.id)
            if not c.execute(export_parts.update().where(
                    p.export_id == job.id, p.number == job.partition.number, p.lease_owner == worker,
                    p.status == ExportStatus.PROCESSING.value,
            ).values(status=ExportStatus.COMPLETED.value, files=files, lease_owner=None, lease_expires=None,
                     events_done=sum(f["events"] for f in files), bytes_done=sum(f["bytes"] for f in files),
                     error=None)).rowcount:
                return None
            self._sum_progress(c, job.id)
            done = c.execute(sa.select(sa.func.count()).where(
                p.export_id == job.id, p.status == ExportStatus.COMPLETED.value)).scalar_one()
            c.execute(exports.update().where(exports.c.id == job.id).values(parts_done=done))
            if done < job.parts:
                return False
            return bool(c.execute(exports.update().where(
                exports.c.id == job.id, exports.c.status == ExportStatus.PROCESSING.value,
                exports.c.cancel_requested.is_(False), exports.c.lease_owner.is_(None),
            ).values(lease_owner=worker, lease_expires=t + lease)).rowcount)

    def partition_failed(self, job: Job, worker: str, error: str, retry_at: datetime | None) -> None:
        """Put the partition back to run again at `retry_at`; without one, fail the whole export."""
        p = export_parts.c
        mine = (p.export_id == job.id) & (p.number == job.partition.number) & (p.lease_owner == worker)
        with self.engine.begin() as c:
            self._lock_export(c, job.id)
            if retry_at is not None:
                c.execute(export_parts.update().where(mine).values(
                    status=ExportStatus.PENDING.value, error=error, retry_at=retry_at, lease_owner=None,
                    lease_expires=None))
                return
            if c.execute(export_parts.update().where(mine).values(
                    status=ExportStatus.FAILED.value, error=error, lease_owner=None, lease_expires=None)).rowcount:
                part = job.partition
                error = (f"partition {part.number} of {job.parts} ({part.start:%Y-%m-%dT%H:%M:%SZ} to "
                         f"{part.end:%Y-%m-%dT%H:%M:%SZ}) failed: {error}")
                if c.execute(exports.update().where(
                        exports.c.id == job.id, exports.c.status == ExportStatus.PROCESSING.value,
                ).values(status=ExportStatus.FAILED.value, completed_at=now(), error=error)).rowcount:
                    failed_for_good(c, job.id, error, part.attempts)

    def partition_released(self, job: Job, worker: str) -> None:
        """Give a stopped partition up (its export was cancelled or failed, or its lease was lost)."""
        p = export_parts.c
        with self.engine.begin() as c:
            self._lock_export(c, job.id)
            c.execute(export_parts.update().where(
                p.export_id == job.id, p.number == job.partition.number, p.lease_owner == worker,
                p.status == ExportStatus.PROCESSING.value,
            ).values(status=ExportStatus.PENDING.value, lease_owner=None, lease_expires=None))

    def partitions(self, export_id: str) -> list[Any]:
        """The export's partition rows, in order."""
        with self.engine.connect() as c:
            return c.execute(sa.select(export_parts).where(export_parts.c.export_id == export_id)
                             .order_by(export_parts.c.number)).all()

    def reap(self, export_id: str | None = None) -> list[tuple[Job, list[Any]]]:
        """Close partitioned exports that failed or were cancelled once none of their partitions runs
        any more: mark them failed, forget their partitions and return the rows whose files are to be
        removed. A partition still running (unexpired lease) stops at its next heartbeat. A cancelled
        export whose worker died (its lease expired) is closed too."""
        t = now()
        p = export_parts.c
        live = sa.exists().where(p.export_id == exports.c.id, p.status == ExportStatus.PROCESSING.value,
                                 p.lease_expires >= t)
        stopped = sa.or_(exports.c.status == ExportStatus.FAILED.value,
                         sa.and_(exports.c.status == ExportStatus.PROCESSING.value,
                                 exports.c.cancel_requested.is_(True),
                                 sa.or_(exports.c.lease_expires.is_(None), exports.c.lease_expires < t)))
        reaped = []
        with self.engine.begin() as c:
            query = sa.select(exports).where(stopped, ~live, sa.or_(
                sa.exists().where(p.export_id == exports.c.id), exports.c.status == ExportStatus.PROCESSING.value))
            if export_id is not None:
                query = query.where(exports.c.id == export_id)
            if c.dialect.name == "postgresql":
                query = query.with_for_update(of=exports, skip_locked=True)
            for row in c.execute(query).all():
                c.execute(exports.update().where(
                    exports.c.id == row.id, exports.c.status == ExportStatus.PROCESSING.value,
                ).values(status=ExportStatus.FAILED.value, error="cancelled", completed_at=t, lease_owner=None,
                         lease_expires=None))
                rows = c.execute(sa.select(export_parts).where(p.export_id == row.id)).all()
                c.execute(export_parts.delete().where(p.export_id == row.id))
                reaped.append((Job.from_row(row), rows))
        return reaped

    def expect(self, export_id: str, worker: str, events: int | None) -> None:
        """Record how many events the export `worker` runs is expected to hold (an estimate)."""
        with self.engine.begin() as c:
            c.execute(exports.update().where(exports.c.id == export_id, exports.c.lease_owner == worker)
                      .values(events_expected=events))

    def heartbeat(self, export_id: str, worker: str, lease: timedelta, events: int, size: int) -> bool:
        """Extend the lease and record progress; False when the job is no longer this worker's to run
        (cancelled, or its lease was lost)."""
        with self.engine.begin() as c:
            held = c.execute(exports.update().where(
                exports.c.id == export_id, exports.c.lease_owner == worker,
                exports.c.status == ExportStatus.PROCESSING.value, exports.c.cancel_requested.is_(False),
            ).values(lease_expires=now() + lease, events_done=events, bytes_done=size)).rowcount
        return bool(held)

    def retry_later(self, export_id: str, worker: str, error: str, at: datetime) -> bool:
        """Put a failed attempt back in the queue, to run again at `at`, if `worker` holds the lease."""
        with self.engine.begin() as c:
            return bool(c.execute(exports.update().where(
                exports.c.id == export_id, exports.c.lease_owner == worker,
                exports.c.status == ExportStatus.PROCESSING.value,
            ).values(status=ExportStatus.PENDING.value, error=error, retry_at=at, lease_owner=None,
                     lease_expires=None)).rowcount)

    def finish(self, export_id: str, worker: str, result: ExportResult, expires_at: datetime | None) -> bool:
        """Record the outcome if `worker` still holds the lease; False otherwise (another took over)."""
        with self.engine.begin() as c:
            done = c.execute(exports.update().where(
                exports.c.id == export_id, exports.c.lease_owner == worker,
                exports.c.status == ExportStatus.PROCESSING.value,
            ).values(
                status=result.status.value, completed_at=result.completed_at or now(), expires_at=expires_at,
                total_events=result.total_events, file_size=result.file_size, events_done=result.total_events,
                bytes_done=result.file_size, destination_path=result.destination_path, error=result.error,
                lease_owner=None, lease_expires=None, dropped_properties=result.dropped_properties or None,
                duration_seconds=(result.completed_at - result.started_at).total_seconds()
                if result.completed_at and result.started_at else None,
            )).rowcount
            if done and result.status is ExportStatus.COMPLETED:
                c.execute(export_parts.delete().where(export_parts.c.export_id == export_id))
                resolve_incident(c, "export_failed", export_id, "a later run of the export completed")
            elif done and result.status is ExportStatus.FAILED:
                failed_for_good(c, export_id, result.error)
        return bool(done)

    def request_cancel(self, project: str, export_id: str) -> bool:
        """Ask for a pending or processing export to stop; a pending one is failed at once."""
        with self.engine.begin() as c:
            c.execute(exports.update().where(
                exports.c.id == export_id, exports.c.project == project,
                exports.c.status == ExportStatus.PENDING.value,
            ).values(status=ExportStatus.FAILED.value, error="cancelled", completed_at=now()))
            return bool(c.execute(exports.update().where(
                exports.c.id == export_id, exports.c.project == project,
            ).values(cancel_requested=True)).rowcount)

    def cancel_acknowledged(self, export_id: str, worker: str) -> None:
        with self.engine.begin() as c:
            c.execute(exports.update().where(exports.c.id == export_id, exports.c.lease_owner == worker).values(
                status=ExportStatus.FAILED.value, error="cancelled", completed_at=now(),
                lease_owner=None, lease_expires=None))

    def delete(self, project: str, export_id: str) -> None:
        with self.engine.begin() as c:
            if c.execute(exports.delete().where(exports.c.id == export_id, exports.c.project == project)).rowcount:
                c.execute(export_parts.delete().where(export_parts.c.export_id == export_id))
                resolve_incident(c, "export_failed", export_id, "the export was deleted")

    def retry(self, project: str, export_id: str, limit: int) -> bool:
        """Put a failed export back in the queue; False if it is not failed, or if its partitions
        are still being closed (see `reap`); Limited if `limit` of the project's exports are pending
        or running already."""
        failed = sa.and_(exports.c.id == export_id, exports.c.project == project,
                         exports.c.status == ExportStatus.FAILED.value,
                         ~sa.exists().where(export_parts.c.export_id == export_id))
        with self.writing() as c:
            if c.execute(sa.select(exports.c.id).where(failed)).first() is None:
                return False
            if not self.room(c, project, limit):
                raise at_limit(limit)
            return bool(c.execute(exports.update().where(failed).values(
                status=ExportStatus.PENDING.value, error=None, cancel_requested=False, completed_at=None,
                events_done=0, bytes_done=0, attempts=0, retry_at=None, parts=None,
                parts_done=None, privacy_version=None, dropped_properties=None)).rowcount)

    def expire(self, at: datetime) -> list[Job]:
        """Mark completed exports whose files expired before `at` as expired; returns them."""
        with self.engine.begin() as c:
            rows = c.execute(sa.select(exports).where(
                exports.c.status == ExportStatus.COMPLETED.value, exports.c.expires_at < at)).all()
            if rows:
                c.execute(exports.update().where(exports.c.id.in_([r.id for r in rows])).values(
                    status=ExportStatus.EXPIRED.value))
        return [Job.from_row(r) for r in rows]

    def totals(self) -> dict[str, float]:
        """Events and bytes exported, and the count and sum of finished exports' run times."""
        done = exports.c.status.in_([ExportStatus.COMPLETED.value, ExportStatus.EXPIRED.value])
        with self.engine.connect() as c:
            events, size, count, seconds = c.execute(sa.select(
                sa.func.coalesce(sa.func.sum(exports.c.total_events), 0),
                sa.func.coalesce(sa.func.sum(exports.c.file_size), 0),
                sa.func.count(exports.c.duration_seconds),
                sa.func.coalesce(sa.func.sum(exports.c.duration_seconds), 0.0),
            ).where(done)).one()
        return {"events": events, "bytes": size, "count": count, "seconds": seconds}

    def status_counts(self) -> dict[str, int]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(exports.c.status, sa.func.count()).group_by(exports.c.status)).all()
        return {status: n for status, n in rows}


def at_limit(limit: int) -> Limited:
    return Limited(f"{limit} exports of this project are already pending or running, the most at once "
                   "(max_concurrent_exports); retry once one has finished")


def failed_for_good(c: sa.Connection, export_id: str, error: str | None, attempts: int | None = None) -> None:
    """Open the export's `export_failed` incident (in the transaction that failed it): alerts go out once."""
    row = c.execute(sa.select(exports.c.project, exports.c.attempts).where(exports.c.id == export_id)).first()
    if row is not None:
        open_incident(c, row.project, "export_failed", export_id, error, attempts or row.attempts)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """A busy timeout waits for a writer instead of failing. (WAL, which lets the API read while a
    worker writes, is a property of the file: `migrate` sets it once, as setting it takes a lock.)"""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def died(attempts: int, max_attempts: int, worker: str | None) -> str:
    """The error of a run whose worker died on its last allowed attempt."""
    return (f"the worker running this export died (worker {worker} stopped renewing its lease: killed, out of "
            f"memory or crashed) on attempt {attempts}, and max_attempts is {max_attempts}; it is not run again, "
            f"as it may be what kills its workers: see that worker's log, then retry it")


MAX_SCHEDULES = 1_000
MAX_STREAMS = 100
"""Each stream takes a worker's slot (`streams_per_worker`) for as long as it runs."""
MAX_CONNECTIONS = 1_000


def check_room(c: sa.Connection, table: sa.Table, project: str, limit: int, what: str) -> None:
    """Raise Invalid when the project already holds `limit` rows of `table`: no client can grow the
    job store, or the work every scheduler tick and worker does, without bound."""
    held = c.execute(sa.select(sa.func.count()).select_from(table).where(table.c.project == project)).scalar_one()
    if held >= limit:
        raise Invalid(f"this project has {held:,} {what}; the most is {limit:,}: delete one first")
