"""Stream routes: create, list, show (cursor, lag, delivered, last error), change, pause, resume and
delete continuous exports, scoped to the caller's project."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field, ValidationError, model_validator

from ..checks import describe_errors
from ..config import Settings
from ..runtime.lag import lag
from ..store.jobs import JobStore
from ..store.streams import Stream, StreamStore
from ..streaming.spec import StreamSpec


class StreamCreate(StreamSpec):
    """POST /api/streams: a StreamSpec; the server assigns `id`."""

    @model_validator(mode="before")
    @classmethod
    def _drop_server_fields(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if k != "id"} if isinstance(data, dict) else data


class StreamLag(BaseModel):
    events: int = Field(description="selected events stored after the cursor, not yet acknowledged")
    seconds: float = Field(description="age of the oldest of them (0 when caught up)")


class StreamView(BaseModel):
    stream: StreamSpec
    status: str = Field(description="active, paused, or failing (its destination has been failing for "
                                    "longer than failing_after_seconds; it goes on trying)")
    cursor: datetime = Field(description="events stored up to here (and this uuid) are delivered")
    cursor_uuid: str
    delivered_events: int
    delivered_batches: int
    last_delivered_at: datetime | None
    last_error: str | None
    running_on: str | None = Field(description="the worker holding the stream's lease")
    lag: StreamLag | None = Field(None, description="with ?lag=true")


class StreamList(BaseModel):
    items: list[StreamView]
    total: int


def view(stream: Stream, jobs: JobStore | None = None, settings: Settings | None = None) -> StreamView:
    behind = None
    if jobs is not None and settings is not None:
        events, seconds = lag(settings, jobs, stream)
        behind = StreamLag(events=events, seconds=seconds)
    return StreamView(stream=stream.spec, status=stream.status, cursor=stream.cursor_at,
                      cursor_uuid=stream.cursor_uuid, delivered_events=stream.delivered_events,
                      delivered_batches=stream.delivered_batches, last_delivered_at=stream.last_delivered_at,
                      last_error=stream.last_error, running_on=stream.lease_owner, lag=behind)


def stream_router(jobs: JobStore, settings: Settings, project_dependency: Any, problems: Any, check_target: Any,
                  check_privacy: Any) -> APIRouter:
    router = APIRouter(prefix="/api/streams", tags=["streams"])
    store = StreamStore(jobs)
    Project = Annotated[str, project_dependency]

    def found(project: str, stream_id: str) -> Stream:
        stream = store.get(project, stream_id)
        if stream is None:
            raise HTTPException(404, f"no stream {stream_id}")
        return stream

    def checked(project: str, spec: StreamSpec) -> StreamSpec:
        check_target(project, spec.destination)
        check_privacy(project, spec.request())
        return spec

    @router.post("", status_code=201, response_model=StreamView, responses=problems(422))
    def create(body: StreamCreate, project: Project) -> StreamView:
        """Start delivering the project's new events (from now, or from `start`)."""
        store.check_room(project)  # before its destination is resolved and its privacy checked
        spec = checked(project, StreamSpec.model_validate(body.model_dump(exclude={"id"})))
        return view(store.create(project, spec))

    @router.get("", response_model=StreamList)
    def list_(project: Project, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
              offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> StreamList:
        items, total = store.list(project, limit, offset)
        return StreamList(items=[view(s) for s in items], total=total)

    @router.get("/{stream_id}", response_model=StreamView, responses=problems(404))
    def get(stream_id: str, project: Project,
            with_lag: Annotated[bool, Query(alias="lag",
                                            description="count what is not delivered yet (reads the event store)")] = True
            ) -> StreamView:
        return view(found(project, stream_id), jobs if with_lag else None, settings)

    @router.patch("/{stream_id}", response_model=StreamView, responses=problems(404, 422))
    def update(stream_id: str, changes: dict[str, Any], project: Project) -> StreamView:
        """Change fields (not `id`); the running worker restarts the stream with them, from its cursor."""
        current = found(project, stream_id)
        if "id" in changes or "start" in changes:
            raise HTTPException(422, f"{'id' if 'id' in changes else 'start'}: fixed when the stream is created "
                                     "(its cursor moves on by itself); create another stream instead")
        try:
            spec = StreamSpec.model_validate({**current.spec.model_dump(mode="json"), **changes})
        except ValidationError as exc:
            raise HTTPException(422, describe_errors(exc.errors())) from None
        store.update(project, stream_id, checked(project, spec))
        return view(found(project, stream_id))

    @router.delete("/{stream_id}", status_code=204, responses=problems(404))
    def delete(stream_id: str, project: Project) -> None:
        if not store.delete(project, stream_id):
            raise HTTPException(404, f"no stream {stream_id}")

    @router.post("/{stream_id}/pause", response_model=StreamView, responses=problems(404))
    def pause(stream_id: str, project: Project) -> StreamView:
        """Stop delivering; the worker stops within a second, the cursor stays where it is."""
        found(project, stream_id)
        store.set_status(project, stream_id, paused=True)
        return view(found(project, stream_id))

    @router.post("/{stream_id}/resume", response_model=StreamView, responses=problems(404))
    def resume(stream_id: str, project: Project) -> StreamView:
        """Deliver again from the cursor: nothing stored meanwhile is skipped."""
        found(project, stream_id)
        store.set_status(project, stream_id, paused=False)
        return view(found(project, stream_id))

    return router

