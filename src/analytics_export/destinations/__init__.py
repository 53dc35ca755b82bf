"""Destinations: where an export's files go. Each file is an upload written in parts, then committed
or aborted; one module per destination type, looked up in `registry.py`."""

from __future__ import annotations

import queue
import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, ClassVar, Iterator, Protocol

from ..errors import ExportError, Invalid, NotFound, Upload
from . import registry
from .specs import FileLayout, render_folder

if TYPE_CHECKING:
    from ..config import Settings
    from ..models import ExportRequest


class FileUpload(Protocol):
    """One file on its way to a destination: written in parts, then committed or aborted."""

    def write(self, data: bytes | memoryview, /) -> object: ...

    def commit(self) -> str:
        """Make the output visible under its final name; returns its path or URI."""

    def abort(self) -> None:
        """Discard everything written; nothing partial stays visible."""


class Destination:
    """Opens one upload per file. Split exports get numbered parts and, where `manifest` is set, a
    manifest written last; after a failure `remove` takes back the parts already committed."""

    manifest: ClassVar[bool] = True

    def open(self, name: str) -> FileUpload:
        raise NotImplementedError

    def put(self, name: str, body: bytes) -> str:
        """Write the small file `name` whole (a manifest, a stream's batch); returns its path or URI."""
        upload = self.open(name)
        try:
            upload.write(body)
            return upload.commit()
        except BaseException:
            upload.abort()
            raise

    def remove(self, name: str) -> None:
        """Delete the file `name` (a failed split export's parts, a re-run's stale manifest); missing is fine."""

    def read(self, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The committed file `name` (as given to `open`), streamed back in chunks; raises
        `NotFound` (from ..errors) if there is none. Destinations that cannot read back raise Invalid."""
        raise Invalid(f"a {type(self).__name__} destination cannot read files back")

    def finish(self, uris: list[str], should_stop: Callable[[], bool]) -> str:
        """Called once every file is committed; returns what `ExportResult.destination_path` shows.
        A destination that still sends here (a webhook) stops when `should_stop()` says so."""
        return uris[-1]

    def close(self) -> None:
        """Release connections; called after success and failure alike."""

    def probe(self, probe: Probe) -> None:
        """Show that this destination takes files (`POST /api/destinations/test`): a small one is written,
        read back whole, deleted and seen to be gone. Destinations that take no files check what they take."""
        name = f".analytics-export-test-{uuid.uuid4().hex[:12]}"
        body = f"analytics-export destination test {uuid.uuid4()}\n".encode()
        with probe.step("write", f"wrote {self.location(name)} ({len(body)} bytes)"):
            self.put(name, body)
        try:
            with probe.step("read back", "read it back whole"):
                got = b"".join(self.read(name))
                if got != body:
                    raise Upload(f"{self.location(name)} read back {len(got)} bytes that differ from the "
                                 f"{len(body)} written")
        finally:
            with probe.step("delete", "deleted it"):
                self.remove(name)
                try:
                    b"".join(self.read(name))
                except NotFound:
                    pass
                else:
                    raise Upload(f"{self.location(name)} is still there after its delete: grant the credentials "
                                 "permission to delete (a failed export removes its parts)")

    def location(self, name: str) -> str:
        """Where the file `name` goes, as messages name it."""
        return name


@dataclass
class Step:
    """One step of a destination test: what it did or, failed, why; and how long it took."""

    name: str
    ok: bool
    detail: str
    seconds: float


class StepFailed(Exception):
    """Ends a destination test at the step that failed (recorded already)."""


@dataclass
class Probe:
    """The steps of one destination test, in order; a failed step's message has the secrets taken out."""

    secrets: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    @contextmanager
    def step(self, name: str, done: str = "") -> Iterator[list[str]]:
        """Record the step `name`: passed with `done` (or what the body appends to the yielded list),
        or failed with its error's message; a failure raises StepFailed."""
        started, notes = time.monotonic(), [done] if done else []
        try:
            yield notes
        except StepFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is the test's answer, in words
            self.steps.append(Step(name, False, explain(exc, self.secrets), round(time.monotonic() - started, 3)))
            raise StepFailed(name) from None
        self.steps.append(Step(name, True, "; ".join(notes), round(time.monotonic() - started, 3)))

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)


def explain(exc: BaseException, secrets: dict[str, str]) -> str:
    """An error's message for the caller: ours as written, another library's first line with its type."""
    if isinstance(exc, ExportError):
        text = str(exc)
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return redact(text, secrets)[:2000]


