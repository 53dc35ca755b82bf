"""JSON Lines: one object per line, `properties` nested, timestamps RFC 3339 UTC; encoded by DuckDB."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from . import Writer, string_bytes

RFC3339 = "%Y-%m-%dT%H:%M:%S.%fZ"


class JsonLinesWriter(Writer):
    nested_properties = True
    prefix_sql = "''"  # SQL text put before each row's JSON
    suffix_sql = "chr(10)"  # and after it

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.con = duckdb.connect(config={"threads": 1})
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")
        self.encode = (
            f"SELECT {self.prefix_sql} || to_json(struct_pack(event := event, distinct_id := distinct_id, "
            f"\"timestamp\" := strftime(\"timestamp\", '{RFC3339}'), properties := json(properties))) "
            f"|| {self.suffix_sql} AS line FROM batch"
        )

    def lines(self, batch: pa.RecordBatch) -> memoryview:
        """Every row of `batch` as one JSON text with its separator, concatenated."""
        self.con.register("batch", batch)
        column = self.con.sql(self.encode).to_arrow_table().column(0).combine_chunks()
        self.con.unregister("batch")
        return string_bytes(column)

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.sink.write(self.lines(batch))

    def close(self) -> None:
        self.con.close()
