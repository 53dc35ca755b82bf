"""Incidents, opened and resolved inside the transaction that sets the state they are about (an export
failed for good, a schedule paused, a stream failing, a retention run that failed verification), so an
alert is recorded exactly when the state is: one per incident, one on recovery, never one per retry."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite

from ..alerts import OBJECT_OF, ChannelSpec
from .tables import alert_channels, alert_deliveries, alert_incidents

MAX_ERROR_CHARS = 2000


def now() -> datetime:
    return datetime.now(timezone.utc)


def open_key(kind: str, object_id: str) -> str:
    return f"{kind}:{object_id}"


def open_incident(c: sa.Connection, project: str, kind: str, object_id: str, error: str | None,
                  attempts: int | None = None, since: datetime | None = None) -> bool:
    """Open the incident `kind` of `object_id` and queue a delivery to each channel of the project that
    subscribes to it; an incident already open only takes the newer error and attempt count (no second
    alert). `since`: when the state began (a stream failing since then reaches each channel once its
    `stream_failing_minutes` have passed). True when it opened now."""
    at = now()
    values = dict(id=str(uuid.uuid4()), project=project, kind=kind, object_type=OBJECT_OF[kind],
                  object_id=object_id, open_key=open_key(kind, object_id), error=(error or "")[:MAX_ERROR_CHARS],
                  attempts=attempts, opened_at=since or at)
    insert = (postgresql.insert if c.dialect.name == "postgresql" else sqlite.insert)(alert_incidents)
    if not c.execute(insert.values(**values).on_conflict_do_nothing(index_elements=["open_key"])).rowcount:
        c.execute(alert_incidents.update().where(alert_incidents.c.open_key == values["open_key"]).values(
            error=values["error"], attempts=attempts))
        return False
    rows = []
    for channel in c.execute(sa.select(alert_channels).where(alert_channels.c.project == project)).all():
        try:
            spec = ChannelSpec.model_validate(channel.spec)
        except ValidationError:  # stored under other rules: never fail the transaction that set the state
            continue
        if not spec.enabled or kind not in spec.kinds:
            continue
        due = values["opened_at"] + timedelta(minutes=spec.stream_failing_minutes) if kind == "stream_failing" else at
        rows.append(dict(id=str(uuid.uuid4()), incident_id=values["id"], channel_id=channel.id, event="opened",
                         status="pending", next_attempt_at=max(due, at), created_at=at))
    if rows:
        c.execute(alert_deliveries.insert(), rows)
    return True


def resolve_incident(c: sa.Connection, kind: str, object_id: str, resolution: str) -> bool:
    """Close the open incident `kind` of `object_id`, if any (one indexed lookup): each channel that was
    told of it (or is being told) is told of the recovery; a channel whose alert was still waiting (a
    stream that recovered within its `stream_failing_minutes`) hears of neither. True if one was open."""
    at = now()
    row = c.execute(sa.select(alert_incidents.c.id).where(
        alert_incidents.c.open_key == open_key(kind, object_id))).first()
    if row is None:
        return False
    c.execute(alert_incidents.update().where(alert_incidents.c.id == row.id).values(
        open_key=None, resolved_at=at, resolution=resolution[:MAX_ERROR_CHARS]))
    d = alert_deliveries.c
    waiting = sa.and_(d.incident_id == row.id, d.event == "opened", d.status == "pending", d.attempts == 0,
                      d.next_attempt_at > at)
    c.execute(alert_deliveries.update().where(waiting).values(
        status="skipped", last_error="recovered before this channel's stream_failing_minutes"))
    told = c.execute(sa.select(d.channel_id).where(d.incident_id == row.id, d.event == "opened",
                                                   d.status != "skipped")).scalars().all()
    if told:
        c.execute(alert_deliveries.insert(), [
            dict(id=str(uuid.uuid4()), incident_id=row.id, channel_id=channel, event="resolved", status="pending",
                 next_attempt_at=at, created_at=at) for channel in told])
    return True
