"""An export as files: each part written by the format's writer, through its codec, to an upload of the
destination; a split export's manifest is written last and vouches for every part."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterator

from ..bytesinks import ForwardingSink
from ..destinations import BackgroundUpload, Destination
from ..errors import Invalid
from ..formats import Copied, Writer, open_sink, open_writer, writer_class, writer_for
from ..enums import ExportModel, ExportStatus, codec_problem
from ..models import ExportRequest, ExportResult
from ..privacy.policy import Privacy
from ..sources import EventQuery, EventSource
from .batches import PREFETCH, Progress, privacy_fields, read_ahead, scanned, stopping
from .copied import EngineCopy, can_copy, copied_plan

if TYPE_CHECKING:
    import pyarrow as pa

    from ..derived import Derived

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


@dataclass
class Filling:
    """Files filled in turn from a stream of rows: each opened by `open_part(n)` (n from 1) when rows
    come, committed once it reaches a split limit or on `commit`; `done` holds their manifest entries,
    each with `described` added. `discard`, after a failure, aborts the open one and removes the rest."""

    destination: Destination
    open_part: Callable[[int], Part]
    max_events: int | None
    max_bytes: int | None
    progress: Progress = field(default_factory=Progress)
    done: list[dict] = field(default_factory=list)
    part: Part | None = None
    described: dict = field(default_factory=dict)

    def write(self, rows: pa.RecordBatch) -> None:
        offset = 0
        while offset < rows.num_rows:
            if self.part is None:
                self.part = self.open_part(len(self.done) + 1)
            take = fit(rows.num_rows - offset, self.part, self.progress, self.max_events, self.max_bytes)
            before = self.part.bytes
            self.part.write(rows.slice(offset, take))
            offset += take
            self.progress.events += take
            self.progress.bytes += self.part.bytes - before
            if (self.max_events is not None and self.part.events >= self.max_events) or (
                    self.max_bytes is not None and self.part.bytes >= self.max_bytes):
                self.commit()

    def commit(self) -> None:
        """Finish the open part, if any, and make it visible."""
        if self.part is None:
            return
        part, self.part = self.part, None
        before = part.bytes
        self.done.append({**part.commit(), **self.described})
        self.progress.bytes += self.done[-1]["bytes"] - before  # trailers and flushed buffers

    def discard(self) -> None:
        if self.part is not None:
            part, self.part = self.part, None
            part.abort()
        for entry in self.done:
            self.destination.remove(entry["name"])


class HashingSink(ForwardingSink):
    """Counts and hashes (sha256) the bytes it forwards, for the manifest."""

    def __init__(self, target) -> None:
        super().__init__(target)
        self.sha256 = hashlib.sha256()

    def forward(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        self.target.write(data)


def deliver(request: ExportRequest, project: str, destination: Destination, files: list[dict], *,
            manifest: bool, privacy: Privacy | None = None, should_stop: Callable[[], bool] | None = None,
            notes: dict | None = None) -> str:
    """Finish an export whose `files` are committed, writing the manifest (with `notes`) last if `manifest`;
    returns what `ExportResult.destination_path` shows."""
    uris = [entry["uri"] for entry in files]
    if manifest:
        uris.append(write_manifest(request, project, destination, files, privacy, notes))
    return destination.finish(uris, should_stop or (lambda: False))


def export_query(request: ExportRequest, project: str, privacy: Privacy | None = None) -> EventQuery:
    """The query whose batches `request`'s writer takes (property columns, timestamp type), without
    the properties `privacy` keeps out."""
    writer_cls = writer_class(request.format)
    query = EventQuery.from_request(request, project, property_columns=not request.format.spec.nested_properties,
                                    text_timestamps=writer_cls.text_timestamps)
    query = replace(query, read_memory_mb=writer_cls.read_memory_mb)
    return privacy.query(query) if privacy is not None else query


def columns(request: ExportRequest, project: str, privacy: Privacy | None) -> list[str]:
    """The columns of `request`'s files (`include` adds uuid, inserted_at to events)."""
    if request.model is ExportModel.EVENTS:
        return list(export_query(request, project, privacy).names)
    from ..derived import module

    return module(request.model).SCHEMA.names


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
    check_codec(request)
    query = export_query(request, project, privacy)
    if scope is not None:
        query = scope(query)
    if engine and not split and empty_file and can_copy(source, privacy):
        total = source.estimate(query)
        plan = copied_plan(request, query, total, fragment)
        if plan is not None:
            return write_copied(request, source, destination, query, plan, total, name(1), digest=digest,
                                fragment=fragment, on_progress=on_progress, should_stop=should_stop)
    max_events, max_bytes = request.destination.split_limits() if split else (None, None)
    filling = Filling(destination, lambda n: Part.open(request, destination, name(n), query.schema, digest, fragment),
                      max_events, max_bytes)
    batch_size = min(batch_size, writer_for(request).batch_rows or batch_size)
    return fill(filling, scanned(source, query, batch_size, privacy, None, request.id), on_progress, should_stop,
                request.id, empty_file)


