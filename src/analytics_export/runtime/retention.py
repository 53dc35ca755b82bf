"""Export before deletion: each whole UTC day older than a project's retention is archived (Parquet,
`date=YYYY-MM-DD/` folders), read back and checked (bytes, sha256, row count in the footer), and only
then deleted from the event store, in a transaction that commits only if it deletes exactly the
events the archive read.

Every step is recorded in `retention_windows`, so a run killed anywhere resumes without loss or a
second archive: an archive is written under a name fixed by its day and generation (a rerun
overwrites it), and a window's events are those stored before its watermark, so events that arrive
later for the same day wait for the next generation instead of being deleted unarchived.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from contextlib import closing
from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from croniter import croniter

from ..checks import STORED
from ..config import Settings
from ..connections import Sealer, checked_secrets
from ..destinations import Destination, Placement, destination_for
from ..destinations.local import LocalDestination
from ..destinations.specs import FileLayout
from ..errors import ExportError, Invalid, Storage
from ..enums import ExportFormat
from ..models import ExportRequest, RetentionPolicy, check_cron_interval, schedule_problem
from ..pipeline.files import write_files
from ..sources import IDS, EventQuery
from ..sources.stores import open_store
from ..store.incidents import open_incident, resolve_incident
from ..store.jobs import JobStore, aware, now
from ..store.policies import PrivacyStore
from ..store.tables import retention_policies, retention_windows

log = logging.getLogger(__name__)
RETRY_BUSY = timedelta(minutes=5)
NAMESPACE = uuid.UUID("6f1b8a52-3f3c-4d8e-9a57-2f5d7d0c9e11")
TAIL = 16 << 20
"""The most of an archive's end kept while it is read back: enough for its Parquet footer."""


class Interrupted(BaseException):
    """Raised by a test's checkpoint to stop a run between two steps, as a kill would."""


def cutoff(policy: RetentionPolicy, at: datetime) -> datetime:
    """Midnight UTC `policy.days` days before `at`'s day: days before it are archived and deleted."""
    return datetime.combine(at.astimezone(timezone.utc).date(), time.min, timezone.utc) - timedelta(days=policy.days)


