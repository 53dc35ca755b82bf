"""JSON: one valid array of the same objects as JSON Lines (`[]` when empty)."""

from __future__ import annotations

from .jsonl import JsonLinesWriter


class JsonWriter(JsonLinesWriter):
    prefix_sql = "',' || chr(10)"
    suffix_sql = "''"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sink.write(b"[")
        self.first = True

    def write(self, lines: memoryview) -> None:
        if not lines.nbytes:
            return
        if self.first:
            lines, self.first = lines[1:], False  # drop the leading comma, keep the newline
        self.sink.write(lines)

    def close(self) -> None:
        self.sink.write(b"]\n" if self.first else b"\n]\n")
