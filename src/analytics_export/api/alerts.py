"""Alert routes: a project's notification channels (`/api/alert-channels`) and its alert history
(`GET /api/alerts`: each incident with the status of every channel's delivery)."""

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field, ValidationError

from ..alerts import AlertKind, ChannelFields, ChannelSpec
from ..checks import describe_errors
from ..errors import Invalid
from ..runtime.alerts import check_channel
from ..store.alerts import AlertStore, Channel
from .deps import Api, problems

class ChannelView(BaseModel):
    """A channel as shown: a Slack URL (itself the secret) only by its host."""

    id: str
    name: str
    type: Literal["webhook", "slack", "email"]
    kinds: list[AlertKind]
    stream_failing_minutes: float
    url: str | None
    connection: str | None
    to: list[str] | None
    enabled: bool
    created_at: datetime


class ChannelList(BaseModel):
    items: list[ChannelView]
    total: int
    limit: int
    offset: int


class DeliveryView(BaseModel):
    channel_id: str
    channel: str | None = Field(description="the channel's name; null once it is deleted")
    event: Literal["opened", "resolved"]
    status: Literal["pending", "sent", "failed", "skipped"]
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="when a pending delivery is sent (again)")
    sent_at: datetime | None


class AlertView(BaseModel):
    """One incident: open until its object recovers, then resolved; one alert each way per channel."""

    id: str
    kind: AlertKind
    object_type: Literal["export", "schedule", "stream", "retention"]
    object_id: str
    status: Literal["open", "resolved"]
    error: str | None
    attempts: int | None
    opened_at: datetime
    resolved_at: datetime | None
    resolution: str | None
    deliveries: list[DeliveryView]


class AlertList(BaseModel):
    items: list[AlertView]
    total: int
    limit: int
    offset: int


def view(channel: Channel) -> ChannelView:
    spec = channel.spec
    url = str(spec.url) if spec.url is not None else None
    if url is not None and spec.type == "slack":
        parts = urlsplit(url)
        url = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/…"
    return ChannelView(id=channel.id, name=spec.name, type=spec.type, kinds=spec.kinds,
                       stream_failing_minutes=spec.stream_failing_minutes, url=url, connection=spec.connection,
                       to=spec.to, enabled=spec.enabled, created_at=channel.created_at)


def alerts_router(api: Api) -> APIRouter:
    router = APIRouter(tags=["alerts"])
    store = AlertStore(api.jobs)
    Project = Annotated[str, api.project]
    Limit = Annotated[int, Query(ge=1, le=1000)]
    Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]

    def checked(project: str, spec: ChannelSpec) -> ChannelSpec:
        try:
            check_channel(api.settings, api.jobs, project, spec)
        except Invalid as exc:
            raise HTTPException(422, f"channel: {exc}") from None
        return spec

    def found(project: str, channel_id: str) -> Channel:
        channel = store.channel(project, channel_id)
        if channel is None:
            raise HTTPException(404, f"no alert channel {channel_id}")
        return channel

    @router.post("/api/alert-channels", status_code=201, response_model=ChannelView, responses=problems(422))
    def create_channel(body: ChannelSpec, project: Project) -> ChannelView:
        """A channel told of the project's incidents of `kinds`: a `webhook` (signed with its webhook
        connection's signing_secret, like export webhooks), `slack` (an incoming-webhook URL) or `email`
        (an smtp connection and `to`)."""
        try:
            return view(store.create_channel(project, checked(project, body)))
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None

    @router.get("/api/alert-channels", response_model=ChannelList)
    def list_channels(project: Project, limit: Limit = 50, offset: Offset = 0) -> ChannelList:
        items, total = store.channels(project, limit, offset)
        return ChannelList(items=[view(c) for c in items], total=total, limit=limit, offset=offset)

    @router.get("/api/alert-channels/{channel_id}", response_model=ChannelView, responses=problems(404))
    def get_channel(channel_id: str, project: Project) -> ChannelView:
        return view(found(project, channel_id))

    @router.patch("/api/alert-channels/{channel_id}", response_model=ChannelView, responses=problems(404, 422))
    def update_channel(channel_id: str, body: ChannelFields, project: Project) -> ChannelView:
        """Change the fields given; the result is checked as a whole channel."""
        current = found(project, channel_id)
        try:
            spec = ChannelSpec.model_validate({**current.spec.model_dump(mode="json"),
                                               **body.model_dump(mode="json", exclude_unset=True)})
        except ValidationError as exc:
            raise HTTPException(422, describe_errors(exc.errors())) from None
        updated = store.update_channel(project, channel_id, checked(project, spec))
        if updated is None:
            raise HTTPException(404, f"no alert channel {channel_id}")
        return view(updated)

    @router.delete("/api/alert-channels/{channel_id}", status_code=204, responses=problems(404))
    def delete_channel(channel_id: str, project: Project) -> Response:
        """Remove the channel; its alerts not yet sent are skipped, those sent stay in the history."""
        if not store.delete_channel(project, channel_id):
            raise HTTPException(404, f"no alert channel {channel_id}")
        return Response(status_code=204)

    @router.get("/api/alerts", response_model=AlertList)
    def list_alerts(project: Project, limit: Limit = 50, offset: Offset = 0) -> AlertList:
        """The project's incidents, newest first, each with every channel's delivery (status, attempts,
        last error)."""
        items, total = store.history(project, limit, offset)
        return AlertList(items=[AlertView(**i) for i in items], total=total, limit=limit, offset=offset)

    return router
