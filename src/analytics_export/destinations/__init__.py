"""Destinations: where a finished file goes. An upload is written in parts, then committed or aborted."""

from __future__ import annotations

import queue
import threading
from typing import Protocol

CHUNK = 4 << 20
"""Bytes handed to a destination at a time (large enough for few syscalls, small enough to bound memory)."""


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

    At most `max_pending` bytes wait in memory; a writer that gets further ahead blocks. Data is
    copied on `write` because writers (pyarrow's) reuse their buffers once the call returns. An
    error in the thread is raised by the next `write` or by `commit`.
    """

    def __init__(self, upload: Upload, max_pending: int = 8 << 20) -> None:
        self.upload = upload
        self.pending = threading.Semaphore(max(1, max_pending // CHUNK))
        self.chunks: queue.SimpleQueue = queue.SimpleQueue()
        self.buffer = bytearray()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="export-upload", daemon=True)
        self.thread.start()

    def write(self, data: bytes | memoryview) -> int:
        self._check()
        self.buffer += data
        if len(self.buffer) >= CHUNK:
            self._send()
        return len(data) if isinstance(data, bytes) else memoryview(data).nbytes

    def _send(self) -> None:
        self.pending.acquire()
        self.chunks.put(bytes(self.buffer))
        self.buffer.clear()

    def _drain(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            try:
                if self.error is None:
                    self.upload.write(chunk)
            except BaseException as exc:  # raised in the writer's thread by _check
                self.error = exc
            finally:
                self.pending.release()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _stop(self) -> None:
        if self.thread.is_alive():
            self.chunks.put(None)
            self.thread.join()

    def commit(self) -> str:
        if self.buffer:
            self._send()
        self._stop()
        self._check()
        return self.upload.commit()

    def abort(self) -> None:
        self.error = self.error or RuntimeError("aborted")
        self._stop()
        self.upload.abort()
