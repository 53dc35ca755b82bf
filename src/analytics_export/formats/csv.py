"""CSV (RFC 4180, CRLF): header `event,distinct_id,timestamp` then the properties column(s)."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from . import Writer

FORMULA = r"^[=+\-@\t\r]"
"""What a spreadsheet may run as a formula (OWASP's CSV injection list): a cell starting with one of these."""
NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
"""A plain number (`-5`, `+1.5e3`) is left alone: spreadsheets read it as the number it is, never as a
formula, and quoting it would turn every negative value into text."""


class CsvWriter(Writer):
    """Always from Arrow batches: DuckDB's own CSV writer, quoting every value as this one does, took
    14.1 s for 5M events where pyarrow's took 5.0 s (the whole command, 2 cores)."""

    text_timestamps = True
    read_memory_mb = 64  # 5M events: 347 MB peak at 128MB and 16,384-row batches; 288 MB at 96MB, 252-258
    # MB here, as fast (3.2-3.35 s against 3.25-3.5 s)
    batch_rows = 4_096

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Header names are plain keys (no comma, quote or newline), so they need no quotes; every
        # string value is quoted, which keeps an empty string apart from a missing value.
        self.writer = pacsv.CSVWriter(self.sink, text_schema(self.schema), write_options=options(not self.fragment))

    def encode(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """`batch` with its typed timestamps (`inserted_at`) as RFC 3339 text, as `timestamp` already is."""
        if not any(pa.types.is_timestamp(t) for t in batch.schema.types):
            return batch
        columns = [pc.strftime(c, RFC3339_TEXT) if pa.types.is_timestamp(c.type) else c for c in batch.columns]
        return pa.RecordBatch.from_arrays(columns, schema=text_schema(batch.schema))

    def write(self, batch: pa.RecordBatch) -> None:  # type: ignore[override]
        self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()

    @classmethod
    def head(cls, schema: pa.Schema) -> bytes:
        out = pa.BufferOutputStream()
        pacsv.CSVWriter(out, schema, write_options=options(True)).close()  # (write_csv would import pandas)
        return out.getvalue().to_pybytes()


RFC3339_TEXT = "%Y-%m-%dT%H:%M:%SZ"
"""Arrow's strftime: `%S` carries the microseconds, as in `sources.RFC3339`."""


def text_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with timestamp columns as strings (what `encode` makes of them)."""
    return pa.schema([f.with_type(pa.string()) if pa.types.is_timestamp(f.type) else f for f in schema],
                     metadata=schema.metadata)


def options(header: bool) -> pacsv.WriteOptions:
    return pacsv.WriteOptions(include_header=header, eol="\r\n", quoting_style="needed",
                              quoting_header="none", batch_size=8192)


def guard_cells(array: pa.Array) -> pa.Array:
    """`array` (strings) with a single quote before every value a spreadsheet would read as a formula;
    columnar, no per-row Python."""
    risky = pc.and_kleene(pc.match_substring_regex(array, FORMULA), pc.invert(pc.match_substring_regex(array, NUMBER)))
    return pc.if_else(risky, pc.binary_join_element_wise("'", array, ""), array)


def guard_name(name: str) -> str:
    """A header cell, guarded as values are."""
    return "'" + name if re.match(FORMULA, name) and not re.fullmatch(NUMBER, name) else name


class GuardedCsvWriter(CsvWriter):
    """CSV with the formula guard (`csv_formula_guard`): every string cell and header cell that a
    spreadsheet would run as a formula starts with `'`, which makes it text."""

    def __init__(self, sink, schema: pa.Schema, *args, **kwargs) -> None:
        super().__init__(sink, guarded_schema(schema), *args, **kwargs)

    def encode(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        batch = super().encode(batch)
        columns = [guard_cells(col) if is_text(col.type) else col for col in batch.columns]
        return pa.RecordBatch.from_arrays(columns, schema=text_schema(self.schema))

    @classmethod
    def head(cls, schema: pa.Schema) -> bytes:
        return super().head(guarded_schema(schema))


def is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def guarded_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([field.with_name(guard_name(field.name)) for field in schema], metadata=schema.metadata)
