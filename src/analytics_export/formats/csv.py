"""CSV (RFC 4180, CRLF): header `event,distinct_id,timestamp` then the properties column(s)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from . import Writer
from .jsonl import RFC3339


def rfc3339(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with `timestamp` as RFC 3339 UTC text, the form the text formats share."""
    i = batch.schema.get_field_index("timestamp")
    text = pc.strftime(batch.column(i), format=RFC3339.replace(".%f", ""))
    return batch.set_column(i, pa.field("timestamp", pa.string()), text)


class CsvWriter(Writer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        schema = self.schema.set(self.schema.get_field_index("timestamp"), pa.field("timestamp", pa.string()))
        options = pacsv.WriteOptions(include_header=True, eol="\r\n", quoting_style="needed", batch_size=8192)
        self.writer = pacsv.CSVWriter(self.sink, schema, write_options=options)

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(rfc3339(batch))

    def close(self) -> None:
        self.writer.close()
