"""An export as files: each part written by the format's writer, through its codec, to an upload of the
destination; a split export's manifest is written last and vouches for every part."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from ..bytesinks import ForwardingSink
from ..destinations import BackgroundUpload, Destination
from ..errors import Invalid
from ..formats import Copied, Writer, open_sink, open_writer, writer_class, writer_for
from ..enums import ExportStatus, codec_problem
from ..models import ExportRequest, ExportResult
from ..privacy.policy import Privacy
from ..sources import EventQuery, EventSource
from .batches import Progress, privacy_fields, scanned
from .copied import EngineCopy, copied_plan

if TYPE_CHECKING:
    import pyarrow as pa

PROBE_ROWS = 1_000


@dataclass
class Part:
    """One file of an export being written: writer -> (compressor) -> counter -> upload."""

    name: str
    upload: BackgroundUpload
    counted: ForwardingSink
    sink: ForwardingSink
    writer: Writer
    events: int = 0

    @classmethod
    def open(cls, request: ExportRequest, destination: Destination, name: str, schema: pa.Schema,
             digest: bool, fragment: bool = False) -> Part:
        writer_cls = writer_for(request)
        upload = BackgroundUpload(destination.open(name))
        counted = HashingSink(upload) if digest else ForwardingSink(upload)
        try:
            writer, sink = open_writer(writer_cls, counted, schema, request.format, request.compression, fragment)
        except BaseException:
            upload.abort()
            raise
        return cls(name, upload, counted, sink, writer)

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write(self.writer.encode(batch))
        self.events += batch.num_rows

    @property
    def bytes(self) -> int:
        return self.counted.position

    def commit(self) -> dict:
        """Finish the file and make it visible; returns its manifest entry."""
        try:
            self.writer.close()
            self.sink.finish()
            uri = self.upload.commit()
        except BaseException:
            self.abort()
            raise
        self.writer.release()
        entry = {"name": self.name, "uri": uri, "events": self.events, "bytes": self.bytes}
        if isinstance(self.counted, HashingSink):
            entry["sha256"] = self.counted.sha256.hexdigest()
        return entry

    def abort(self) -> None:
        self.counted.discard()
        try:
            self.upload.abort()
        finally:
            self.writer.release()


class HashingSink(ForwardingSink):
    """Counts and hashes (sha256) the bytes it forwards, for the manifest."""

    def __init__(self, target) -> None:
        super().__init__(target)
        self.sha256 = hashlib.sha256()

    def forward(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        self.target.write(data)


def deliver(request: ExportRequest, project: str, destination: Destination, files: list[dict], *,
            manifest: bool, privacy: Privacy | None = None, should_stop: Callable[[], bool] | None = None) -> str:
    """Finish an export whose `files` are committed, writing the manifest last if `manifest`; returns
    what `ExportResult.destination_path` shows."""
    uris = [entry["uri"] for entry in files]
    if manifest:
        uris.append(write_manifest(request, project, destination, files, privacy))
    return destination.finish(uris, should_stop or (lambda: False))


def export_query(request: ExportRequest, project: str, privacy: Privacy | None = None) -> EventQuery:
    """The query whose batches `request`'s writer takes (property columns, timestamp type), without
    the properties `privacy` keeps out."""
    writer_cls = writer_class(request.format)
    query = EventQuery.from_request(request, project, property_columns=not request.format.spec.nested_properties,
                                    text_timestamps=writer_cls.text_timestamps)
    query = replace(query, read_memory_mb=writer_cls.read_memory_mb)
    return privacy.query(query) if privacy is not None else query


def completed(request: ExportRequest, files: list[dict], path: str, started: datetime,
              privacy: Privacy | None = None) -> ExportResult:
    return ExportResult(
        export_id=request.id,
        status=ExportStatus.COMPLETED,
        total_events=sum(entry["events"] for entry in files),
        file_size=sum(entry["bytes"] for entry in files),
        destination_path=path,
        started_at=started,
        completed_at=datetime.now(timezone.utc),
        **privacy_fields(privacy),
    )




def write_files(
    request: ExportRequest,
    source: EventSource,
    destination: Destination,
    *,
    project: str,
    name: Callable[[int], str],
    split: bool = False,
    fragment: bool = False,
    digest: bool = False,
    empty_file: bool = True,
    batch_size: int = 16_384,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    privacy: Privacy | None = None,
    scope: Callable[[EventQuery], EventQuery] | None = None,
    engine: bool = True,
) -> tuple[list[dict], Progress]:
    """Write the events of `request` as committed files `name(1)`, `name(2)`, ... (one unless `split`;
    without events, one empty file if `empty_file`, else none); returns their manifest entries. If
    anything fails, the files already committed are removed. `scope` adjusts the query (retention
    reads as of a watermark, with ids). With `engine`, one file the store's engine can write (`copied.py`)
    is written by it."""
    problem = codec_problem(request.format, request.compression)
    if problem is not None:  # an export stored before its format stopped offering the codec
        raise Invalid(problem)
    query = export_query(request, project, privacy)
    if scope is not None:
        query = scope(query)
    plan = copied_plan(request, source, query, privacy) if engine and not split and empty_file else None
    if plan is not None:
        return write_copied(request, source, destination, query, plan, name(1), digest=digest, fragment=fragment,
                            on_progress=on_progress, should_stop=should_stop)
    max_events, max_bytes = request.destination.split_limits() if split else (None, None)
    done: list[dict] = []
    part: Part | None = None
    progress = Progress()

    def next_part() -> Part:
        return Part.open(request, destination, name(len(done) + 1), query.schema, digest, fragment)

    def commit(part: Part) -> None:
        before = part.bytes
        done.append(part.commit())
        progress.bytes += done[-1]["bytes"] - before  # trailers and flushed buffers

    batch_size = min(batch_size, writer_for(request).batch_rows or batch_size)
    batches = scanned(source, query, batch_size, privacy, should_stop, request.id)
    try:
        for batch in batches:
            offset = 0
            while offset < batch.num_rows:
                part = part or next_part()
                take = fit(batch.num_rows - offset, part, progress, max_events, max_bytes)
                before = part.bytes
                part.write(batch.slice(offset, take))
                offset += take
                progress.events += take
                progress.bytes += part.bytes - before
                if (max_events is not None and part.events >= max_events) or (
                        max_bytes is not None and part.bytes >= max_bytes):
                    part, full = None, part
                    commit(full)
            if on_progress is not None:
                on_progress(progress)
        part = part or (None if done or not empty_file else next_part())  # an empty export is still a valid file
        if part is not None:
            part, last = None, part
            commit(last)
    except BaseException:
        if part is not None:
            part.abort()
        for entry in done:
            destination.remove(entry["name"])
        raise
    finally:
        batches.close()  # stops the source thread now, not whenever a traceback holding it is freed
    if on_progress is not None:
        on_progress(progress)
    return done, progress


def write_copied(request: ExportRequest, source: EventSource, destination: Destination, query: EventQuery,
                 plan: Copied, name: str, *, digest: bool, fragment: bool,
                 on_progress: Callable[[Progress], None] | None,
                 should_stop: Callable[[], bool] | None) -> tuple[list[dict], Progress]:
    """`write_files` for one file that the store's engine writes (`copied.py`): the writer's head, the
    engine's bytes and the writer's tail (neither in a fragment) go through the codec to the upload,
    committed only whole."""
    writer_cls = writer_for(request)
    upload = BackgroundUpload(destination.open(name))
    counted = HashingSink(upload) if digest else ForwardingSink(upload)
    progress = Progress()
    engine = EngineCopy(source, query, plan, should_stop, request.id)  # type: ignore[arg-type]
    total = source.estimate(query) if on_progress is not None else 0
    try:
        sink = open_sink(counted, request.format, request.compression, fragment)
        if not fragment:
            sink.write(plan.head)
        for data in engine:
            if data:
                sink.write(data)
            if on_progress is not None:
                progress.events = max(progress.events, int((engine.fraction() or 0) * total))
                progress.bytes = counted.position
                on_progress(progress)
        if not fragment:
            sink.write(writer_cls.tail(engine.rows))
        sink.finish()
        uri = upload.commit()
    except BaseException:
        counted.discard()
        upload.abort()
        raise
    progress.events, progress.bytes = engine.rows, counted.position
    if on_progress is not None:
        on_progress(progress)
    entry = {"name": name, "uri": uri, "events": engine.rows, "bytes": counted.position}
    if isinstance(counted, HashingSink):
        entry["sha256"] = counted.sha256.hexdigest()
    return [entry], progress


def fit(rows: int, part: Part, progress: Progress, max_events: int | None, max_bytes: int | None) -> int:
    """How many of `rows` go into `part` so it stays within its limits. Bytes are estimated from the
    export's bytes per event so far; until there is a rate, slices of PROBE_ROWS measure it."""
    if max_events is not None:
        rows = min(rows, max_events - part.events)
    if max_bytes is not None:
        if progress.events and progress.bytes:
            rows = min(rows, max(1, int((max_bytes - part.bytes) / (progress.bytes / progress.events))))
        else:
            rows = min(rows, PROBE_ROWS)
    return rows


def write_manifest(request: ExportRequest, project: str, destination: Destination, files: list[dict],
                   privacy: Privacy | None = None) -> str:
    """The manifest of a split export, committed after every part: a reader trusts only what it lists."""
    body = {
        "export_id": request.id,
        "project": project,
        "format": request.format.value,
        "compression": request.compression.value if request.compression else None,
        "start_date": request.start_date.isoformat(),
        "end_date": request.end_date.isoformat(),
        "columns": list(export_query(request, project, privacy).names),  # `include` adds uuid, inserted_at
        "total_events": sum(f["events"] for f in files),
        "total_bytes": sum(f["bytes"] for f in files),
        "files": files,
        "privacy": privacy_fields(privacy),
        "completed_at": datetime.now(timezone.utc).isoformat(),
    }
    upload = destination.open(request.manifest_name)
    try:
        upload.write(json.dumps(body, indent=2).encode())
        return upload.commit()
    except BaseException:
        upload.abort()
        raise
