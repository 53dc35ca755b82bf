"""Byte sinks chained between a writer and a destination: counting, and (in compression.py) compressing."""

from __future__ import annotations

import io
from typing import Protocol


class ByteSink(Protocol):
    """Where encoded bytes go next: a file, an upload, another sink."""

    def write(self, data: bytes | memoryview, /) -> object: ...


class ForwardingSink(io.RawIOBase):
    """A write-only stream that passes bytes on to `target` and knows how many it was given.

    It is file-like enough for pyarrow's and fastavro's writers (`write`, `tell`, `flush`).
    """

    def __init__(self, target: ByteSink) -> None:
        super().__init__()
        self.target = target
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | memoryview) -> int:  # type: ignore[override]
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        self.position += n
        self.forward(data)
        return n

    def forward(self, data: bytes | memoryview) -> None:
        self.target.write(data)

    def tell(self) -> int:
        return self.position

    def finish(self) -> None:
        """End the stream (subclasses write trailers); the target stays open."""

    def discard(self) -> None:
        """Drop everything written from now on: a failed export's writer may still flush on exit."""
        self.target = _Nowhere()


class _Nowhere:
    def write(self, data: bytes | memoryview, /) -> None:
        return None
