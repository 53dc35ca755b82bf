"""JSON: one valid array of the same objects as JSON Lines (`[]` when empty)."""

from __future__ import annotations

import pyarrow as pa

from .jsonl import JsonLinesWriter


class JsonWriter(JsonLinesWriter):
    prefix_sql = "',' || chr(10)"
    suffix_sql = "''"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sink.write(b"[")
        self.first = True

    def write(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        data = self.lines(batch)
        if self.first:
            data, self.first = data[1:], False  # drop the leading comma, keep the newline
        self.sink.write(data)

    def close(self) -> None:
        self.sink.write(b"]\n" if self.first else b"\n]\n")
        super().close()