def check_codec(request: ExportRequest) -> None:
    """Invalid for an export stored before its format stopped offering its codec."""
    problem = codec_problem(request.format, request.compression)
    if problem is not None:
        raise Invalid(problem)


def write_derived(request: ExportRequest, rows: Derived, destination: Destination, *, name: Callable[[int], str],
                  split: bool, digest: bool, on_progress: Callable[[Progress], None] | None,
                  should_stop: Callable[[], bool] | None) -> tuple[list[dict], Progress]:
    """`write_files` for the rows of a derived model (persons, sessions)."""
    check_codec(request)
    max_events, max_bytes = request.destination.split_limits() if split else (None, None)
    filling = Filling(destination, lambda n: Part.open(request, destination, name(n), rows.schema, digest),
                      max_events, max_bytes)
    return fill(filling, read_ahead(rows.batches, PREFETCH), on_progress, should_stop, request.id, True)


def fill(filling: Filling, batches: Iterator[pa.RecordBatch], on_progress: Callable[[Progress], None] | None,
         should_stop: Callable[[], bool] | None, export_id: str, empty_file: bool) -> tuple[list[dict], Progress]:
    """Write `batches` into `filling`'s files and commit them; Cancelled before a batch once
    `should_stop()` says so. If anything fails, the files already committed are removed."""
    try:
        for batch in stopping(batches, should_stop, export_id):
            filling.write(batch)
            if on_progress is not None:
                on_progress(filling.progress)
        if filling.part is None and not filling.done and empty_file:  # an empty export is still a valid file
            filling.part = filling.open_part(1)
        filling.commit()
    except BaseException:
        filling.discard()
        raise
    finally:
        batches.close()  # stops the source thread now, not whenever a traceback holding it is freed
    if on_progress is not None:
        on_progress(filling.progress)
    return filling.done, filling.progress


def write_copied(request: ExportRequest, source: EventSource, destination: Destination, query: EventQuery,
                 plan: Copied, total: int, name: str, *, digest: bool, fragment: bool,
                 on_progress: Callable[[Progress], None] | None,
                 should_stop: Callable[[], bool] | None) -> tuple[list[dict], Progress]:
    """`write_files` for one file that the store's engine writes (`copied.py`): the writer's head, the
    engine's bytes and the writer's tail (neither in a fragment) go through the codec to the upload,
    committed only whole."""
    writer_cls = writer_for(request)
    upload = BackgroundUpload(destination.open(name))
    counted = HashingSink(upload) if digest else ForwardingSink(upload)
    progress = Progress()
    engine = EngineCopy(source, query, plan, total, should_stop, request.id)  # type: ignore[arg-type]
    try:
        sink = open_sink(counted, request.format, request.compression, fragment)
        if not fragment:
            sink.write(plan.head)
        for data in engine:
            if data:
                sink.write(data)
            if on_progress is not None:
                progress.events = max(progress.events, engine.events())
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
                   privacy: Privacy | None = None, notes: dict | None = None) -> str:
    """The manifest of a split export, committed after every part: a reader trusts only what it lists."""
    body = {
        "export_id": request.id,
        "project": project,
        "format": request.format.value,
        "compression": request.compression.value if request.compression else None,
        "start_date": request.start_date.isoformat(),
        "end_date": request.end_date.isoformat(),
        "model": request.model.value,
        "columns": columns(request, project, privacy),
        "total_events": sum(f["events"] for f in files),
        "total_bytes": sum(f["bytes"] for f in files),
        "files": files,
        "privacy": privacy_fields(privacy),
        **(notes or {}),
        "completed_at": datetime.now(timezone.utc).isoformat(),
    }
    return destination.put(request.manifest_name, json.dumps(body, indent=2).encode())
