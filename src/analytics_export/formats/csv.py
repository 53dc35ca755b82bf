"""CSV (RFC 4180, CRLF): header `event,distinct_id,timestamp` then the properties column(s)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv

from . import RFC3339, BatchSQL, Writer


class CsvWriter(Writer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        schema = self.schema.set(self.schema.get_field_index("timestamp"), pa.field("timestamp", pa.string()))
        options = pacsv.WriteOptions(include_header=True, eol="\r\n", quoting_style="needed", batch_size=8192)
        self.writer = pacsv.CSVWriter(self.sink, schema, write_options=options)
        # Columns by position: property names may repeat `event` etc. and are not SQL identifiers.
        columns = [f"#{i + 1}" for i in range(len(schema))]
        columns[2] = f"strftime(#3, '{RFC3339}')"
        self.to_text = BatchSQL(f"SELECT {', '.join(columns)} FROM batch")
        self.schema_text = schema

    def encode(self, batch: pa.RecordBatch) -> pa.Table:
        return pa.Table.from_arrays(self.to_text(batch).columns, schema=self.schema_text)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()
        self.to_text.close()
