"""The REST API: exports created, listed, polled, downloaded, cancelled and retried, per project."""


import hashlib
import hmac
import time
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from .. import catalog
from ..checks import PROJECT_NAME, describe_errors
from ..config import Settings
from ..connections import ConnectionCreate, ConnectionView, Sealer, checked_secrets
from ..errors import Invalid, Limited, NotFound, OutOfMemory, Storage
from ..inbox import clean_inbox, spooled
from ..ingest import ingest_file
from ..jobs.policies import PrivacyStore
from ..jobs.store import Job, JobStore, aware
from ..models import ExportRequest, ExportResult, ExportStatus
from ..privacy.policy import Privacy
from ..sources import EventQuery
from ..sources.stores import open_store
from ..streaming.store import StreamStore
from .catalog import catalog_router
from .console import console_router
from .destinations import destinations_router
from .docs import docs_router
from .events_export import events_export_router
from .formats import formats_router
from .keys import keys_router
from .limits import PROJECT_SCOPE_KEY, BodyLimit, BodyLimits, RequestGuard
from .privacy import privacy_router
from .schedules import schedule_router
from .streams import stream_router
from .text import storable_text

bearer = HTTPBearer(auto_error=False)
T = TypeVar("T")


SERVER_FIELDS = ("id", "created_at", "status")
RETRY_LIMITED = 10
"""Seconds a 429 (the project's exports at max_concurrent_exports) asks a client to wait: about a small
export's run, a few status polls."""


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


class IngestResult(BaseModel):
    ingested: int = Field(description="new events stored (events whose uuid was already stored are skipped)")


class Problem(BaseModel):
    detail: str = Field(description="what is wrong and what to fix")


def problems(*codes: int) -> dict:
    """OpenAPI entries for the error statuses a route can answer."""
    return {code: {"model": Problem} for code in codes}


