"""Destinations: where a finished file goes. An upload is written in parts, then committed or aborted."""

from __future__ import annotations

import queue
import threading
from typing import Protocol


class Upload(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...

    def commit(self) -> str:
        """Make the output visible under its final name; returns its path or URI."""

    def abort(self) -> None:
        """Discard everything written; nothing partial stays visible."""


class Destination(Protocol):
    def open(self, name: str) -> Upload: ...


class BackgroundUpload:
    """Hands writes to a thread that passes them to `upload`, so encoding and I/O overlap.

    At most `max_pending` bytes wait in memory; a writer that gets further ahead blocks. Anything
    but `bytes` is copied on `write`, as writers (pyarrow's) reuse their buffers once the call
    returns. An error in the thread is raised by the next `write` or by `commit`.
    """

    def __init__(self, upload: Upload, max_pending: int = 8 << 20) -> None:
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
        chunk = data if isinstance(data, bytes) else bytes(data)
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

    def commit(self) -> str:
        self._stop()
        if self.error is not None:
            raise self.error
        return self.upload.commit()

    def abort(self) -> None:
        self.error = self.error or RuntimeError("aborted")
        self._stop()
        self.upload.abort()
