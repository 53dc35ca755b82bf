"""Destinations: where a finished file goes. An upload is written in parts, then committed or aborted."""

from __future__ import annotations

from typing import Protocol


class Upload(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...

    def commit(self) -> str:
        """Make the output visible under its final name; returns its path or URI."""

    def abort(self) -> None:
        """Discard everything written; nothing partial stays visible."""


class Destination(Protocol):
    def open(self, name: str) -> Upload: ...
