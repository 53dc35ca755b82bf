"""The REST API, assembled: one router per resource (exports, connections, alerts, events, schedules,
streams, privacy, keys, formats, destinations, metrics, the console, the API docs and the guide) over the
shared state in `deps.Api`, behind the request guard that bounds every body."""

from fastapi import Depends, FastAPI

from ..config import Settings
from ..inbox import clean_inbox
from ..store.jobs import JobStore
from .alerts import alerts_router
from .catalog import catalog_router
from .connections import connections_router
from .console import console_router
from .deps import Api, Problem, problems
from .destinations import destinations_router
from .docs import docs_router
from .errors import add_error_handlers
from .events_export import events_export_router
from .exports import exports_router
from .formats import formats_router
from .guide import guide_router
from .ingest import ingest_router
from .keys import keys_router
from .limits import BodyLimit, BodyLimits, RequestGuard
from .metrics import metrics_router
from .privacy import privacy_router
from .schedules import schedule_router
from .streams import stream_router
from .text import storable_text


def create_app(settings: Settings, jobs: JobStore) -> FastAPI:
    """The API: each router gets the shared state (`Api`) it reads; the request guard bounds every body."""
    api = Api(settings, jobs)
    app = FastAPI(title="analytics-export", version="0.1.0", docs_url=None, redoc_url=None,
                  dependencies=[Depends(storable_text)],
                  responses={401: {"model": Problem}, 422: {"model": Problem},
                             408: {"model": Problem, "description": "the request body arrived too slowly"},
                             413: {"model": Problem, "description": "the request body is over its limit"}})
    clean_inbox(settings.data_dir)  # what ingests killed with an earlier process left
    add_error_handlers(app, settings)
    bulk = BodyLimit(settings.max_body_bytes, "send smaller batches")
    app.add_middleware(
        RequestGuard, authenticate=api.authenticate,
        limits=BodyLimits(BodyLimit(settings.max_json_body_bytes, "send fewer or shorter values"),
                          {("POST", "/api/events"): bulk, ("POST", "/api/projects/{project}/suppressions"): bulk}),
        idle_timeout=settings.body_idle_timeout_seconds, body_timeout=settings.body_timeout_seconds)

    app.include_router(docs_router(app.openapi_url, app.title))
    app.include_router(guide_router())
    app.include_router(connections_router(api))
    app.include_router(alerts_router(api))
    app.include_router(privacy_router(api.policies, settings, api.project, problems, api.check_target))
    app.include_router(schedule_router(jobs, settings.export, api.project, problems, api.check_target,
                                       api.check_privacy))
    app.include_router(stream_router(jobs, settings, api.project, problems, api.check_target, api.check_privacy))
    app.include_router(catalog_router(settings, api.project, problems, api.policies.for_export))
    app.include_router(events_export_router(settings, api.project, problems, api.check_privacy,
                                            api.policies.for_export))
    app.include_router(keys_router(jobs, api.project, problems))
    app.include_router(formats_router(api.project))
    app.include_router(destinations_router(api))
    app.include_router(console_router())

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(exports_router(api))
    app.include_router(ingest_router(api))
    app.include_router(metrics_router(api))
    return app


def app_from_environment() -> FastAPI:
    """The app for uvicorn's worker processes: settings from `ANALYTICS_EXPORT_*`, set by `serve`."""
    settings = Settings()
    return create_app(settings, JobStore.for_data_dir(settings.data_dir, settings.database_url))
