"""Streams in the job store: spec, status, the cursor checkpointed after each acknowledged batch, and
the lease of the worker running each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..checks import STORED
from ..streaming.spec import StreamSpec
from .incidents import open_incident, resolve_incident
from .jobs import MAX_STREAMS, JobStore, aware, check_room, now
from .tables import streams

RUNNING = ("active", "failing")


@dataclass
class Stream:
    """A stream as stored."""

    id: str
    project: str
    spec: StreamSpec
    status: str
    cursor_at: datetime
    cursor_uuid: str
    delivered_events: int
    delivered_batches: int
    last_delivered_at: datetime | None
    lag_seconds: float | None
    last_error: str | None
    failing_since: datetime | None
    lease_owner: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Stream:
        m = row._mapping
        return cls(id=m["id"], project=m["project"], spec=StreamSpec.model_validate(m["spec"], context=STORED), status=m["status"],
                   cursor_at=aware(m["cursor_at"]), cursor_uuid=m["cursor_uuid"],
                   delivered_events=m["delivered_events"], delivered_batches=m["delivered_batches"],
                   last_delivered_at=aware(m["last_delivered_at"]), lag_seconds=m["lag_seconds"],
                   last_error=m["last_error"], failing_since=aware(m["failing_since"]),
                   lease_owner=m["lease_owner"] if aware(m["lease_expires"]) and aware(m["lease_expires"]) > now()
                   else None, created_at=aware(m["created_at"]))


class StreamStore:
    def __init__(self, jobs: JobStore) -> None:
        self.engine = jobs.engine

    def check_room(self, project: str) -> None:
        """Invalid when the project has MAX_STREAMS streams already (checked again by `create`)."""
        with self.engine.connect() as c:
            check_room(c, streams, project, MAX_STREAMS, "streams")

    def create(self, project: str, spec: StreamSpec) -> Stream:
        at = now()
        with self.engine.begin() as c:
            check_room(c, streams, project, MAX_STREAMS, "streams")
            c.execute(streams.insert().values(id=spec.id, project=project, spec=spec.model_dump(mode="json"),
                                              status="active", cursor_at=spec.start or at, cursor_uuid="",
                                              created_at=at, updated_at=at))
        return self.get(project, spec.id)

    def get(self, project: str, stream_id: str) -> Stream | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(streams).where(streams.c.id == stream_id, streams.c.project == project)).first()
        return Stream.from_row(row) if row else None

    def list(self, project: str, limit: int, offset: int) -> tuple[list[Stream], int]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(streams).where(streams.c.project == project)
                             .order_by(streams.c.created_at.desc()).limit(limit).offset(offset)).all()
            total = c.execute(sa.select(sa.func.count()).select_from(streams)
                              .where(streams.c.project == project)).scalar_one()
        return [Stream.from_row(r) for r in rows], total

    def all(self) -> list[Stream]:
        """Every project's streams (for metrics)."""
        with self.engine.connect() as c:
            return [Stream.from_row(r) for r in c.execute(sa.select(streams).order_by(streams.c.created_at))]

    def update(self, project: str, stream_id: str, spec: StreamSpec) -> bool:
        with self.engine.begin() as c:
            return bool(c.execute(streams.update().where(streams.c.id == stream_id, streams.c.project == project)
                                  .values(spec=spec.model_dump(mode="json"), updated_at=now())).rowcount)

    def set_status(self, project: str, stream_id: str, paused: bool) -> bool:
        """Pause (the running worker stops at its next heartbeat), or resume from the checkpoint; either
        closes a `stream_failing` incident (its failing time starts again)."""
        with self.engine.begin() as c:
            changed = bool(c.execute(streams.update().where(streams.c.id == stream_id, streams.c.project == project)
                                     .values(status="paused" if paused else "active", failing_since=None,
                                             updated_at=now())).rowcount)
            if changed:
                resolve_incident(c, "stream_failing", stream_id, "paused" if paused else "resumed")
            return changed

    def delete(self, project: str, stream_id: str) -> bool:
        with self.engine.begin() as c:
            gone = bool(c.execute(streams.delete().where(streams.c.id == stream_id,
                                                         streams.c.project == project)).rowcount)
            if gone:
                resolve_incident(c, "stream_failing", stream_id, "the stream was deleted")
            return gone

    def claim(self, worker: str, lease: timedelta, limit: int) -> list[Stream]:
        """Take up to `limit` running streams no live worker holds (a dead one's lease expired)."""
        at = now()
        with self.engine.connect() as c:
            ids = c.execute(sa.select(streams.c.id).where(
                streams.c.status.in_(RUNNING),
                sa.or_(streams.c.lease_owner.is_(None), streams.c.lease_expires < at),
            ).order_by(streams.c.created_at).limit(limit)).scalars().all()
        claimed = []
        for stream_id in ids:
            with self.engine.begin() as c:
                won = c.execute(streams.update().where(
                    streams.c.id == stream_id, streams.c.status.in_(RUNNING),
                    sa.or_(streams.c.lease_owner.is_(None), streams.c.lease_expires < at),
                ).values(lease_owner=worker, lease_expires=at + lease)).rowcount
                if won:
                    claimed.append(Stream.from_row(c.execute(sa.select(streams).where(streams.c.id == stream_id)).first()))
        return claimed

    def heartbeat(self, stream_id: str, worker: str, lease: timedelta, lag_seconds: float | None) -> Stream | None:
        """Extend the lease; the stream as stored, or None when it is no longer this worker's to run
        (paused, deleted, or taken over)."""
        with self.engine.begin() as c:
            kept = c.execute(streams.update().where(
                streams.c.id == stream_id, streams.c.lease_owner == worker, streams.c.status.in_(RUNNING),
            ).values(lease_expires=now() + lease, lag_seconds=lag_seconds)).rowcount
            row = c.execute(sa.select(streams).where(streams.c.id == stream_id)).first() if kept else None
        return Stream.from_row(row) if row else None

    def checkpoint(self, stream_id: str, worker: str, cursor: tuple[datetime, str], events: int,
                   recovered: bool = False) -> bool:
        """Record a batch the destination acknowledged: the cursor moves past it. False if the lease
        was lost (the batch will be sent again by the new owner: at least once). `recovered`: sends had
        failed before this one, so the stream's `stream_failing` incident, if open, is resolved (one
        indexed lookup, only then)."""
        with self.engine.begin() as c:
            if recovered:
                resolve_incident(c, "stream_failing", stream_id, "delivering again")
            return bool(c.execute(streams.update().where(
                streams.c.id == stream_id, streams.c.lease_owner == worker,
            ).values(cursor_at=cursor[0], cursor_uuid=cursor[1],
                     delivered_events=streams.c.delivered_events + events,
                     delivered_batches=streams.c.delivered_batches + 1, last_delivered_at=now(),
                     status=sa.case((streams.c.status == "failing", "active"), else_=streams.c.status),
                     failing_since=None, last_error=None, updated_at=now())).rowcount)

    def advance(self, stream_id: str, worker: str, cursor: tuple[datetime, str]) -> None:
        """Move the cursor past events read that the stream does not select (nothing to deliver)."""
        with self.engine.begin() as c:
            c.execute(streams.update().where(streams.c.id == stream_id, streams.c.lease_owner == worker)
                      .values(cursor_at=cursor[0], cursor_uuid=cursor[1]))

    def failed(self, stream_id: str, worker: str, error: str, failing_after: float) -> None:
        """Record a failed send; failing for longer than `failing_after` seconds shows `failing`."""
        at = now()
        with self.engine.begin() as c:
            row = c.execute(sa.select(streams.c.failing_since, streams.c.project, streams.c.status).where(
                streams.c.id == stream_id, streams.c.lease_owner == worker)).first()
            if row is None:
                return
            since = aware(row.failing_since) or at
            status = "failing" if (at - since).total_seconds() >= failing_after else None
            values: dict[str, Any] = {"last_error": error[:2000], "failing_since": since, "updated_at": at}
            query = streams.update().where(streams.c.id == stream_id, streams.c.lease_owner == worker)
            if status:
                query = query.where(streams.c.status.in_(RUNNING))
                values["status"] = status
            if c.execute(query.values(**values)).rowcount and status and row.status != "failing":
                open_incident(c, row.project, "stream_failing", stream_id, error, since=since)

    def release(self, stream_id: str, worker: str) -> None:
        with self.engine.begin() as c:
            c.execute(streams.update().where(streams.c.id == stream_id, streams.c.lease_owner == worker)
                      .values(lease_owner=None, lease_expires=None))
