"""The scheduler: turns schedules into export jobs, one per (schedule, window), exactly once.

Every worker process runs one; a lease in the job store lets only one act at a time, and another
takes over within a lease period when the leader dies. A tick queues the windows that became due in
one transaction with the schedule's new watermark (the end of its last queued window), so a crash
either queues them all or none, and the primary key on (schedule, window start) refuses a second run
of a window. A run's export id derives from schedule and window, so its files keep their names
when it runs again.

Schedules keep to their project's `max_concurrent_exports`: a window due when the project has no room
is recorded as a planned run (the watermark moves past it, so it is neither queued twice nor lost) and
gets its export at a later tick once exports finish, oldest window first, as a backfilled one does.
A stored schedule that the rules no longer allow (a cron of six fields, firing more often than
`min_schedule_interval_seconds`, or a codec its format no longer offers) is paused with the reason
when it comes due, never run.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, Callable
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import ValidationError

from ..checks import STORED, describe_errors
from ..errors import Invalid, NotFound
from ..enums import DateRange, ExportStatus, codec_problem
from ..models import ExportConfig, ScheduledExport, check_cron_interval, schedule_problem
from ..store.incidents import open_incident, resolve_incident
from ..store.jobs import ACTIVE, MAX_SCHEDULES, JobStore, aware, check_room, now
from ..store.tables import export_parts, exports, schedule_runs, schedules
from .windows import due, fires, floor, following, last_fire, windows

log = logging.getLogger(__name__)
RUN_NAMESPACE = uuid.UUID("0b4f3c52-6a53-4d0e-9f43-2f1f3a8f5e11")
LEASE = "scheduler"
FINISHED = (ExportStatus.COMPLETED.value, ExportStatus.FAILED.value, ExportStatus.EXPIRED.value)


def run_export_id(schedule_id: str, start: datetime) -> str:
    """The export id of a schedule's window: the same on every run of that window."""
    return str(uuid.uuid5(RUN_NAMESPACE, f"{schedule_id}/{start.isoformat()}"))


class Raced(Exception):
    """Another scheduler changed the schedule during this transaction."""


MAX_BACKFILL_WINDOWS = 10_000
"""Windows one backfill plans: more than a year of hourly ones (a range from year 1 listed 17M)."""


def stored(spec: dict) -> ScheduledExport:
    """A schedule as saved, even one the rules no longer allow (it is shown, and paused when due)."""
    return ScheduledExport.model_validate(spec, context=STORED)


