"""JSON Lines: one object per line, `properties` nested, timestamps RFC 3339 UTC; encoded by DuckDB."""

from __future__ import annotations

import pyarrow as pa

from ..sources import RFC3339
from . import BatchSQL, Writer, string_bytes


class JsonLinesWriter(Writer):
    text_timestamps = True
    prefix_sql = "''"  # SQL text put before each row's JSON
    suffix_sql = "chr(10)"  # and after it

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # ids after properties: an export's `include`, and a stream's uuid (its receiver drops a batch
        # delivered twice)
        ids = {"uuid": "',\"uuid\":' || to_json(uuid)",
               "inserted_at": f"',\"inserted_at\":\"' || strftime(inserted_at, '{RFC3339}') || '\"'"}
        self.ids_sql = " || ".join(sql for name, sql in ids.items() if name in self.schema.names) or "''"
        # Concatenation, not to_json(struct): `properties` is already minified JSON text in every
        # store, so it is spliced in as is instead of being parsed and written again (3x faster).
        self.to_json = BatchSQL(
            f"SELECT {self.prefix_sql} || '{{\"event\":' || to_json(event) || ',\"distinct_id\":' || "
            f"to_json(distinct_id) || ',\"timestamp\":\"' || \"timestamp\" || "
            f"'\",\"properties\":' || properties || {self.ids_sql} || '}}' || {self.suffix_sql} AS line FROM batch"
        )

    def encode(self, batch: pa.RecordBatch) -> memoryview:
        """Every row of `batch` as one JSON text with its separator, concatenated."""
        return string_bytes(self.to_json(batch).column(0).combine_chunks())

    def write(self, lines: memoryview) -> None:
        if lines.nbytes:
            self.sink.write(lines)

    def release(self) -> None:
        self.to_json.close()