@dataclass(frozen=True)
class Placement:
    """All a destination knows of what it serves: its settings (`spec`), the project, the server's
    settings, the connection's secrets, the folder files go in, and what they hold. An export's comes
    from its request (`for_export`); a stream builds its own."""

    spec: Any
    project: str
    settings: Settings
    secrets: dict[str, str] = field(default_factory=dict)
    folder: str = ""
    """`prefix/path_template` rendered, without leading or trailing `/`."""
    content_type: str = "application/octet-stream"
    content_encoding: str | None = None
    """The codec wrapped around each file, in HTTP's names (gzip, zstd), when it is not the format's own."""
    export_id: str = ""

    @classmethod
    def for_export(cls, request: ExportRequest, project: str, settings: Settings,
                   secrets: dict[str, str] | None = None) -> Placement:
        spec = request.destination
        # a layout by each event's values renders its template per partition (pipeline/layout.py)
        template = None if isinstance(spec, FileLayout) and spec.per_event else getattr(spec, "path_template", None)
        folder = render_folder(spec.prefix, template, layout_values(request, project)) \
            if isinstance(spec, FileLayout) else ""
        wrapped = request.compression is not None and not request.format.spec.codec_inside_file
        return cls(spec, project, settings, secrets or {}, folder, request.format.content_type,
                   request.compression.value if wrapped else None, request.id)  # type: ignore[union-attr]

    def key(self, name: str) -> str:
        return f"{self.folder}/{name}" if self.folder else name


def layout_values(request: ExportRequest, project: str) -> dict[str, str]:
    """The values of `path_template`'s placeholders that are the export's own (its window's start)."""
    start, end = request.start_date, request.end_date
    return {"project": project, "export_id": request.id, "year": f"{start:%Y}", "month": f"{start:%m}",
            "day": f"{start:%d}", "hour": f"{start:%H}", "start": f"{start:%Y%m%d}", "end": f"{end:%Y%m%d}",
            "format": request.format.value}


def redact(text: str, secrets: dict[str, str]) -> str:
    """`text` with every secret value and every URL query string (SAS tokens, signatures) replaced."""
    for value in secrets.values():
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return re.sub(r"\?[^\s\"']*", "?***", text)


def destination_for(placement: Placement) -> Destination:
    """The destination `placement.spec` names, built by its registered module."""
    return registry.load(registry.get(placement.spec.type).export)(placement)


def kept(data: bytes | memoryview) -> bool:
    """Whether `data` views an immutable Arrow buffer, which its view keeps alive and nobody rewrites."""
    return isinstance(data, memoryview) and getattr(data.obj, "is_mutable", True) is False


class BackgroundUpload:
    """Hands writes to a thread that passes them to `upload`, so encoding and I/O overlap.

    At most `max_pending` bytes wait in memory; a writer that gets further ahead blocks. Anything
    but `bytes` and views of immutable Arrow buffers (`kept`) is copied on `write`, as writers
    (pyarrow's) reuse their buffers once the call returns. An error in the thread is raised by the
    next `write` or by `commit`.
    """

    def __init__(self, upload: FileUpload, max_pending: int = 8 << 20) -> None:
        self.upload = upload
        self.max_pending = max_pending
        self.pending = 0
        self.room = threading.Condition()
        self.chunks: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="export-upload", daemon=True)
        self.thread.start()

    def write(self, data: bytes | memoryview) -> int:
        if self.error is not None:
            raise self.error
        chunk = data if isinstance(data, bytes) or kept(data) else bytes(data)
        with self.room:
            self.room.wait_for(lambda: self.pending == 0 or self.pending + len(chunk) <= self.max_pending)
            self.pending += len(chunk)
        self.chunks.put(chunk)
        return len(chunk)

    def _drain(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            try:
                if self.error is None:
                    self.upload.write(chunk)
            except BaseException as exc:  # raised in the writer's thread by the next write or commit
                self.error = exc
            with self.room:
                self.pending -= len(chunk)
                self.room.notify()

    def _stop(self) -> None:
        if self.thread.is_alive():
            self.chunks.put(None)
            self.thread.join()

    def copy_from(self, file: BinaryIO, size: int | None) -> int | None:
        """Once every queued write is done, let the upload copy from `file` itself if it can."""
        fast = getattr(self.upload, "copy_from", None)
        if fast is None:
            return None
        with self.room:
            self.room.wait_for(lambda: self.pending == 0)
        if self.error is not None:
            raise self.error
        return fast(file, size)

    def commit(self) -> str:
        self._stop()
        if self.error is not None:
            raise self.error
        return self.upload.commit()

    def abort(self) -> None:
        self.error = self.error or RuntimeError("aborted")
        self._stop()
        self.upload.abort()
