"""`GET /metrics`: Prometheus gauges of exports and streams, per-stream series behind the metrics token."""

import hmac

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from ..enums import ExportStatus
from ..store.streams import StreamStore
from .deps import Api, problems


def metrics_router(api: Api) -> APIRouter:
    router = APIRouter()

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
    token = api.settings.metrics_token.get_secret_value().encode() if api.settings.metrics_token else None
    if token:  # names projects and streams: only for whoever holds the metrics token
        stream_lag = Gauge("analytics_export_stream_lag_seconds", "Age of the oldest event a stream has read "
                           "but not yet delivered (0: caught up)", ["project", "stream"], registry=registry)
        stream_delivered = Gauge("analytics_export_stream_delivered_events", "Events a stream delivered",
                                 ["project", "stream"], registry=registry)

    @router.get("/metrics", responses={200: {"content": {"text/plain": {}}}, **problems(401)})
    def metrics(request: Request) -> Response:
        """Prometheus gauges. With ANALYTICS_EXPORT_METRICS_TOKEN set, it needs that token as a bearer
        and adds per-stream series (project and stream labels); without it, only totals are shown.
        (The header is read here, not declared: the API-key scheme does not apply to this route.)"""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if token and not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)):
            raise HTTPException(401, "send the metrics token (ANALYTICS_EXPORT_METRICS_TOKEN) as "
                                     "`Authorization: Bearer TOKEN`", headers={"WWW-Authenticate": "Bearer"})
        counts = api.jobs.status_counts()
        for status in ExportStatus:
            by_status.labels(status.value).set(counts.get(status.value, 0))
        queue_depth.set(counts.get(ExportStatus.PENDING.value, 0))
        totals = api.jobs.totals()
        exported_events.set(totals["events"])
        exported_bytes.set(totals["bytes"])
        duration_sum.set(totals["seconds"])
        duration_count.set(totals["count"])
        if token:
            stream_lag.clear()
            stream_delivered.clear()
        statuses = {"active": 0, "paused": 0, "failing": 0}
        lag_max = 0.0
        for stream in StreamStore(api.jobs).all():
            statuses[stream.status] = statuses.get(stream.status, 0) + 1
            lag_max = max(lag_max, stream.lag_seconds or 0)
            if token:
                stream_lag.labels(stream.project, stream.id).set(stream.lag_seconds or 0)
                stream_delivered.labels(stream.project, stream.id).set(stream.delivered_events)
        stream_lag_max.set(lag_max)
        for status, count in statuses.items():
            stream_status.labels(status).set(count)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


    return router
