"""`GET /api/events/export`: matching events streamed straight into the response, without a job, for
tools that pull (as Mixpanel's raw export does). The export pipeline writes into a bounded queue
that the response drains, so memory stays bounded and a slow client slows the scan down."""


import json
import queue
import threading
from datetime import datetime, timedelta
from typing import Annotated, Any, AsyncIterator, Callable

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..checks import describe_errors
from ..config import Settings
from ..destinations import Destination
from ..errors import Cancelled, Invalid, Limited, Storage
from ..enums import Compression, ExportFormat
from ..models import ExportRequest, FormatName, IncludeColumn
from ..pipeline.files import write_files
from ..sources.stores import open_store

QUEUE_CHUNKS = 16
PIECE = 64 << 10
DONE = object()


def hand_over(chunks: queue.Queue, gone: threading.Event, item: object) -> bool:
    """Put `item` in the queue unless the client has gone (then nobody drains it: give up)."""
    while not gone.is_set():
        try:
            chunks.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


class QueueUpload:
    """The one 'file' of a streamed export: its bytes handed to the response through a queue, in
    pieces of at most PIECE bytes, so a client that stops reading holds about 1 MB of memory."""

    def __init__(self, chunks: queue.Queue, gone: threading.Event) -> None:
        self.chunks = chunks
        self.gone = gone

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), PIECE):
            if not hand_over(self.chunks, self.gone, bytes(view[start:start + PIECE])):
                raise Cancelled("the client went away")
        return len(view)

    def commit(self) -> str:
        if not hand_over(self.chunks, self.gone, DONE):
            raise Cancelled("the client went away")
        return "response"

    def abort(self) -> None:
        """Nothing to take back: the response ends without its last chunk, so no client takes a
        truncated stream for a complete one."""


class QueueDestination(Destination):
    manifest = False

    def __init__(self, chunks: queue.Queue, gone: threading.Event) -> None:
        self.chunks = chunks
        self.gone = gone

    def open(self, name: str) -> QueueUpload:
        return QueueUpload(self.chunks, self.gone)


def events_export_router(settings: Settings, project_dependency: Any, problems: Any,
                         check_privacy: Callable[[str, ExportRequest], Any],
                         privacy_for: Callable[[str, ExportRequest], Any]) -> APIRouter:
    router = APIRouter(tags=["events"])
    Project = Annotated[str, project_dependency]
    running: dict[str, int] = {}  # project -> streamed exports this API process runs
    lock = threading.Lock()

    def take(project: str) -> None:
        """Count one more streamed export of `project`; Limited at max_concurrent_exports (each runs a
        scan in this process, as a queued export does in a worker)."""
        limit = settings.export.max_concurrent_exports
        with lock:
            if running.get(project, 0) >= limit:
                raise Limited(f"{limit} streamed exports of this project are already running on this server "
                              "process, the most at once (max_concurrent_exports); retry once one has finished")
            running[project] = running.get(project, 0) + 1

    def give_back(project: str) -> None:
        with lock:
            running[project] -= 1
            if not running[project]:
                del running[project]

    @router.get("/api/events/export", response_class=StreamingResponse, responses={
        200: {"content": {"application/x-ndjson": {}, "text/csv": {}, "application/json": {}}},
        **problems(422, 429, 503)})
    def export_events(
        request: Request, project: Project,
        start: Annotated[datetime, Query(description="inclusive, ISO 8601 (naive means UTC)")],
        end: Annotated[datetime, Query(description="exclusive")],
        format: FormatName = ExportFormat.JSON_LINES,
        event: Annotated[list[str] | None, Query(description="event names to keep (repeat); default all")] = None,
        properties: Annotated[list[str] | None, Query(description="properties to keep (repeat); default all")] = None,
        filters: Annotated[str | None, Query(description='JSON list of filters, as in POST /api/exports')] = None,
        time_field: Annotated[str, Query(pattern="^(timestamp|inserted_at)$")] = "timestamp",
        csv_formula_guard: Annotated[bool, Query(description="CSV: cells a spreadsheet would run as formulas "
                                                             "start with `'` (as in POST /api/exports)")] = False,
        include: Annotated[list[IncludeColumn] | None, Query(
            max_length=2, description="extra columns (repeat): uuid, inserted_at (as in POST /api/exports)")] = None,
    ) -> StreamingResponse:
        """The events of [start, end), streamed (chunked) in `format`; gzip when the client accepts it
        for text formats. The project's privacy policy applies. A response cut short ends without its
        final chunk, so a client sees it as incomplete."""
        gzip = not format.spec.codec_inside_file and Compression.GZIP in format.spec.codecs and "gzip" in \
            request.headers.get("accept-encoding", "")
        try:
            spec = ExportRequest(start_date=start, end_date=end, format=format, events=event or [],
                                 properties=properties or None, filters=json.loads(filters) if filters else [],
                                 compression=Compression.GZIP if gzip else None, time_field=time_field,
                                 csv_formula_guard=csv_formula_guard, include=include or [])
        except (json.JSONDecodeError, RecursionError) as exc:
            raise HTTPException(422, f"filters is not a JSON list of filters: {type(exc).__name__}") from None
        except ValidationError as exc:
            raise HTTPException(422, describe_errors(exc.errors())) from None
        span = spec.end_date - spec.start_date
        if span > timedelta(days=settings.export.max_range_days):
            raise HTTPException(422, f"end - start is {span.total_seconds() / 86400:.1f} days; the most is "
                                     f"{settings.export.max_range_days}: split the range")
        check_privacy(project, spec)
        privacy = privacy_for(project, spec)
        take(project)
        try:
            store = open_store(settings)
        except Storage as exc:
            give_back(project)
            raise HTTPException(503, "the event store is busy; retry shortly", headers={"Retry-After": "5"}) from exc
        chunks: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        gone = threading.Event()

        def run() -> None:
            try:
                write_files(spec, store, QueueDestination(chunks, gone), project=project, name=lambda _: "response",
                            privacy=privacy, batch_size=settings.export.batch_size, should_stop=gone.is_set,
                            engine=settings.export.engine_writes)
            except BaseException as exc:  # handed to the response, which ends without its last chunk
                hand_over(chunks, gone, exc)
            finally:
                store.close()
                give_back(project)

        def next_chunk() -> object:
            try:
                return chunks.get(timeout=0.5)
            except queue.Empty:
                return None

        # The first chunk (or the error) before the status is sent: a query the store refuses is a 4xx.
        thread = threading.Thread(target=run, name="events-export", daemon=True)
        thread.start()
        first = chunks.get()
        if isinstance(first, BaseException):
            gone.set()
            if isinstance(first, Invalid):
                raise HTTPException(422, str(first))
            raise first  # a Storage error: the app's handler answers 503 without server paths

        async def body() -> AsyncIterator[bytes]:
            """Chunks as the export makes them. A client that leaves cancels this generator at its
            await: `gone` then stops the export, which releases the event store within a batch."""
            item: object = first
            try:
                while item is not DONE:
                    if isinstance(item, BaseException):
                        raise item
                    if item is not None:
                        yield item
                    item = await run_in_threadpool(next_chunk)
            finally:
                gone.set()

        headers = {"Content-Encoding": "gzip"} if gzip else {}
        headers["X-Privacy-Policy-Version"] = str(privacy.version or 0)
        return StreamingResponse(body(), media_type=format.content_type, headers=headers)

    return router

