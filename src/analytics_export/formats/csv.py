"""CSV (RFC 4180, CRLF): header `event,distinct_id,timestamp` then the properties column(s)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..enums import Compression
from . import Writer

if TYPE_CHECKING:  # loaded by the writer: an export of no event writes its header without them
    import pyarrow as pa
    import pyarrow.csv as pacsv

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
        import pyarrow.csv as pacsv

        if not self.fragment:  # the schema's names, guarded already where the writer guards
            self.sink.write(CsvWriter.head(tuple(self.schema.names)))
        self.writer = pacsv.CSVWriter(self.sink, text_schema(self.schema), write_options=options())

    def encode(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """`batch` with its typed timestamps (`inserted_at`) as RFC 3339 text, as `timestamp` already is."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not any(pa.types.is_timestamp(t) for t in batch.schema.types):
            return batch
        columns = [pc.strftime(c, RFC3339_TEXT) if pa.types.is_timestamp(c.type) else c for c in batch.columns]
        return pa.RecordBatch.from_arrays(columns, schema=text_schema(batch.schema))

    def write(self, batch: pa.RecordBatch) -> None:  # type: ignore[override]
        self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()

    @classmethod
    def head(cls, names: tuple[str, ...]) -> bytes:
        """The header line. Names are plain keys (no comma, quote or newline), so they need no quotes;
        every string value is quoted, which keeps an empty string apart from a missing value."""
        return (",".join(names) + "\r\n").encode()

    @classmethod
    def empty(cls, columns: tuple[tuple[str, str], ...], compression: Compression | None) -> bytes:
        return cls.head(tuple(name for name, _ in columns))


RFC3339_TEXT = "%Y-%m-%dT%H:%M:%SZ"
"""Arrow's strftime: `%S` carries the microseconds, as in `sources.RFC3339`."""


def text_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with timestamp columns as strings (what `encode` makes of them)."""
    import pyarrow as pa

    return pa.schema([f.with_type(pa.string()) if pa.types.is_timestamp(f.type) else f for f in schema],
                     metadata=schema.metadata)


def options() -> pacsv.WriteOptions:
    """pyarrow's CSV writer writes the rows; the header is `CsvWriter.head`."""
    import pyarrow.csv as pacsv

    return pacsv.WriteOptions(include_header=False, eol="\r\n", quoting_style="needed", batch_size=8192)


def guard_cells(array: pa.Array) -> pa.Array:
    """`array` (strings) with a single quote before every value a spreadsheet would read as a formula;
    columnar, no per-row Python."""
    import pyarrow.compute as pc

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
        import pyarrow as pa

        batch = super().encode(batch)
        columns = [guard_cells(col) if is_text(col.type) else col for col in batch.columns]
        return pa.RecordBatch.from_arrays(columns, schema=text_schema(self.schema))

    @classmethod
    def head(cls, names: tuple[str, ...]) -> bytes:
        return super().head(tuple(map(guard_name, names)))


def is_text(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def guarded_schema(schema: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([field.with_name(guard_name(field.name)) for field in schema], metadata=schema.metadata)
