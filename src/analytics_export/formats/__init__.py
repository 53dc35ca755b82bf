"""Writers: each turns Arrow batches into one file's bytes, incrementally, into a binary sink."""

from __future__ import annotations

import importlib
import threading
from typing import ClassVar

import duckdb
import pyarrow as pa

from ..models import Compression, ExportFormat
from ..streams import ForwardingSink



class Writer:
    """Base of every format writer.

    Each batch goes through `encode`, which must be thread-safe and touch no writer state, so the
    pipeline runs it for several batches at once on a small pool, then through `write`, called in
    batch order on one thread, which puts the encoded bytes into the sink.

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

    @property
    def encodes(self) -> bool:
        """Whether `encode` does anything (else the pipeline skips the encoder thread)."""
        return type(self).encode is not Writer.encode

    def write(self, encoded: object) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Write whatever ends the file (footer, closing bracket); the sink stays open."""

    def release(self) -> None:
        """Free what the writer holds, finished or not (called after `close`, or instead of it)."""


class BatchSQL:
    """One SQL statement run by an in-memory DuckDB over each batch (as table `batch`).

    DuckDB's vectorised string functions format timestamps and JSON many times faster than
    pyarrow's `strftime` or any Python loop. Safe to call from several threads: each gets its own
    single-threaded cursor, and DuckDB releases the GIL while it works.
    """

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.con = duckdb.connect(config={"threads": 1})
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")
        self.local = threading.local()
        self.cursors: list[duckdb.DuckDBPyConnection] = []
        self.lock = threading.Lock()

    def __call__(self, batch: pa.RecordBatch) -> pa.Table:
        cursor = getattr(self.local, "cursor", None)
        if cursor is None:
            with self.lock:
                cursor = self.local.cursor = self.con.cursor()
                self.cursors.append(cursor)
        cursor.register("batch", batch)
        try:
            return cursor.sql(self.sql).to_arrow_table()
        finally:
            cursor.unregister("batch")

    def close(self) -> None:
        for cursor in self.cursors:
            cursor.close()
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
