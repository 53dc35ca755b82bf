"""CSV (RFC 4180, CRLF): header `event,distinct_id,timestamp` then the properties column(s)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv

from . import Writer


class CsvWriter(Writer):
    text_timestamps = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Header names are plain keys (no comma, quote or newline), so they need no quotes; every
        # string value is quoted, which keeps an empty string apart from a missing value.
        self.writer = pacsv.CSVWriter(self.sink, self.schema, write_options=options(not self.fragment))

    def write(self, batch: pa.RecordBatch) -> None:  # type: ignore[override]
        self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()

    @classmethod
    def head(cls, schema: pa.Schema) -> bytes:
        out = pa.BufferOutputStream()
        pacsv.CSVWriter(out, schema, write_options=options(True)).close()  # (write_csv would import pandas)
        return out.getvalue().to_pybytes()


def options(header: bool) -> pacsv.WriteOptions:
    return pacsv.WriteOptions(include_header=header, eol="\r\n", quoting_style="needed",
                              quoting_header="none", batch_size=8192)
