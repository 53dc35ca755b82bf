"""Data-protection routes: the project's privacy policy (versioned), its suppression list, and its
retention policy (export before deletion) with its runs."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ..config import Settings
from ..errors import Invalid
from ..models import RetentionPolicy
from ..privacy.rules import PrivacyRules
from ..runtime import retention
from ..store.jobs import aware
from ..store.policies import PrivacyStore

MAX_SUPPRESSIONS_PER_CALL = 100_000


class PolicyView(BaseModel):
    project: str
    version: int = Field(description="0 while the project has no policy; each change adds one")
    updated_at: datetime | None
    rules: PrivacyRules
    suppressed_users: int = Field(description="distinct_ids on the suppression list")


class SuppressionsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    distinct_ids: list[Annotated[str, Field(min_length=1, max_length=65_535)]] = Field(
        min_length=1, max_length=MAX_SUPPRESSIONS_PER_CALL)


class SuppressionsAdded(BaseModel):
    added: int = Field(description="distinct_ids new to the list (the others were on it)")
    total: int


class SuppressionList(BaseModel):
    items: list[str]
    total: int
    limit: int
    offset: int


class RetentionView(BaseModel):
    project: str
    policy: RetentionPolicy
    next_run: datetime | None = Field(description="when a worker runs it next (UTC)")
    last_run: datetime | None
    last_error: str | None = Field(description="days the last run left in place, and why")


class RetentionWindow(BaseModel):
    day: str
    generation: int = Field(description="1, then 2... for events of that day stored after it was archived")
    status: str = Field(description="archiving, archived (verified, not yet deleted) or deleted")
    watermark: datetime = Field(description="the window holds the day's events stored before this instant")
    events: int | None
    read: int | None = Field(description="events read from the store (archived + suppressed)")
    bytes: int | None
    sha256: str | None
    uri: str | None
    privacy_version: int | None
    error: str | None
    updated_at: datetime


def privacy_router(policies: PrivacyStore, settings: Settings, project_dependency: Any, problems: Any,
                   check_target: Any) -> APIRouter:
    router = APIRouter(prefix="/api/projects/{project}", tags=["privacy"])
    Caller = Annotated[str, project_dependency]

    def own(project: str, caller: str) -> str:
        if project != caller:
            raise HTTPException(403, f"this API key belongs to project {caller!r}, not {project!r}")
        return project

    def view(project: str, version: int | None = None) -> PolicyView:
        number, rules, updated = policies.policy(project, version)
        if version is not None and number != version:
            raise HTTPException(404, f"project {project!r} has no privacy policy version {version}")
        return PolicyView(project=project, version=number, updated_at=updated, rules=rules,
                          suppressed_users=policies.suppressed_count(project))

    @router.get("/privacy", response_model=PolicyView, responses=problems(403, 404))
    def get_policy(project: str, caller: Caller,
                   version: Annotated[int | None, Query(ge=1, description="an earlier version")] = None) -> PolicyView:
        """The policy every export of the project applies (or an earlier version, for audit)."""
        return view(own(project, caller), version)

    @router.put("/privacy", response_model=PolicyView, responses=problems(403))
    def put_policy(project: str, body: PrivacyRules, caller: Caller) -> PolicyView:
        """Replace the policy: a new version, applied by exports that start from now on."""
        policies.set_policy(own(project, caller), body)
        return view(project)

    @router.delete("/privacy", response_model=PolicyView, responses=problems(403))
    def delete_policy(project: str, caller: Caller) -> PolicyView:
        """Clear the policy: a new, empty version (earlier ones stay for audit)."""
        policies.set_policy(own(project, caller), PrivacyRules())
        return view(project)

    @router.get("/suppressions", response_model=SuppressionList, responses=problems(403))
    def list_suppressions(project: str, caller: Caller, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                          offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> SuppressionList:
        own(project, caller)
        return SuppressionList(items=policies.suppressed(project, limit, offset),
                               total=policies.suppressed_count(project), limit=limit, offset=offset)

    @router.post("/suppressions", response_model=SuppressionsAdded, responses=problems(403, 413, 415),
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": SuppressionsBody.model_json_schema()},
                     "text/plain": {"schema": {"type": "string", "description": "one distinct_id a line"}}}}})
    async def add_suppressions(project: str, request: Request, caller: Caller) -> SuppressionsAdded:
        """Exclude users from every export and stream: JSON `{"distinct_ids": [...]}`, or a text
        body with one distinct_id a line (a bulk upload)."""
        own(project, caller)
        ids = await suppression_ids(request)
        added = policies.suppress(project, ids)
        return SuppressionsAdded(added=added, total=policies.suppressed_count(project))

    @router.delete("/suppressions/{distinct_id:path}", status_code=204, responses=problems(403, 404))
    def remove_suppression(project: str, distinct_id: str, caller: Caller) -> None:
        if not policies.unsuppress(own(project, caller), [distinct_id]):
            raise HTTPException(404, f"{distinct_id!r} is not on the suppression list")

    def retention_view(project: str) -> RetentionView:
        found = retention.get_policy(policies.jobs, project)
        if found is None:
            raise HTTPException(404, f"project {project!r} has no retention policy; PUT one")
        policy, row = found
        return RetentionView(project=project, policy=policy, next_run=aware(row.next_run),
                             last_run=aware(row.last_run),
                             last_error=row.last_error and settings.hide_paths(row.last_error))

    @router.get("/retention", response_model=RetentionView, responses=problems(403, 404))
    def get_retention(project: str, caller: Caller) -> RetentionView:
        return retention_view(own(project, caller))

    @router.put("/retention", response_model=RetentionView, responses=problems(403))
    def put_retention(project: str, body: RetentionPolicy, caller: Caller) -> RetentionView:
        """Archive, verify, then delete events older than `days`, on the policy's cron."""
        check_target(own(project, caller), body.destination)
        if settings.events_engine == "clickhouse":
            raise HTTPException(422, "retention deletes events from DuckDB or PostgreSQL stores; this server's "
                                     "store is ClickHouse: use a table TTL there")
        try:
            retention.set_policy(policies.jobs, project, body, settings.export.min_schedule_interval_seconds)
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None
        return retention_view(project)

    @router.delete("/retention", status_code=204, responses=problems(403, 404))
    def delete_retention(project: str, caller: Caller) -> None:
        retention_view(own(project, caller))
        retention.set_policy(policies.jobs, project, None, settings.export.min_schedule_interval_seconds)

    @router.post("/retention/run", responses={**problems(403, 404), 202: {"description": "queued"}})
    def run_retention(project: str, caller: Caller,
                      dry_run: Annotated[bool, Query(description="list what would be archived and deleted")] = False
                      ) -> Any:
        """A dry run answers with each day it would archive; a real run is queued for a worker (202)."""
        policy = retention_view(own(project, caller)).policy
        if not dry_run and not policy.enabled:
            raise HTTPException(409, "the retention policy is disabled; PUT it with \"enabled\": true to run it")
        if not dry_run:
            retention.run_now(policies.jobs, project)
            from fastapi.responses import JSONResponse

            return JSONResponse({"queued": True}, status_code=202)
        try:
            return retention.Retention(settings, policies.jobs, project).run(policy, dry_run=True)
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None

    @router.get("/retention/windows", response_model=list[RetentionWindow], responses=problems(403))
    def retention_windows(project: str, caller: Caller,
                          limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[RetentionWindow]:
        """Each day's archive and deletion, newest first: what was archived where, and when deleted."""
        rows = retention.Retention(settings, policies.jobs, own(project, caller)).history(limit)
        return [RetentionWindow(**row) for row in rows]

    return router


async def suppression_ids(request: Request) -> list[str]:
    """The distinct_ids of a suppression upload, JSON or plain text; 4xx saying what is wrong."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    body = await request.body()
    if kind == "application/json":
        try:
            return SuppressionsBody.model_validate_json(body).distinct_ids
        except ValueError as exc:
            from ..checks import describe_errors

            errors = getattr(exc, "errors", None)
            raise HTTPException(422, describe_errors(errors()) if errors else str(exc)) from None
    if kind in ("text/plain", "text/csv"):
        try:
            lines = [line.strip() for line in body.decode().splitlines()]
        except UnicodeDecodeError:
            raise HTTPException(422, "the body is not UTF-8 text") from None
        ids = [line for line in lines if line]
        if not ids:
            raise HTTPException(422, "the body lists no distinct_id; send one a line")
        if len(ids) > MAX_SUPPRESSIONS_PER_CALL:
            raise HTTPException(413, f"{len(ids):,} distinct_ids; send at most {MAX_SUPPRESSIONS_PER_CALL:,} a call")
        if any(len(i) > 65_535 for i in ids):
            raise HTTPException(422, "a distinct_id is longer than 65,535 characters")
        return ids
    raise HTTPException(415, "send application/json ({\"distinct_ids\": [...]}) or text/plain (one a line)")