class Scheduler:
    def __init__(self, jobs: JobStore, name: str, *, lease: timedelta = timedelta(seconds=30),
                 clock: Callable[[], datetime] = now, config: ExportConfig | None = None) -> None:
        self.jobs = jobs
        self.name = name
        self.lease = lease
        self.clock = clock
        self.config = config or ExportConfig()

    def run(self, stop: threading.Event, every: float = 1.0) -> None:
        """Tick until `stop` is set; errors are logged and the next tick tries again."""
        while not stop.wait(every):
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")

    def tick(self) -> int:
        """If this scheduler leads, queue every due window of every enabled schedule; returns how many."""
        t = self.clock()
        if not self.lead(t):
            return 0
        queued = 0
        with self.jobs.engine.connect() as c:
            ids = c.execute(sa.select(schedules.c.id).where(
                schedules.c.enabled, schedules.c.next_run <= t)).scalars().all()
        for schedule_id in ids:
            queued += self.advance(schedule_id, t)
        self.release_planned()
        self.pause_failing()
        return queued

    def lead(self, t: datetime) -> bool:
        """Take or renew the leader lease; False while another live scheduler holds it."""
        return self.jobs.take_lease(LEASE, self.name, t, t + self.lease)

    def advance(self, schedule_id: str, t: datetime) -> int:
        """Queue the windows schedule `schedule_id` owes at `t`, and set its next run."""
        try:
            return self._advance(schedule_id, t)
        except (Raced, sa.exc.IntegrityError):  # another scheduler queued these windows first: all rolled back
            return 0

    def _advance(self, schedule_id: str, t: datetime) -> int:
        with self.jobs.writing() as c:
            row = c.execute(sa.select(schedules).where(schedules.c.id == schedule_id)).first()
            if row is None or not row.enabled:
                return 0
            spec = stored(row.spec)
            problem = (schedule_problem(spec.schedule, self.config.min_schedule_interval_seconds)
                       or codec_problem(spec.format, spec.compression))
            if problem is not None:
                reason = f"paused: {problem}; PATCH the schedule to resume"
                c.execute(schedules.update().where(schedules.c.id == schedule_id).values(
                    enabled=False, paused_reason=reason))
                open_incident(c, row.project, "schedule_paused", schedule_id, reason)
                log.warning("schedule %s %s", schedule_id, reason)
                return 0
            tz = ZoneInfo(spec.timezone)
            fired = last_fire(spec.schedule, tz, t)
            previous = last_fire(spec.schedule, tz, fired - timedelta(microseconds=1))
            watermark = aware(row.watermark)
            owed = due(spec.date_range, tz, watermark, fired, previous, timedelta(seconds=spec.settle_seconds),
                       spec.catch_up == "latest")
            room = JobStore.room(c, row.project, self.config.max_concurrent_exports) if owed else 0
            queued = planned = 0
            for start, end in owed:  # beyond the project's room, windows wait as planned runs
                later = queued - planned >= room
                added = self.queue(c, row.project, spec, start, end, planned=later)
                queued += added
                planned += added if later else 0
            moved = c.execute(schedules.update().where(
                schedules.c.id == schedule_id,
                schedules.c.watermark.is_(None) if watermark is None else schedules.c.watermark == watermark,
            ).values(watermark=owed[-1][1] if owed else watermark, last_run=fired,
                     next_run=next(fires(spec.schedule, tz, t)))).rowcount
            if not moved:  # another scheduler advanced it meanwhile and queued these: roll back
                raise Raced(schedule_id)
            self.missed(c, row, spec, fired, len(owed))
        if queued:
            log.info("schedule %s queued %d window(s) up to %s (%d planned: the project's exports are at "
                     "max_concurrent_exports)", schedule_id, queued, owed[-1][1].isoformat(), planned)
        return queued

    @staticmethod
    def missed(c: sa.Connection, row: Any, spec: ScheduledExport, fired: datetime, owed: int) -> None:
        """Open the schedule's `schedule_missed` incident when this run comes after a later firing than
        the one it waited for (no scheduler ran at that time); an on-time run resolves it."""
        expected = aware(row.next_run)
        if expected is None or fired <= expected:
            resolve_incident(c, "schedule_missed", row.id, f"ran on time at {fired:%Y-%m-%dT%H:%M:%SZ}")
            return
        done = ("its missed windows were skipped (catch_up latest)" if spec.catch_up == "latest"
                else f"{owed} window(s) were queued late (catch_up all)")
        open_incident(c, row.project, "schedule_missed", row.id,
                      f"missed its run at {expected:%Y-%m-%dT%H:%M:%SZ}: no scheduler was running until "
                      f"{fired:%Y-%m-%dT%H:%M:%SZ} or later; {done}")

    @staticmethod
    def queue(c: sa.Connection, project: str, spec: ScheduledExport, start: datetime, end: datetime,
              planned: bool = False) -> int:
        """Insert the run of [start, end) and its export job (or, `planned`, the run only: its job is
        created once the schedule and its project have room); 0 if that window has a run already."""
        exists = c.execute(sa.select(schedule_runs.c.export_id).where(
            schedule_runs.c.schedule_id == spec.id, schedule_runs.c.window_start == start)).first()
        if exists is not None:
            return 0
        export_id = run_export_id(spec.id, start)
        c.execute(schedule_runs.insert().values(schedule_id=spec.id, window_start=start, window_end=end,
                                                export_id=export_id, planned=planned, created_at=now()))
        if not planned:
            JobStore.insert(c, project, spec.request(export_id, start, end))
        return 1

    def release_planned(self) -> None:
        """Create the jobs of planned runs, oldest window first, keeping at most `backfill_concurrency`
        of each schedule's runs, and `max_concurrent_exports` of its project's exports, pending or
        running; each schedule in a transaction of its own, holding its project's queue."""
        with self.jobs.engine.connect() as c:
            ids = c.execute(sa.select(schedule_runs.c.schedule_id).where(schedule_runs.c.planned)
                            .distinct()).scalars().all()
        for schedule_id in ids:
            with self.jobs.writing() as c:
                row = c.execute(sa.select(schedules).where(schedules.c.id == schedule_id)).first()
                if row is None or not row.enabled:
                    continue
                spec = stored(row.spec)
                room = JobStore.room(c, row.project, self.config.max_concurrent_exports)
                running = c.execute(sa.select(sa.func.count()).select_from(
                    schedule_runs.join(exports, exports.c.id == schedule_runs.c.export_id)).where(
                    schedule_runs.c.schedule_id == schedule_id, exports.c.status.in_(ACTIVE))).scalar_one()
                room = min(room, spec.backfill_concurrency - running)
                if room <= 0:
                    continue
                for run in c.execute(sa.select(schedule_runs).where(
                        schedule_runs.c.schedule_id == schedule_id, schedule_runs.c.planned)
                        .order_by(schedule_runs.c.window_start).limit(room)).all():
                    JobStore.insert(c, row.project, spec.request(run.export_id, aware(run.window_start),
                                                                 aware(run.window_end)))
                    c.execute(schedule_runs.update().where(
                        schedule_runs.c.schedule_id == schedule_id,
                        schedule_runs.c.window_start == run.window_start).values(planned=False))

    def pause_failing(self) -> None:
        """Pause each enabled schedule whose last `max_failures` finished runs all failed, saying why."""
        with self.jobs.engine.begin() as c:
            for row in c.execute(sa.select(schedules).where(schedules.c.enabled)).all():
                limit = stored(row.spec).max_failures
                recent = c.execute(
                    sa.select(exports.c.status, exports.c.error)
                    .select_from(schedule_runs.join(exports, exports.c.id == schedule_runs.c.export_id))
                    .where(schedule_runs.c.schedule_id == row.id, exports.c.status.in_(FINISHED))
                    .order_by(schedule_runs.c.window_start.desc()).limit(limit)).all()
                if len(recent) == limit and all(r.status == ExportStatus.FAILED.value for r in recent):
                    reason = f"paused after {limit} consecutive failed runs; last error: {recent[0].error}"
                    c.execute(schedules.update().where(schedules.c.id == row.id).values(
                        enabled=False, paused_reason=reason))
                    open_incident(c, row.project, "schedule_paused", row.id, reason, limit)
                    log.warning("schedule %s %s", row.id, reason)


