"""`GET /api/events/names` and `/api/events/properties`: what a project's events are called and which
properties they carry, read from a sample of a window (see catalog.py), for pickers and autocomplete."""

from contextlib import closing
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Callable

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ValidationError

from .. import catalog
from ..checks import describe_errors
from ..config import Settings
from ..errors import Invalid
from ..models import ExportRequest
from ..sources import EventQuery
from ..sources.stores import open_store

DEFAULT_DAYS = 30


class Name(BaseModel):
    name: str
    events: int


class Names(BaseModel):
    items: list[Name]
    sampled: bool


def catalog_router(settings: Settings, project_dependency: Any, problems: Any,
                   privacy_for: Callable[[str, ExportRequest], Any]) -> APIRouter:
    router = APIRouter(prefix="/api/events", tags=["events"])
    Project = Annotated[str, project_dependency]
    Start = Annotated[datetime | None, Query(description=f"inclusive; default {DEFAULT_DAYS} days before end")]
    End = Annotated[datetime | None, Query(description="exclusive; default now")]
    Q = Annotated[str, Query(max_length=200, description="only names containing this (any case)")]

    def lookup(project: str, start: datetime | None, end: datetime | None, events: list[str] | None,
               find: Callable[..., catalog.Counted], q: str, limit: int) -> Names:
        end = end or datetime.now(timezone.utc)
        try:
            request = ExportRequest(start_date=start or end - timedelta(days=DEFAULT_DAYS), end_date=end,
                                    events=events or [])
        except ValidationError as exc:
            raise HTTPException(422, describe_errors(exc.errors())) from None
        except OverflowError:
            raise HTTPException(422, f"end is too early to default start to {DEFAULT_DAYS} days before it: "
                                     "give start") from None
        privacy = privacy_for(project, request)
        try:
            with closing(open_store(settings)) as store:
                found = find(store, EventQuery.from_request(request, project), privacy, q, limit)
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None
        return Names(items=[Name(name=n, events=c) for n, c in found.counts], sampled=found.sampled)

    @router.get("/names", response_model=Names, responses=problems(422, 503))
    def event_names(project: Project, start: Start = None, end: End = None, q: Q = "",
                    limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Names:
        """Event names seen in [start, end), most frequent first (counts of a sample on a big store)."""
        return lookup(project, start, end, None, catalog.event_names, q, limit)

    @router.get("/properties", response_model=Names, responses=problems(422, 503))
    def property_names(project: Project, start: Start = None, end: End = None, q: Q = "",
                       event: Annotated[list[str] | None, Query(description="event names (repeat); default all")] = None,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> Names:
        """Top-level properties of those events seen in [start, end), as an export would carry them
        (the privacy policy's hidden properties are left out)."""
        return lookup(project, start, end, event, catalog.property_names, q, limit)

    return router
