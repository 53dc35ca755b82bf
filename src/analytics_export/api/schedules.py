"""Schedule routes: CRUD, pause/resume, backfill and run history, scoped to the caller's project."""


from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from cron_descriptor import ExpressionDescriptor, Options
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..checks import STORED, describe_errors, utc
from ..errors import Invalid, NotFound
from ..models import ExportConfig, ScheduledExport
from ..runtime.scheduler import Schedules, backfill, run_history
from ..runtime.windows import fires
from ..store.jobs import JobStore, now


class ScheduleCreate(ScheduledExport):
    """POST /api/schedules: a ScheduledExport; the server assigns `id`, `last_run` and `next_run`."""

    @model_validator(mode="before")
    @classmethod
    def _drop_server_fields(cls, data: Any) -> Any:
        server = ("id", "last_run", "next_run")
        return {k: v for k, v in data.items() if k not in server} if isinstance(data, dict) else data


class ScheduleView(BaseModel):
    schedule: ScheduledExport
    status: Literal["active", "paused"]
    paused_reason: str | None = Field(None, description="why the schedule paused itself, or `paused by request`")
    exported_until: datetime | None = Field(None, description="end of the last window queued (the watermark)")


class ScheduleList(BaseModel):
    items: list[ScheduleView]
    total: int


class Backfill(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: datetime
    end: datetime
    force: bool = Field(False, description="export windows again that completed already (replacing their files)")

    @model_validator(mode="after")
    def _window(self) -> "Backfill":
        self.start, self.end = utc(self.start), utc(self.end)
        if self.end <= self.start:
            raise ValueError("end must be after start; the range is [start, end)")
        return self


class BackfillResult(BaseModel):
    queued: int = Field(description="windows planned for export, released `backfill_concurrency` at a time")
    skipped: int = Field(description="windows already exported or running")


class Run(BaseModel):
    window_start: datetime
    window_end: datetime
    export_id: str
    status: str
    events: int | None
    bytes: int | None
    error: str | None
    created_at: datetime


class NextRuns(BaseModel):
    description: str = Field(description="the cron in words, e.g. `At 02:00, only on Monday`")
    runs: list[datetime] = Field(description="the next firing times, in the schedule's time zone")


def described(cron: str) -> str:
    """`cron` in words (24-hour times); the expression itself where there are none for it (`@daily`)."""
    options = Options()
    options.use_24hour_time_format = True
    try:
        return ExpressionDescriptor(cron, options).get_description()
    except Exception:  # cron-descriptor raises its own FormatError and more for shapes croniter accepts
        return cron


def sample(spec: ScheduledExport) -> Any:
    """One window's export request of `spec`, for checks that look at filters and properties."""
    at = now()
    return spec.request(spec.id, at.replace(year=at.year - 1), at)


def schedule_router(jobs: JobStore, config: ExportConfig, project_dependency: Any, problems: Any,
                    check_destination: Any, check_privacy: Any) -> APIRouter:
    router = APIRouter(prefix="/api/schedules", tags=["schedules"])
    store = Schedules(jobs, config)
    Project = Annotated[str, project_dependency]

    def found(item: dict | None, schedule_id: str) -> ScheduleView:
        if item is None:
            raise HTTPException(404, f"no schedule {schedule_id}")
        return ScheduleView.model_validate(item, context=STORED)  # shown even if saved under older rules

    @router.post("", status_code=201, response_model=ScheduleView)
    def create(body: ScheduleCreate, project: Project) -> ScheduleView:
        spec = ScheduledExport.model_validate(body.model_dump(exclude={"id", "last_run", "next_run"}))
        check_destination(project, spec.destination)
        check_privacy(project, sample(spec))
        try:
            return found(store.create(project, spec, now()), spec.id)
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None

    @router.get("", response_model=ScheduleList)
    def list_(project: Project, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
              offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> ScheduleList:
        items, total = store.list(project, limit, offset)
        return ScheduleList(items=[ScheduleView.model_validate(i, context=STORED) for i in items], total=total)

    @router.get("/next-runs", response_model=NextRuns, responses=problems(422))
    def next_runs(_project: Project, cron: Annotated[str, Query(max_length=200, description="e.g. `0 2 * * *`")],
                  timezone: Annotated[str, Query(max_length=100)] = "UTC",
                  count: Annotated[int, Query(ge=1, le=50)] = 5) -> NextRuns:
        """What a schedule's cron means: in words, and its next `count` runs from now; 422 with the
        reason a schedule with this cron would be refused."""
        try:
            spec = ScheduledExport(name="preview", schedule=cron, timezone=timezone)
            store.check(spec)
        except ValidationError as exc:
            raise HTTPException(422, describe_errors(exc.errors())) from None
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None
        tz = ZoneInfo(spec.timezone)
        runs = fires(spec.schedule, tz, now())
        return NextRuns(description=described(spec.schedule), runs=[next(runs).astimezone(tz) for _ in range(count)])

    @router.get("/{schedule_id}", response_model=ScheduleView, responses=problems(404))
    def get(schedule_id: str, project: Project) -> ScheduleView:
        return found(store.get(project, schedule_id), schedule_id)

    @router.patch("/{schedule_id}", response_model=ScheduleView, responses=problems(404))
    def update(schedule_id: str, changes: dict[str, Any], project: Project) -> ScheduleView:
        current = found(store.get(project, schedule_id), schedule_id)
        try:
            merged = ScheduledExport.model_validate({**current.schedule.model_dump(mode="json"), **changes})
        except ValidationError as exc:
            raise HTTPException(422, describe_errors(exc.errors())) from None
        check_destination(project, merged.destination)  # before anything is saved
        check_privacy(project, sample(merged))
        try:
            return found(store.update(project, schedule_id, changes, now()), schedule_id)
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None

    @router.delete("/{schedule_id}", status_code=204, responses=problems(404))
    def delete(schedule_id: str, project: Project) -> None:
        if not store.delete(project, schedule_id):
            raise HTTPException(404, f"no schedule {schedule_id}")

    @router.post("/{schedule_id}/pause", response_model=ScheduleView, responses=problems(404))
    def pause(schedule_id: str, project: Project) -> ScheduleView:
        return found(store.pause(project, schedule_id, "paused by request"), schedule_id)

    @router.post("/{schedule_id}/resume", response_model=ScheduleView, responses=problems(404))
    def resume(schedule_id: str, project: Project) -> ScheduleView:
        """Missed windows are exported by the next run, as the schedule's `catch_up` says; 422 if its
        cron is no longer allowed here (PATCH a new one)."""
        try:
            return found(store.update(project, schedule_id, {"enabled": True}, now()), schedule_id)
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None

    @router.post("/{schedule_id}/backfill", status_code=202, response_model=BackfillResult, responses=problems(404))
    def backfill_(schedule_id: str, body: Backfill, project: Project) -> BackfillResult:
        try:
            return BackfillResult(**backfill(jobs, project, schedule_id, body.start, body.end, body.force))
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None

    @router.get("/{schedule_id}/runs", response_model=list[Run], responses=problems(404))
    def runs(schedule_id: str, project: Project, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
             offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> list[Run]:
        found(store.get(project, schedule_id), schedule_id)
        return [Run(**r) for r in run_history(jobs, schedule_id, limit, offset)]

    return router
