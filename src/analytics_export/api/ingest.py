"""`POST /api/events`: events sent as a JSON array or JSON Lines, stored in the caller's project."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..errors import Invalid, OutOfMemory
from ..inbox import spooled
from ..sources.stores import open_store
from .deps import Api, problems
from .ingest_writer import GroupWriter, Unopened


class IngestResult(BaseModel):
    ingested: int = Field(description="new events stored (events whose uuid was already stored are skipped)")


def ingest_router(api: Api) -> APIRouter:
    router = APIRouter()

    @router.post("/api/events", response_model=IngestResult, responses=problems(413, 415, 422, 503),
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                  "application/x-ndjson": {"schema": {"type": "string"}}}}})
    async def ingest_events(request: Request, project: Annotated[str, api.project]) -> IngestResult:
        """Events as a JSON array or JSON Lines (`event`, `distinct_id`, `timestamp`, optional `uuid`
        and `properties`), into the caller's project; events whose uuid is stored are skipped."""
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        suffix = {"application/json": ".json", "application/x-ndjson": ".jsonl", "application/jsonl": ".jsonl"}.get(kind)
        if suffix is None:
            raise HTTPException(415, "send application/json (an array of events) or application/x-ndjson (JSON Lines)")
        body = await request.body()  # at most max_body_bytes: RequestGuard stops a longer one
        return await run_in_threadpool(ingest_body, body, suffix, project)

    limited = api.settings.model_copy(update={
        "duckdb_write_memory_limit": api.settings.api_ingest_memory_limit, "duckdb_threads": 1})
    writer = GroupWriter(lambda: open_store(limited, read_only=False))

    def ingest_body(body: bytes, suffix: str, project: str) -> IngestResult:
        with spooled(api.settings.data_dir, body, suffix) as spool:  # a full disk: Storage, so 503
            try:
                return IngestResult(ingested=writer.ingest(spool, project))
            except Invalid as exc:
                raise HTTPException(422, api.settings.hide_paths(str(exc))) from exc
            except OutOfMemory:
                raise HTTPException(413, f"these events need more than the {api.settings.api_ingest_memory_limit} an upload "
                                         "may use to load: send fewer events per request") from None
            except Unopened as exc:
                raise HTTPException(503, "the event store is busy with exports; retry shortly",
                                    headers={"Retry-After": "5"}) from exc

    return router
