"""Alerts in the job store: a project's channels, its alert history (incidents, opened and resolved in
`incidents`, with each channel's deliveries of them), and the deliveries the worker's dispatcher claims."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..alerts import MAX_CHANNELS, ChannelSpec
from .incidents import MAX_ERROR_CHARS
from .jobs import JobStore, aware, check_room, now
from .tables import alert_channels, alert_deliveries, alert_incidents

CLAIM = timedelta(minutes=2)
"""A claimed delivery is due again after this if its sender died (at least once)."""


@dataclass
class Channel:
    id: str
    project: str
    spec: ChannelSpec
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Channel:
        return cls(id=row.id, project=row.project, spec=ChannelSpec.model_validate(row.spec),
                   created_at=aware(row.created_at))


@dataclass
class Delivery:
    """A delivery claimed for sending, with its incident and channel."""

    id: str
    event: str
    attempts: int
    incident: Any
    channel: Channel | None


class AlertStore:
    def __init__(self, jobs: JobStore) -> None:
        self.engine = jobs.engine

    # -- channels -----------------------------------------------------------------------------

    def create_channel(self, project: str, spec: ChannelSpec) -> Channel:
        channel_id = str(uuid.uuid4())
        with self.engine.begin() as c:
            check_room(c, alert_channels, project, MAX_CHANNELS, "alert channels")
            c.execute(alert_channels.insert().values(id=channel_id, project=project,
                                                     spec=spec.model_dump(mode="json"), created_at=now()))
        return self.channel(project, channel_id)

    def channel(self, project: str, channel_id: str) -> Channel | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(alert_channels).where(alert_channels.c.id == channel_id,
                                                            alert_channels.c.project == project)).first()
        return Channel.from_row(row) if row else None

    def channels(self, project: str, limit: int, offset: int) -> tuple[list[Channel], int]:
        mine = alert_channels.c.project == project
        with self.engine.connect() as c:
            total = c.execute(sa.select(sa.func.count()).select_from(alert_channels).where(mine)).scalar_one()
            rows = c.execute(sa.select(alert_channels).where(mine).order_by(
                alert_channels.c.created_at, alert_channels.c.id).limit(limit).offset(offset)).all()
        return [Channel.from_row(r) for r in rows], total

    def update_channel(self, project: str, channel_id: str, spec: ChannelSpec) -> Channel | None:
        with self.engine.begin() as c:
            if not c.execute(alert_channels.update().where(
                    alert_channels.c.id == channel_id, alert_channels.c.project == project,
            ).values(spec=spec.model_dump(mode="json"))).rowcount:
                return None
        return self.channel(project, channel_id)

    def delete_channel(self, project: str, channel_id: str) -> bool:
        """Remove the channel; its deliveries not yet sent are skipped, those sent stay in the history."""
        with self.engine.begin() as c:
            gone = c.execute(alert_channels.delete().where(alert_channels.c.id == channel_id,
                                                           alert_channels.c.project == project)).rowcount
            if gone:
                c.execute(alert_deliveries.update().where(
                    alert_deliveries.c.channel_id == channel_id, alert_deliveries.c.status == "pending",
                ).values(status="skipped", last_error="the channel was deleted"))
        return bool(gone)

    # -- history ------------------------------------------------------------------------------

    def history(self, project: str, limit: int, offset: int) -> tuple[list[dict], int]:
        """The project's incidents, newest first, each with its deliveries (and their channel's name)."""
        i, d = alert_incidents.c, alert_deliveries.c
        with self.engine.connect() as c:
            total = c.execute(sa.select(sa.func.count()).select_from(alert_incidents)
                              .where(i.project == project)).scalar_one()
            incidents = c.execute(sa.select(alert_incidents).where(i.project == project).order_by(
                i.opened_at.desc(), i.id).limit(limit).offset(offset)).all()
            deliveries = c.execute(sa.select(alert_deliveries, alert_channels.c.spec).outerjoin(
                alert_channels, alert_channels.c.id == d.channel_id).where(
                d.incident_id.in_([r.id for r in incidents])).order_by(d.created_at, d.id)).all() if incidents else []
        by_incident: dict[str, list[dict]] = {}
        for row in deliveries:
            by_incident.setdefault(row.incident_id, []).append({
                "channel_id": row.channel_id, "channel": row.spec["name"] if row.spec else None, "event": row.event,
                "status": row.status, "attempts": row.attempts, "last_error": row.last_error,
                "next_attempt_at": aware(row.next_attempt_at) if row.status == "pending" else None,
                "sent_at": aware(row.sent_at)})
        return [{"id": r.id, "kind": r.kind, "object_type": r.object_type, "object_id": r.object_id,
                 "status": "open" if r.resolved_at is None else "resolved", "error": r.error, "attempts": r.attempts,
                 "opened_at": aware(r.opened_at), "resolved_at": aware(r.resolved_at), "resolution": r.resolution,
                 "deliveries": by_incident.get(r.id, [])} for r in incidents], total

    # -- the dispatcher -----------------------------------------------------------------------

    def claim(self, limit: int) -> list[Delivery]:
        """Take up to `limit` due deliveries: each is pushed CLAIM ahead in one conditional update, so
        one dispatcher sends it (another sends it again only if this one dies first)."""
        at = now()
        d = alert_deliveries.c
        with self.engine.connect() as c:
            due = c.execute(sa.select(d.id, d.next_attempt_at).where(d.status == "pending", d.next_attempt_at <= at)
                            .order_by(d.next_attempt_at).limit(limit)).all()
        claimed = []
        for row in due:
            with self.engine.begin() as c:
                if not c.execute(alert_deliveries.update().where(
                        d.id == row.id, d.status == "pending", d.next_attempt_at == row.next_attempt_at,
                ).values(next_attempt_at=at + CLAIM)).rowcount:
                    continue
                delivery = c.execute(sa.select(alert_deliveries).where(d.id == row.id)).first()
                incident = c.execute(sa.select(alert_incidents).where(
                    alert_incidents.c.id == delivery.incident_id)).first()
                channel = c.execute(sa.select(alert_channels).where(
                    alert_channels.c.id == delivery.channel_id)).first()
            claimed.append(Delivery(delivery.id, delivery.event, delivery.attempts, incident,
                                    Channel.from_row(channel) if channel else None))
        return claimed

    def record(self, delivery_id: str, error: str | None, retry_at: datetime | None) -> None:
        """Record an attempt: sent (no error), to be sent again at `retry_at`, or failed for good."""
        status = "sent" if error is None else "pending" if retry_at is not None else "failed"
        values: dict[str, Any] = {"status": status, "attempts": alert_deliveries.c.attempts + 1}
        if error is not None:  # a send that succeeds keeps the error of the attempt before it
            values["last_error"] = error[:MAX_ERROR_CHARS]
        if status == "sent":
            values["sent_at"] = now()
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
        with self.engine.begin() as c:
            c.execute(alert_deliveries.update().where(alert_deliveries.c.id == delivery_id).values(**values))

    def skip(self, delivery_id: str, reason: str) -> None:
        with self.engine.begin() as c:
            c.execute(alert_deliveries.update().where(alert_deliveries.c.id == delivery_id).values(
                status="skipped", last_error=reason))