class Retention:
    """Runs one project's retention policy over its event store."""

    def __init__(self, settings: Settings, jobs: JobStore, project: str,
                 checkpoint: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.jobs = jobs
        self.project = project
        self.checkpoint = checkpoint or (lambda step: None)
        self.policies = PrivacyStore(jobs, Sealer(settings.signing_key()))

    def run(self, policy: RetentionPolicy, *, dry_run: bool = False, at: datetime | None = None) -> list[dict]:
        """Archive and delete every day before the cutoff; one report per day. A dry run only reads.
        One run of a project at a time (a lease in the job store): two could archive a day anew after
        the other deleted it. Events are read with the store opened read-only; only each day's delete
        takes the writer's place, briefly, so ingests and exports go on meanwhile."""
        at = at or now()
        limit = cutoff(policy, at)
        with closing(open_store(self.settings)) as store:
            if not hasattr(store, "delete_window"):
                raise Invalid("retention deletes events from DuckDB or PostgreSQL stores; on ClickHouse use a "
                              "table TTL")
            counts = dict(store.day_counts(self.project, limit))
        unfinished = {row.day: row for row in self._rows(status=("archiving", "archived"))}
        days = sorted(set(counts) | set(unfinished))
        if dry_run:
            return [{"day": day.isoformat(), "events": counts.get(day, 0),
                     "action": "delete the verified archive's events" if day in unfinished and
                     unfinished[day].status == "archived" else "archive, verify, delete"} for day in days]
        lease, owner = f"retention:{self.project}", uuid.uuid4().hex
        ttl = timedelta(seconds=self.settings.retention_lease_seconds)
        if not self.jobs.take_lease(lease, owner, now(), now() + ttl):
            raise Storage(f"a retention run of project {self.project!r} is in progress; this one did nothing")
        lost, done = threading.Event(), threading.Event()

        def renew() -> None:  # a killed run's lease lapses within `ttl`; a live one keeps it
            while not done.wait(ttl.total_seconds() / 3):
                if not self.jobs.take_lease(lease, owner, now(), now() + ttl):
                    lost.set()
                    return

        beat = threading.Thread(target=renew, name="retention-lease", daemon=True)
        beat.start()
        try:
            reports = []
            for day in days:
                if lost.is_set():
                    raise Storage(f"the retention run of project {self.project!r} lost its lease; stopped")
                reports.append(self._window(policy, day, unfinished.get(day), counts.get(day, 0)))
            self.alert(reports)
            return reports
        finally:
            done.set()
            beat.join()
            self.jobs.drop_lease(lease, owner)

    def alert(self, reports: list[dict]) -> None:
        """Open the project's `retention_failed` incident when an archive failed verification; a run
        without any error resolves it (a worker's run or the CLI's alike)."""
        unverified = [r for r in reports if r.get("verification") == "failed"]
        with self.jobs.engine.begin() as c:
            if unverified:
                open_incident(c, self.project, "retention_failed", self.project,
                              "; ".join(f"{r['day']}: {r['error']}" for r in unverified), len(unverified))
            elif not any("error" in r for r in reports):
                resolve_incident(c, "retention_failed", self.project, "a later run archived, verified and deleted")

    def _window(self, policy: RetentionPolicy, day: date, row: Any, events: int) -> dict:
        """Take one day through archive -> verify -> delete, from wherever an earlier run stopped."""
        report = {"day": day.isoformat(), "events": events}
        try:
            if row is None:
                if not events:
                    return {**report, "action": "nothing stored"}
                row = self._start(day)
            for _ in range(2):
                if row.status == "archiving":
                    row = self._archive(policy, row)
                    if row is None:
                        return {**report, "action": "nothing stored before the run began"}
                    self.checkpoint("archived")
                try:
                    self._verify(policy, row)
                except ExportError:
                    report["verification"] = "failed"
                    raise
                self.checkpoint("verified")
                with closing(open_store(self.settings, read_only=False)) as store:
                    found = store.delete_window(self.project, *window(day), aware(row.watermark), row.read)
                if found in (row.read, 0):  # 0: deleted by a run killed before it could record so
                    self._update(row, "archived", status="deleted", error=None)
                    self.checkpoint("deleted")
                    return {**report, "action": "archived and deleted", "archived": row.events, "uri": row.uri}
                # Someone changed the window's events since it was archived: archive it again.
                row = self._update(row, "archived", status="archiving",
                                   error=f"{found} events in the window, {row.read} archived; archived again")
            raise Storage(f"the events of {day} keep changing; left in place")
        except ExportError as exc:
            if row is not None:
                with self.jobs.engine.begin() as c:
                    c.execute(retention_windows.update().where(*self._key(row)).values(error=str(exc), updated_at=now()))
            return {**report, "action": "failed, events left in place", "error": str(exc)}

    def _start(self, day: date) -> Any:
        last = self._rows(day=day)
        generation = (last[-1].generation + 1) if last else 1
        with self.jobs.engine.begin() as c:
            c.execute(retention_windows.insert().values(
                project=self.project, day=day, generation=generation, status="archiving", watermark=now(),
                updated_at=now()))
        return self._rows(day=day)[-1]

    def request(self, policy: RetentionPolicy, row: Any) -> ExportRequest:
        start, end = window(row.day)
        destination = policy.destination
        if isinstance(destination, FileLayout):
            destination = destination.model_copy(update={"path_template": "date={year}-{month}-{day}"})
        return ExportRequest(id=str(uuid.uuid5(NAMESPACE, f"{self.project}/{row.day}/{row.generation}")),
                             start_date=start, end_date=end, format=ExportFormat.PARQUET,
                             compression=policy.compression, destination=destination)

    def destination(self, request: ExportRequest) -> Destination:
        if request.destination.type == "download":
            return LocalDestination(self.settings.project_archive_dir(self.project) / f"date={request.start_date:%Y-%m-%d}")
        secrets = checked_secrets(self.settings, self.jobs, self.project, request.destination)
        return destination_for(Placement.for_export(request, self.project, self.settings, secrets))

    @staticmethod
    def name(row: Any) -> str:
        return f"events-g{row.generation:03d}.parquet"

    def _archive(self, policy: RetentionPolicy, row: Any) -> Any:
        """Write the day's events stored before the watermark as one Parquet file, with their uuid and
        inserted_at so the archive can be ingested back (privacy applied). `read` counts the window's
        events, suppressed users' too: the delete must remove exactly that many. None, and the window
        forgotten, when nothing was stored before the watermark."""
        request = self.request(policy, row)
        privacy = self.policies.for_export(self.project, request)
        watermark = aware(row.watermark)
        with closing(open_store(self.settings)) as store:
            read = store.count(EventQuery(self.project, *window(row.day), inserted_before=watermark))
            if not read:
                with self.jobs.engine.begin() as c:
                    c.execute(retention_windows.delete().where(*self._key(row), retention_windows.c.status == "archiving"))
                return None
            destination = self.destination(request)
            try:
                files, _ = write_files(request, store, destination, project=self.project, name=lambda _: self.name(row),
                                       digest=True, privacy=privacy, batch_size=self.settings.export.batch_size,
                                       engine=self.settings.export.engine_writes,
                                       scope=lambda q: replace(q, inserted_before=watermark, ids=IDS))
                uri = destination.finish([files[0]["uri"]], lambda: False)
            finally:
                destination.close()
        entry = files[0]
        return self._update(row, "archiving", events=entry["events"], read=read, bytes=entry["bytes"],
                            sha256=entry["sha256"], uri=uri, status="archived", privacy_version=privacy.version,
                            error=None)

    def _verify(self, policy: RetentionPolicy, row: Any) -> None:
        """Read the archive back: the same bytes (size, sha256) and as many rows as were written."""
        request = self.request(policy, row)
        destination = self.destination(request)
        try:
            digest, size, tail = hashlib.sha256(), 0, bytearray()
            for chunk in destination.read(self.name(row)):
                digest.update(chunk)
                size += len(chunk)
                tail = (tail + chunk)[-TAIL:]
        finally:
            destination.close()
        if size != row.bytes or digest.hexdigest() != row.sha256:
            raise Storage(f"the archive {row.uri} reads back as {size} bytes with another checksum than written")
        rows = footer_rows(bytes(tail))
        if rows != row.events:
            raise Storage(f"the archive {row.uri} holds {rows} rows; {row.events} were written")

    def _rows(self, *, day: date | None = None, status: tuple[str, ...] | None = None) -> list[Any]:
        query = sa.select(retention_windows).where(retention_windows.c.project == self.project)
        if day is not None:
            query = query.where(retention_windows.c.day == day)
        if status is not None:
            query = query.where(retention_windows.c.status.in_(status))
        with self.jobs.engine.connect() as c:
            return list(c.execute(query.order_by(retention_windows.c.day, retention_windows.c.generation)))

    @staticmethod
    def _key(row: Any) -> tuple:
        return (retention_windows.c.project == row.project, retention_windows.c.day == row.day,
                retention_windows.c.generation == row.generation)

    def _update(self, row: Any, expected: str | None, **values: Any) -> Any:
        """Record a step of `row`'s window, only from the `expected` status (None: any); Storage if
        the window moved on meanwhile (another run got there first)."""
        query = retention_windows.update().where(*self._key(row))
        if expected is not None:
            query = query.where(retention_windows.c.status == expected)
        with self.jobs.engine.begin() as c:
            if not c.execute(query.values(updated_at=now(), **values)).rowcount:
                raise Storage(f"the retention window of {row.day} changed meanwhile; left to the run that changed it")
        return next(r for r in self._rows(day=row.day) if r.generation == row.generation)

    def history(self, limit: int = 100) -> list[dict]:
        with self.jobs.engine.connect() as c:
            rows = c.execute(sa.select(retention_windows).where(retention_windows.c.project == self.project)
                             .order_by(retention_windows.c.day.desc(), retention_windows.c.generation.desc())
                             .limit(limit))
            return [{**row._mapping, "day": row.day.isoformat(), "watermark": aware(row.watermark),
                     "updated_at": aware(row.updated_at)} for row in rows]


def window(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, timezone.utc)
    return start, start + timedelta(days=1)


def footer_rows(tail: bytes) -> int:
    """Row count in the footer of the Parquet file that `tail` ends."""
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        raise Storage("the archive is not a complete Parquet file")
    length = int.from_bytes(tail[-8:-4], "little")
    if length + 8 > len(tail):
        raise Storage("the archive's Parquet footer is larger than expected")
    import pyarrow as pa  # here: pyarrow.parquet loads its file systems, 10 MB of every idle worker
    import pyarrow.parquet as pq

    return pq.read_metadata(pa.BufferReader(tail[-(length + 8):])).num_rows


# --- policies in the job store, and the runs they schedule ----------------------------------------

def set_policy(jobs: JobStore, project: str, policy: RetentionPolicy | None, min_interval_seconds: float) -> None:
    """Store (or with None, remove) the project's retention policy; its next run follows its cron.
    Invalid if the cron fires more often than `min_interval_seconds` (min_schedule_interval_seconds)."""
    if policy is not None:
        try:
            check_cron_interval(policy.schedule, min_interval_seconds)
        except ValueError as exc:
            raise Invalid(f"schedule: {exc}") from None
    with jobs.engine.begin() as c:
        c.execute(retention_policies.delete().where(retention_policies.c.project == project))
        if policy is not None:
            c.execute(retention_policies.insert().values(
                project=project, spec=policy.model_dump(mode="json"), next_run=next_run(policy, now()),
                created_at=now()))


def get_policy(jobs: JobStore, project: str) -> tuple[RetentionPolicy, Any] | None:
    with jobs.engine.connect() as c:
        row = c.execute(sa.select(retention_policies).where(retention_policies.c.project == project)).first()
    return None if row is None else (RetentionPolicy.model_validate(row.spec, context=STORED), row)


def next_run(policy: RetentionPolicy, after: datetime) -> datetime:
    return croniter(policy.schedule, after).get_next(datetime).astimezone(timezone.utc)


def run_now(jobs: JobStore, project: str) -> bool:
    """Make the project's policy due at once (a worker runs it); False if it has none."""
    with jobs.engine.begin() as c:
        return bool(c.execute(retention_policies.update().where(retention_policies.c.project == project)
                              .values(next_run=now())).rowcount)


def due(jobs: JobStore, at: datetime, min_interval_seconds: float) -> Iterator[tuple[str, RetentionPolicy]]:
    """Claim each due, enabled policy (one conditional update: one worker wins) and yield it. A policy
    saved under rules that no longer allow its cron stops (no next run) with the reason as its error."""
    with jobs.engine.connect() as c:
        rows = list(c.execute(sa.select(retention_policies).where(retention_policies.c.next_run <= at)))
    for row in rows:
        policy = RetentionPolicy.model_validate(row.spec, context=STORED)
        problem = schedule_problem(policy.schedule, min_interval_seconds)
        values = {"next_run": next_run(policy, at)} if problem is None else {
            "next_run": None, "last_error": f"stopped: {problem}; PUT the policy with a new schedule to resume"}
        with jobs.engine.begin() as c:
            won = c.execute(retention_policies.update().where(
                retention_policies.c.project == row.project, retention_policies.c.next_run == row.next_run,
            ).values(**values)).rowcount
        if won and policy.enabled and problem is None:
            yield row.project, policy


def run_due(settings: Settings, jobs: JobStore, at: datetime | None = None) -> int:
    """Run every due retention policy; returns how many ran. What a run could not do is recorded on
    its policy (`last_error`); a store busy with other work is tried again in a few minutes."""
    ran = 0
    at = at or now()
    for project, policy in due(jobs, at, settings.export.min_schedule_interval_seconds):
        values: dict[str, Any] = {"last_run": at}
        try:
            reports = Retention(settings, jobs, project).run(policy)
            values["last_error"] = "; ".join(f"{r['day']}: {r['error']}" for r in reports if "error" in r)[:2000] or None
        except ExportError as exc:
            values["last_error"] = str(exc)[:2000]
            if isinstance(exc, Storage):
                values["next_run"] = now() + RETRY_BUSY
        except Exception as exc:  # a bug: record it, keep the worker alive
            log.exception("retention of project %s failed", project)
            values["last_error"] = f"internal error ({type(exc).__name__}); see the worker log"
        with jobs.engine.begin() as c:
            c.execute(retention_policies.update().where(retention_policies.c.project == project).values(**values))
        ran += 1
    return ran