def backfill(jobs: JobStore, project: str, schedule_id: str, start: datetime, end: datetime,
             force: bool = False) -> dict[str, int]:
    """Plan the schedule's windows overlapping [start, end): new ones, failed or expired ones again,
    and with `force` completed ones too (same export id, so their files are replaced, never
    duplicated). The scheduler releases them `backfill_concurrency` at a time."""
    with jobs.engine.begin() as c:
        row = c.execute(sa.select(schedules).where(schedules.c.id == schedule_id,
                                                   schedules.c.project == project)).first()
        if row is None:
            raise NotFound(f"no schedule {schedule_id}")
        spec = stored(row.spec)
        tz = ZoneInfo(spec.timezone)
        if spec.date_range is DateRange.SINCE_LAST_RUN:
            spans = [(start, end)]
        else:  # every window that overlaps [start, end)
            last = floor(end, spec.date_range, tz)
            ahead = windows(spec.date_range, tz, start, end if last == end else following(last, spec.date_range, tz))
            spans = list(islice(ahead, MAX_BACKFILL_WINDOWS + 1))
            if len(spans) > MAX_BACKFILL_WINDOWS:
                raise Invalid(f"the range holds more than {MAX_BACKFILL_WINDOWS:,} {spec.date_range.value} windows; "
                              "backfill at most that many at a time")
        counts = {"queued": 0, "skipped": 0}
        for s, e in spans:
            run = c.execute(sa.select(schedule_runs.c.export_id, schedule_runs.c.planned, exports.c.status)
                            .select_from(schedule_runs.outerjoin(exports, exports.c.id == schedule_runs.c.export_id))
                            .where(schedule_runs.c.schedule_id == spec.id, schedule_runs.c.window_start == s)).first()
            active = (ExportStatus.PENDING.value, ExportStatus.PROCESSING.value)
            if run is not None and (run.planned or run.status in active
                                    or (run.status == ExportStatus.COMPLETED.value and not force)):
                counts["skipped"] += 1
                continue
            if run is not None:
                c.execute(exports.delete().where(exports.c.id == run.export_id))
                c.execute(export_parts.delete().where(export_parts.c.export_id == run.export_id))
                c.execute(schedule_runs.delete().where(schedule_runs.c.schedule_id == spec.id,
                                                       schedule_runs.c.window_start == s))
            counts["queued"] += Scheduler.queue(c, project, spec, s, e, planned=True)
    return counts


def run_history(jobs: JobStore, schedule_id: str, limit: int, offset: int) -> list[dict[str, Any]]:
    """The schedule's runs, newest window first, with their exports' state."""
    with jobs.engine.connect() as c:
        rows = c.execute(
            sa.select(schedule_runs, exports.c.status, exports.c.total_events, exports.c.events_done,
                      exports.c.file_size, exports.c.bytes_done, exports.c.error)
            .select_from(schedule_runs.outerjoin(exports, exports.c.id == schedule_runs.c.export_id))
            .where(schedule_runs.c.schedule_id == schedule_id)
            .order_by(schedule_runs.c.window_start.desc()).limit(limit).offset(offset)).all()
    return [{"window_start": aware(r.window_start), "window_end": aware(r.window_end), "export_id": r.export_id,
             "status": "planned" if r.planned else r.status or "deleted",
             "events": r.total_events if r.total_events is not None else r.events_done,
             "bytes": r.file_size if r.file_size is not None else r.bytes_done, "error": r.error,
             "created_at": aware(r.created_at)} for r in rows]


