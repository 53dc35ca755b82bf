"""`/api/exports`: exports created (202), previewed, listed, polled, downloaded, cancelled, retried and
deleted, per project, in the seed's contract: the ExportRequest's fields at the top level of a view."""

import hashlib
import hmac
import time
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import catalog
from ..errors import Invalid
from ..enums import ExportModel, ExportStatus
from ..models import ExportRequest, ExportResult
from ..sources.stores import open_store
from ..store.jobs import Job
from .deps import Api, bearer, problems

SERVER_FIELDS = ("id", "created_at", "status")


class ExportCreate(ExportRequest):
    """The body of POST /api/exports: an ExportRequest whose `id`, `created_at` and `status` the
    server assigns (values sent for them are ignored); any other unknown field is an error."""

    @model_validator(mode="before")
    @classmethod
    def _drop_server_fields(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if k not in SERVER_FIELDS} if isinstance(data, dict) else data


class ExportProgress(BaseModel):
    events: int
    bytes: int
    expected_events: int | None = Field(None, description="how many events the export is expected to hold, once "
                                        "a worker started it: exact on the embedded store, else an upper bound")
    started_at: datetime | None
    partitions: int | None = Field(None, description="time-window partitions the export runs as (null: one run)")
    partitions_done: int | None = None


class ExportView(ExportRequest):
    """An export as the seed's contract has it, the ExportRequest's fields at the top level (`status` the
    export's current one), with its progress and, once finished, its result beside them."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # a response has every field

    progress: ExportProgress
    result: ExportResult | None = None


class ExportList(BaseModel):
    items: list[ExportView]
    total: int
    limit: int
    offset: int


class Preview(BaseModel):
    columns: list[str]
    rows: list[dict[str, Any]] = Field(description="at most 20 events, as the JSON Lines export holds them")
    truncated: bool = Field(description="true if the export holds more events than these")


def exports_router(api: Api) -> APIRouter:
    router = APIRouter()

    def job_or_404(project: str, export_id: str) -> Job:
        job = api.jobs.get(project, export_id)
        if job is None:
            raise HTTPException(404, f"no export {export_id}")
        return job

    def signature(job: Job, expires: int) -> str:
        """The link's MAC over the export's incarnation (id and creation time, to the microsecond) and
        its expiry: a link dies with its export, even when a backfill or retention run re-creates the
        same id, and when the export's expiry changes (a retried export completing again)."""
        created = int(job.created_at.timestamp() * 1_000_000)
        return hmac.new(api.secret, f"{job.id}:{created}:{expires}".encode(), hashlib.sha256).hexdigest()

    def view(job: Job) -> ExportView:
        url = None
        if job.status is ExportStatus.COMPLETED and job.expires_at is not None:
            expires = int(job.expires_at.timestamp())
            url = f"/api/exports/{job.id}/download?expires={expires}&signature={signature(job, expires)}"
        result = job.result(url)
        if result is not None and result.error:
            result.error = api.settings.hide_paths(result.error)
        progress = ExportProgress(events=job.events_done, bytes=job.bytes_done, expected_events=job.events_expected,
                                  started_at=job.started_at, partitions=job.parts, partitions_done=job.parts_done)
        return ExportView.model_construct(**{**dict(job.request), "status": job.status}, progress=progress,
                                          result=result)

    def checked_request(body: ExportCreate, project: str) -> ExportRequest:
        """The export `body` asks for; 422 if its range is too long or the privacy policy refuses it."""
        request = ExportRequest.model_validate(body.model_dump(exclude=set(SERVER_FIELDS)))
        span = request.end_date - request.start_date
        # a persons export reads the whole history whatever its window: the window only picks who is in it
        if span > timedelta(days=api.settings.export.max_range_days) and request.model is not ExportModel.PERSONS:
            raise HTTPException(422, f"end_date - start_date is {span.days} days; the most is "
                                     f"{api.settings.export.max_range_days}: split the range")
        api.check_privacy(project, request)
        return request

    @router.post("/api/exports/preview", response_model=Preview, responses=problems(422, 503))
    def preview_export(body: ExportCreate, project: Annotated[str, api.project]) -> Preview:
        """The first 20 events the export would hold, as JSON objects (the JSON Lines shape) with the
        privacy policy applied; nothing is created and the destination is not contacted."""
        request = checked_request(body, project)
        if request.model is not ExportModel.EVENTS:
            raise HTTPException(422, f"the preview lists events; a {request.model.value} export has none: "
                                     "export a short window instead")
        with closing(open_store(api.settings)) as store:
            try:
                rows, more = catalog.preview(store, request, project, api.policies.for_export(project, request))
            except Invalid as exc:
                raise HTTPException(422, str(exc)) from None
        return Preview(columns=list(dict.fromkeys(k for row in rows for k in row)), rows=rows, truncated=more)

    @router.post("/api/exports", status_code=202, response_model=ExportView, responses=problems(429))
    def create_export(body: ExportCreate, project: Annotated[str, api.project]) -> ExportView:
        request = checked_request(body, project)
        api.check_target(project, request.destination)
        return view(api.jobs.create(project, request, api.settings.export.max_concurrent_exports))

    @router.get("/api/exports", response_model=ExportList)
    def list_exports(project: Annotated[str, api.project], limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                     offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> ExportList:
        items, total = api.jobs.list(project, limit, offset)
        return ExportList(items=[view(j) for j in items], total=total, limit=limit, offset=offset)

    @router.get("/api/exports/{export_id}", response_model=ExportView, responses=problems(404))
    async def get_export(export_id: str, project: Annotated[str, api.project]) -> ExportView:
        return view(await api.read(job_or_404, project, export_id))

    @router.get("/api/exports/{export_id}/download", response_class=FileResponse,
             responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                  "format": "binary"}}},
                              "description": "the file, with its format's Content-Type"},
                        206: {"description": "a range"},
                        **problems(403, 404, 409, 410, 416)})
    def download(export_id: str, request: Request,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                 expires: int | None = None, signature_: Annotated[str | None, Query(alias="signature")] = None) -> Response:
        if signature_ is not None and expires is not None:
            job = api.jobs.get_any(export_id)
            current = job is not None and job.expires_at is not None and int(job.expires_at.timestamp()) == expires
            if not (current and hmac.compare_digest(signature_.encode(), signature(job, expires).encode())):
                raise HTTPException(403, "the download link does not match this export (it was deleted, re-run "
                                         "or tampered with); ask for a new link")
            if expires < time.time():
                raise HTTPException(410, "the download link has expired")
        else:
            job = job_or_404(api.project_for(credentials), export_id)
        if job.status is ExportStatus.EXPIRED:
            raise HTTPException(410, f"export {export_id} expired at {job.expires_at:%Y-%m-%dT%H:%M:%SZ}")
        if job.status is not ExportStatus.COMPLETED:
            raise HTTPException(409, f"export {export_id} is {job.status.value}, not completed; poll its status")
        folder = api.settings.project_export_dir(job.project).resolve()
        path = Path(job.destination_path or "").resolve()
        if folder not in path.parents or not path.is_file():
            raise HTTPException(410, f"the file of export {export_id} is gone")
        return FileResponse(path, media_type=job.request.format.content_type, filename=path.name)

    @router.delete("/api/exports/{export_id}", status_code=204, responses=problems(404))
    def delete_export(export_id: str, project: Annotated[str, api.project]) -> Response:
        job = job_or_404(project, export_id)
        if job.status in (ExportStatus.PENDING, ExportStatus.PROCESSING):
            api.jobs.request_cancel(project, export_id)
        else:
            if job.destination_path and job.request.destination.type == "download":  # remote files are the user's
                Path(job.destination_path).unlink(missing_ok=True)
                Path(job.destination_path).with_name(job.request.manifest_name).unlink(missing_ok=True)
            api.jobs.delete(project, export_id)
        return Response(status_code=204)

    @router.post("/api/exports/{export_id}/cancel", status_code=202, response_model=ExportView,
              responses=problems(404, 409))
    def cancel_export(export_id: str, project: Annotated[str, api.project]) -> ExportView:
        """Stop a pending or running export (its worker stops within a second, leaving no file); unlike
        DELETE, a finished export is left alone: 409."""
        job = job_or_404(project, export_id)
        if job.status not in (ExportStatus.PENDING, ExportStatus.PROCESSING):
            raise HTTPException(409, f"export {export_id} is {job.status.value}; only a pending or processing export "
                                     "can be cancelled")
        api.jobs.request_cancel(project, export_id)
        return view(job_or_404(project, export_id))

    @router.post("/api/exports/{export_id}/retry", status_code=202, response_model=ExportView,
              responses=problems(404, 409, 429))
    def retry_export(export_id: str, project: Annotated[str, api.project]) -> ExportView:
        job = job_or_404(project, export_id)
        if not api.jobs.retry(project, export_id, api.settings.export.max_concurrent_exports):
            if job.status is ExportStatus.FAILED:
                raise HTTPException(409, f"export {export_id} is still stopping its partitions; retry in a few seconds")
            raise HTTPException(409, f"export {export_id} is {job.status.value}; only a failed export can be retried")
        return view(job_or_404(project, export_id))

    return router
