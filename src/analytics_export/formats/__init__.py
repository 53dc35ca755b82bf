"""Writers: each turns Arrow batches into one file's bytes, incrementally, into a binary sink."""

from __future__ import annotations

import importlib
from typing import ClassVar

import duckdb
import pyarrow as pa

from ..models import Compression, ExportFormat
from ..streams import ForwardingSink



class Writer:
    """Base of every format writer.

    Each batch goes through `encode`, the CPU-heavy part, which touches no writer state (so it
    can move to other threads), then through `write`, called in batch order, which puts the encoded
    bytes into the sink.

    `nested_properties`: the format keeps `properties` as a nested object even when properties are
    selected (JSON, JSON Lines); tabular formats get one column per selected property instead.
    `internal_compression`: the format compresses inside the file (Parquet, Avro) rather than being
    wrapped in a compressed stream. `text_timestamps`: batches arrive with `timestamp` already as
    RFC 3339 text (text formats) rather than as timestamp[us, UTC].
    """

    nested_properties: ClassVar[bool] = False
    internal_compression: ClassVar[bool] = False
    text_timestamps: ClassVar[bool] = False

    def __init__(self, sink: ForwardingSink, schema: pa.Schema, compression: Compression | None = None):
        self.sink = sink
        self.schema = schema
        self.compression = compression

    def encode(self, batch: pa.RecordBatch) -> object:
        """The CPU-heavy part of writing `batch` (thread-safe); its result goes to `write`."""
        return batch

    def write(self, encoded: object) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Write whatever ends the file (footer, closing bracket); the sink stays open."""

    def release(self) -> None:
        """Free what the writer holds, finished or not (called after `close`, or instead of it)."""


class BatchSQL:
    """One SQL statement run by an in-memory, single-threaded DuckDB over each batch (as table `batch`).

    DuckDB's vectorised string functions format timestamps and JSON many times faster than
    pyarrow's `strftime` or any Python loop.
    """

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.con = duckdb.connect(config={"threads": 1})
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        self.con.register("batch", batch)
        try:
            return self.con.sql(self.sql).to_arrow_table()
        finally:
            self.con.unregister("batch")

    def close(self) -> None:
        self.con.close()


def string_bytes(array: pa.Array) -> memoryview:
    """The concatenated values of a null-free string array, without copying."""
    if len(array) == 0:
        return memoryview(b"")
    _, offsets, data = array.buffers()
    positions = memoryview(offsets).cast("i")
    start, end = positions[array.offset], positions[array.offset + len(array)]
    return memoryview(data)[start:end]


WRITERS: dict[ExportFormat, str] = {
    ExportFormat.JSON: "json:JsonWriter",
    ExportFormat.JSON_LINES: "jsonl:JsonLinesWriter",
    ExportFormat.CSV: "csv:CsvWriter",
    ExportFormat.PARQUET: "parquet:ParquetWriter",
    ExportFormat.AVRO: "avro:AvroWriter",
}
"""Format -> `module:class` under this package, imported on first use (polars and fastavro are
only loaded for Avro, which keeps every other export ~30 MB smaller)."""


def writer_class(fmt: ExportFormat) -> type[Writer]:
    module, name = WRITERS[fmt].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), name)