class Schedules:
    """Schedules per project in the job store."""

    FIXED = ("id", "date_range", "timezone", "time_field")
    """Fields a schedule keeps for life: changing them would break the tiling of its windows."""

    def __init__(self, jobs: JobStore, config: ExportConfig | None = None) -> None:
        self.jobs = jobs
        self.config = config or ExportConfig()

    def create(self, project: str, spec: ScheduledExport, t: datetime) -> dict[str, Any]:
        """Store `spec`; Invalid if its cron fires more often than `min_schedule_interval_seconds`."""
        self.check(spec)
        spec.next_run = next(fires(spec.schedule, ZoneInfo(spec.timezone), t))
        with self.jobs.engine.begin() as c:
            check_room(c, schedules, project, MAX_SCHEDULES, "schedules")
            c.execute(schedules.insert().values(id=spec.id, project=project, spec=spec.model_dump(mode="json"),
                                                enabled=spec.enabled, next_run=spec.next_run, created_at=t))
        return self.get(project, spec.id)

    def check(self, spec: ScheduledExport) -> None:
        """Invalid unless `spec`'s cron keeps to this server's `min_schedule_interval_seconds`."""
        try:
            check_cron_interval(spec.schedule, self.config.min_schedule_interval_seconds)
        except ValueError as exc:
            raise Invalid(f"schedule: {exc}") from None

    def get(self, project: str, schedule_id: str) -> dict[str, Any] | None:
        with self.jobs.engine.connect() as c:
            row = c.execute(sa.select(schedules).where(schedules.c.id == schedule_id,
                                                       schedules.c.project == project)).first()
        return view(row) if row is not None else None

    def list(self, project: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        with self.jobs.engine.connect() as c:
            total = c.execute(sa.select(sa.func.count()).where(schedules.c.project == project)).scalar_one()
            rows = c.execute(sa.select(schedules).where(schedules.c.project == project)
                             .order_by(schedules.c.created_at.desc(), schedules.c.id).limit(limit).offset(offset)).all()
        return [view(r) for r in rows], total

    def update(self, project: str, schedule_id: str, changes: dict[str, Any], t: datetime) -> dict[str, Any] | None:
        """Apply `changes` (validated as a whole schedule); the cron or enabled flag moves next_run."""
        fixed = [k for k in changes if k in self.FIXED]
        if fixed:
            raise Invalid(f"{fixed[0]} cannot change on an existing schedule (its windows would no longer tile); "
                          "create a new schedule")
        with self.jobs.engine.begin() as c:
            row = c.execute(sa.select(schedules).where(schedules.c.id == schedule_id,
                                                       schedules.c.project == project)).first()
            if row is None:
                return None
            try:
                spec = ScheduledExport.model_validate({**row.spec, **changes})
            except ValidationError as exc:  # a stored cron the rules no longer allow must change too
                raise Invalid(describe_errors(exc.errors())) from None
            self.check(spec)
            values: dict[str, Any] = {"spec": spec.model_dump(mode="json"), "enabled": spec.enabled}
            if "schedule" in changes or (spec.enabled and not row.enabled):
                values["next_run"] = next(fires(spec.schedule, ZoneInfo(spec.timezone), t))
            if spec.enabled:
                values["paused_reason"] = None
                if not row.enabled:
                    resolve_incident(c, "schedule_paused", schedule_id, "resumed")
            c.execute(schedules.update().where(schedules.c.id == schedule_id).values(**values))
        return self.get(project, schedule_id)

    def pause(self, project: str, schedule_id: str, reason: str) -> dict[str, Any] | None:
        with self.jobs.engine.begin() as c:
            c.execute(schedules.update().where(schedules.c.id == schedule_id, schedules.c.project == project)
                      .values(enabled=False, paused_reason=reason))
        return self.get(project, schedule_id)

    def delete(self, project: str, schedule_id: str) -> bool:
        """Remove the schedule and its run history; its exports stay, as exports."""
        with self.jobs.engine.begin() as c:
            gone = c.execute(schedules.delete().where(schedules.c.id == schedule_id,
                                                      schedules.c.project == project)).rowcount
            if gone:
                c.execute(schedule_runs.delete().where(schedule_runs.c.schedule_id == schedule_id))
                for kind in ("schedule_paused", "schedule_missed"):
                    resolve_incident(c, kind, schedule_id, "the schedule was deleted")
        return bool(gone)


def view(row: Any) -> dict[str, Any]:
    """A schedule as the API shows it: the spec with its live state."""
    spec = dict(row.spec)
    spec.update(enabled=row.enabled, last_run=aware(row.last_run), next_run=aware(row.next_run) if row.enabled else None)
    return {"schedule": spec, "status": "active" if row.enabled else "paused", "paused_reason": row.paused_reason,
            "exported_until": aware(row.watermark)}