def create_app(settings: Settings, jobs: JobStore) -> FastAPI:
    app = FastAPI(title="analytics-export", version="0.1.0", docs_url=None, redoc_url=None,
                  dependencies=[Depends(storable_text)],
                  responses={401: {"model": Problem}, 422: {"model": Problem},
                             408: {"model": Problem, "description": "the request body arrived too slowly"},
                             413: {"model": Problem, "description": "the request body is over its limit"}})
    app.include_router(docs_router(app.openapi_url, app.title))
    secret = settings.signing_key()
    sealer = Sealer(secret)
    clean_inbox(settings.data_dir)  # what ingests killed with an earlier process left

    hide_paths = settings.hide_paths

    @app.exception_handler(Storage)
    async def unavailable(_: Request, exc: Storage) -> JSONResponse:
        """A store that is busy or unreachable (the event store's lock, a job store conflict): retry."""
        return JSONResponse({"detail": hide_paths(str(exc))}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Invalid)
    async def refused(_: Request, exc: Invalid) -> JSONResponse:
        """Bad input a route did not answer itself (a project's limit on schedules, say): never a 500."""
        return JSONResponse({"detail": hide_paths(str(exc))}, status_code=422)

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(OverflowError)
    async def out_of_range(_: Request, exc: OverflowError) -> JSONResponse:
        """Date arithmetic past year 1 or 9999 on a date the request gave: its input, not our fault."""
        return JSONResponse({"detail": f"a date or number in the request is out of range ({exc}): use dates "
                                       "between years 1 and 9999 with room for the window"}, status_code=422)

    @app.exception_handler(Limited)
    async def limited(_: Request, exc: Limited) -> JSONResponse:
        """Too much of the project's work is pending or running: the same request succeeds later."""
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(RETRY_LIMITED)})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_errors(exc.errors(), skip=("body",))}, status_code=422)

    inline = jobs.engine.dialect.name == "sqlite"

    async def read(fn: Callable[..., T], *args: Any) -> T:
        """A short job-store read from an async route: inline on SQLite (a local WAL read, cheaper than
        the thread hop and GIL hand-offs it would take), in the threadpool on a networked database."""
        return fn(*args) if inline else await run_in_threadpool(fn, *args)

    def project_for(credentials: HTTPAuthorizationCredentials | None) -> str:
        if credentials is None:
            raise HTTPException(401, "send an API key as `Authorization: Bearer KEY`",
                                headers={"WWW-Authenticate": "Bearer"})
        project = jobs.project_for_key(credentials.credentials)
        if project is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if not PROJECT_NAME.fullmatch(project):  # a key made before names were checked: it names folders
            raise HTTPException(403, f"this key's project {project!r} is not a valid project name (1-100 letters, "
                                     "digits or `_ . -`, starting with a letter, digit or `_`): create a key "
                                     "for a valid one with `analytics-export keys create --project NAME`")
        return project

    async def project_of(request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        """The caller's project: the one RequestGuard found for a request with a body, else looked up."""
        known = request.scope.get(PROJECT_SCOPE_KEY)
        return known if known is not None else await read(project_for, credentials)

    async def authenticate(scope: Any) -> str:
        return await read(project_for, await bearer(Request(scope)))

    bulk = BodyLimit(settings.max_body_bytes, "send smaller batches")
    app.add_middleware(
        RequestGuard, authenticate=authenticate,
        limits=BodyLimits(BodyLimit(settings.max_json_body_bytes, "send fewer or shorter values"),
                          {("POST", "/api/events"): bulk, ("POST", "/api/projects/{project}/suppressions"): bulk}),
        idle_timeout=settings.body_idle_timeout_seconds, body_timeout=settings.body_timeout_seconds)

    Project = Annotated[str, Depends(project_of)]

    def job_or_404(project: str, export_id: str) -> Job:
        job = jobs.get(project, export_id)
        if job is None:
            raise HTTPException(404, f"no export {export_id}")
        return job

    def signature(job: Job, expires: int) -> str:
        """The link's MAC over the export's incarnation (id and creation time, to the microsecond) and
        its expiry: a link dies with its export, even when a backfill or retention run re-creates the
        same id, and when the export's expiry changes (a retried export completing again)."""
        created = int(job.created_at.timestamp() * 1_000_000)
        return hmac.new(secret, f"{job.id}:{created}:{expires}".encode(), hashlib.sha256).hexdigest()

    def view(job: Job) -> ExportView:
        url = None
        if job.status is ExportStatus.COMPLETED and job.expires_at is not None:
            expires = int(job.expires_at.timestamp())
            url = f"/api/exports/{job.id}/download?expires={expires}&signature={signature(job, expires)}"
        result = job.result(url)
        if result is not None and result.error:
            result.error = hide_paths(result.error)
        progress = ExportProgress(events=job.events_done, bytes=job.bytes_done, expected_events=job.events_expected,
                                  started_at=job.started_at, partitions=job.parts, partitions_done=job.parts_done)
        return ExportView.model_construct(**{**dict(job.request), "status": job.status}, progress=progress,
                                          result=result)

    def check_target(project: str, destination: Any) -> None:
        """422 unless the destination's host, credentials and connection are allowed."""
        try:
            checked_secrets(settings, jobs, project, destination)
        except Invalid as exc:
            raise HTTPException(422, f"destination: {exc}") from None

    def connection_view(row: Any) -> ConnectionView:
        return ConnectionView(name=row.name, type=row.type, fields=row.fields, created_at=aware(row.created_at))

    @app.post("/api/connections", status_code=201, response_model=ConnectionView, responses=problems(409))
    def create_connection(body: ConnectionCreate, project: Project) -> ConnectionView:
        """Store credentials under a name; the response lists which fields are set, never their values."""
        fields = sorted(k for k, v in body.secrets.items() if v)
        if not jobs.create_connection(project, body.name, body.type, fields, sealer.seal(body.secrets)):
            raise HTTPException(409, f"connection {body.name!r} exists; DELETE it first to replace it")
        return connection_view(jobs.connection(project, body.name))

    @app.get("/api/connections", response_model=list[ConnectionView])
    def list_connections(project: Project) -> list[ConnectionView]:
        return [connection_view(row) for row in jobs.list_connections(project)]

    @app.delete("/api/connections/{name}", status_code=204, responses=problems(404))
    def delete_connection(name: str, project: Project) -> Response:
        if not jobs.delete_connection(project, name):
            raise HTTPException(404, f"no connection {name!r}")
        return Response(status_code=204)

    policies = PrivacyStore(jobs, sealer)
    app.include_router(privacy_router(policies, settings, Depends(project_of), problems, check_target))

    def check_privacy(project: str, request: ExportRequest) -> None:
        """422 if the project's privacy policy refuses the request (a filter on a denied property)."""
        version, rules, _ = policies.policy(project)
        try:
            Privacy(rules.stricter(request.privacy), version=version or None).narrowed(
                EventQuery.from_request(request, project))
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None

    app.include_router(schedule_router(jobs, settings.export, Depends(project_of), problems, check_target,
                                       check_privacy))
    app.include_router(stream_router(jobs, settings, Depends(project_of), problems, check_target, check_privacy))
    app.include_router(catalog_router(settings, Depends(project_of), problems, policies.for_export))
    app.include_router(events_export_router(settings, Depends(project_of), problems, check_privacy,
                                            policies.for_export))

    app.include_router(keys_router(jobs, Depends(project_of), problems))
    app.include_router(formats_router(Depends(project_of)))
    app.include_router(destinations_router(Depends(project_of)))
    app.include_router(console_router())

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def checked_request(body: ExportCreate, project: str) -> ExportRequest:
        """The export `body` asks for; 422 if its range is too long or the privacy policy refuses it."""
        request = ExportRequest.model_validate(body.model_dump(exclude=set(SERVER_FIELDS)))
        span = request.end_date - request.start_date
        if span > timedelta(days=settings.export.max_range_days):
            raise HTTPException(422, f"end_date - start_date is {span.days} days; the most is "
                                     f"{settings.export.max_range_days}: split the range")
        check_privacy(project, request)
        return request

    @app.post("/api/exports/preview", response_model=Preview, responses=problems(422, 503))
    def preview_export(body: ExportCreate, project: Project) -> Preview:
        """The first 20 events the export would hold, as JSON objects (the JSON Lines shape) with the
        privacy policy applied; nothing is created and the destination is not contacted."""
        request = checked_request(body, project)
        with closing(open_store(settings)) as store:
            try:
                rows, more = catalog.preview(store, request, project, policies.for_export(project, request))
            except Invalid as exc:
                raise HTTPException(422, str(exc)) from None
        return Preview(columns=list(dict.fromkeys(k for row in rows for k in row)), rows=rows, truncated=more)

    @app.post("/api/exports", status_code=202, response_model=ExportView, responses=problems(429))
    def create_export(body: ExportCreate, project: Project) -> ExportView:
        request = checked_request(body, project)
        check_target(project, request.destination)
        return view(jobs.create(project, request, settings.export.max_concurrent_exports))

    @app.get("/api/exports", response_model=ExportList)
    def list_exports(project: Project, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                     offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> ExportList:
        items, total = jobs.list(project, limit, offset)
        return ExportList(items=[view(j) for j in items], total=total, limit=limit, offset=offset)

    @app.get("/api/exports/{export_id}", response_model=ExportView, responses=problems(404))
    async def get_export(export_id: str, project: Project) -> ExportView:
        return view(await read(job_or_404, project, export_id))

    @app.get("/api/exports/{export_id}/download", response_class=FileResponse,
             responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                  "format": "binary"}}},
                              "description": "the file, with its format's Content-Type"},
                        206: {"description": "a range"},
                        **problems(403, 404, 409, 410, 416)})
    def download(export_id: str, request: Request,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                 expires: int | None = None, signature_: Annotated[str | None, Query(alias="signature")] = None) -> Response:
        if signature_ is not None and expires is not None:
            job = jobs.get_any(export_id)
            current = job is not None and job.expires_at is not None and int(job.expires_at.timestamp()) == expires
            if not (current and hmac.compare_digest(signature_.encode(), signature(job, expires).encode())):
                raise HTTPException(403, "the download link does not match this export (it was deleted, re-run "
                                         "or tampered with); ask for a new link")
            if expires < time.time():
                raise HTTPException(410, "the download link has expired")
        else:
            job = job_or_404(project_for(credentials), export_id)
        if job.status is ExportStatus.EXPIRED:
            raise HTTPException(410, f"export {export_id} expired at {job.expires_at:%Y-%m-%dT%H:%M:%SZ}")
        if job.status is not ExportStatus.COMPLETED:
            raise HTTPException(409, f"export {export_id} is {job.status.value}, not completed; poll its status")
        folder = settings.project_export_dir(job.project).resolve()
        path = Path(job.destination_path or "").resolve()
        if folder not in path.parents or not path.is_file():
            raise HTTPException(410, f"the file of export {export_id} is gone")
        return FileResponse(path, media_type=job.request.format.content_type, filename=path.name)

    @app.delete("/api/exports/{export_id}", status_code=204, responses=problems(404))
    def delete_export(export_id: str, project: Project) -> Response:
        job = job_or_404(project, export_id)
        if job.status in (ExportStatus.PENDING, ExportStatus.PROCESSING):
            jobs.request_cancel(project, export_id)
        else:
            if job.destination_path and job.request.destination.type == "download":  # remote files are the user's
                Path(job.destination_path).unlink(missing_ok=True)
            jobs.delete(project, export_id)
        return Response(status_code=204)

    @app.post("/api/exports/{export_id}/cancel", status_code=202, response_model=ExportView,
              responses=problems(404, 409))
    def cancel_export(export_id: str, project: Project) -> ExportView:
        """Stop a pending or running export (its worker stops within a second, leaving no file); unlike
        DELETE, a finished export is left alone: 409."""
        job = job_or_404(project, export_id)
        if job.status not in (ExportStatus.PENDING, ExportStatus.PROCESSING):
            raise HTTPException(409, f"export {export_id} is {job.status.value}; only a pending or processing export "
                                     "can be cancelled")
        jobs.request_cancel(project, export_id)
        return view(job_or_404(project, export_id))

    @app.post("/api/exports/{export_id}/retry", status_code=202, response_model=ExportView,
              responses=problems(404, 409, 429))
    def retry_export(export_id: str, project: Project) -> ExportView:
        job = job_or_404(project, export_id)
        if not jobs.retry(project, export_id, settings.export.max_concurrent_exports):
            if job.status is ExportStatus.FAILED:
                raise HTTPException(409, f"export {export_id} is still stopping its partitions; retry in a few seconds")
            raise HTTPException(409, f"export {export_id} is {job.status.value}; only a failed export can be retried")
        return view(job_or_404(project, export_id))

    @app.post("/api/events", response_model=IngestResult, responses=problems(413, 415, 422, 503),
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                  "application/x-ndjson": {"schema": {"type": "string"}}}}})
    async def ingest_events(request: Request, project: Project) -> IngestResult:
        """Events as a JSON array or JSON Lines (`event`, `distinct_id`, `timestamp`, optional `uuid`
        and `properties`), into the caller's project; events whose uuid is stored are skipped."""
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        suffix = {"application/json": ".json", "application/x-ndjson": ".jsonl", "application/jsonl": ".jsonl"}.get(kind)
        if suffix is None:
            raise HTTPException(415, "send application/json (an array of events) or application/x-ndjson (JSON Lines)")
        body = await request.body()  # at most max_body_bytes: RequestGuard stops a longer one
        return await run_in_threadpool(ingest_body, body, suffix, project)

    def ingest_body(body: bytes, suffix: str, project: str) -> IngestResult:
        with spooled(settings.data_dir, body, suffix) as spool:  # a full disk: Storage, so 503
            try:
                store = open_store(settings.model_copy(update={"duckdb_write_memory_limit": settings.api_ingest_memory_limit,
                                                               "duckdb_threads": 1}), read_only=False)
            except Storage as exc:
                raise HTTPException(503, "the event store is busy with exports; retry shortly",
                                    headers={"Retry-After": "5"}) from exc
            try:
                return IngestResult(ingested=ingest_file(store, spool, project, name="body"))
            except Invalid as exc:
                raise HTTPException(422, hide_paths(str(exc))) from exc
            except OutOfMemory:
                raise HTTPException(413, f"these events need more than the {settings.api_ingest_memory_limit} an upload "
                                         "may use to load: send fewer events per request") from None
            finally:
                store.close()

    registry = CollectorRegistry()
    by_status = Gauge("analytics_export_exports", "Exports in the job store by status", ["status"], registry=registry)
    queue_depth = Gauge("analytics_export_queue_depth", "Exports waiting for a worker", registry=registry)
    exported_events = Gauge("analytics_export_events_exported", "Events in completed exports", registry=registry)
    exported_bytes = Gauge("analytics_export_bytes_exported", "Bytes of completed exports", registry=registry)
    duration_sum = Gauge("analytics_export_export_duration_seconds_sum", "Run time of completed exports",
                         registry=registry)
    duration_count = Gauge("analytics_export_export_duration_seconds_count", "Completed exports timed",
                           registry=registry)

    stream_status = Gauge("analytics_export_streams", "Streams by status", ["status"], registry=registry)
    stream_lag_max = Gauge("analytics_export_stream_lag_seconds_max", "The largest lag of any stream",
                           registry=registry)
    token = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None
    if token:  # names projects and streams: only for whoever holds the metrics token
        stream_lag = Gauge("analytics_export_stream_lag_seconds", "Age of the oldest event a stream has read "
                           "but not yet delivered (0: caught up)", ["project", "stream"], registry=registry)
        stream_delivered = Gauge("analytics_export_stream_delivered_events", "Events a stream delivered",
                                 ["project", "stream"], registry=registry)

    @app.get("/metrics", responses={200: {"content": {"text/plain": {}}}, **problems(401)})
    def metrics(request: Request) -> Response:
        """Prometheus gauges. With ANALYTICS_EXPORT_METRICS_TOKEN set, it needs that token as a bearer
        and adds per-stream series (project and stream labels); without it, only totals are shown.
        (The header is read here, not declared: the API-key scheme does not apply to this route.)"""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if token and not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)):
            raise HTTPException(401, "send the metrics token (ANALYTICS_EXPORT_METRICS_TOKEN) as "
                                     "`Authorization: Bearer TOKEN`", headers={"WWW-Authenticate": "Bearer"})
        counts = jobs.status_counts()
        for status in ExportStatus:
            by_status.labels(status.value).set(counts.get(status.value, 0))
        queue_depth.set(counts.get(ExportStatus.PENDING.value, 0))
        totals = jobs.totals()
        exported_events.set(totals["events"])
        exported_bytes.set(totals["bytes"])
        duration_sum.set(totals["seconds"])
        duration_count.set(totals["count"])
        if token:
            stream_lag.clear()
            stream_delivered.clear()
        statuses = {"active": 0, "paused": 0, "failing": 0}
        lag_max = 0.0
        for stream in StreamStore(jobs).all():
            statuses[stream.status] = statuses.get(stream.status, 0) + 1
            lag_max = max(lag_max, stream.lag_seconds or 0)
            if token:
                stream_lag.labels(stream.project, stream.id).set(stream.lag_seconds or 0)
                stream_delivered.labels(stream.project, stream.id).set(stream.delivered_events)
        stream_lag_max.set(lag_max)
        for status, count in statuses.items():
            stream_status.labels(status).set(count)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_environment() -> FastAPI:
    """The app for uvicorn's worker processes: settings from `ANALYTICS_EXPORT_*`, set by `serve`."""
    settings = Settings()
    return create_app(settings, JobStore.for_data_dir(settings.data_dir, settings.database_url))
