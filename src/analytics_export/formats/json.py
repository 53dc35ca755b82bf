"""JSON: one valid array of the same objects as JSON Lines (`[]` when empty)."""

from __future__ import annotations

from dataclasses import replace

from ..enums import Compression
from . import Copied
from .jsonl import JsonLinesWriter


class JsonWriter(JsonLinesWriter):
    prefix_sql = "',' || chr(10)"
    suffix_sql = "''"
    copied_suffix_sql = "','"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.fragment:
            self.sink.write(self.head(()))
        self.first = True

    @classmethod
    def copied(cls, names: tuple[str, ...], compression: Compression | None) -> Copied | None:
        """Lines `{...},` after `[` and a newline; the last line's comma and newline make way for the tail."""
        return replace(super().copied(names, compression), head=cls.head(names), opening=b"\n", trim=b",\n")

    def write(self, lines: memoryview) -> None:
        if not lines.nbytes:
            return
        if self.first:
            lines, self.first = lines[1:], False  # drop the leading comma, keep the newline
        self.sink.write(lines)

    def close(self) -> None:
        if not self.fragment:
            self.sink.write(self.tail(0 if self.first else 1))

    separator = b","  # a fragment's rows start with a newline, not a comma

    @classmethod
    def head(cls, names: tuple[str, ...]) -> bytes:
        return b"["

    @classmethod
    def tail(cls, events: int) -> bytes:
        return b"\n]\n" if events else b"]\n"
