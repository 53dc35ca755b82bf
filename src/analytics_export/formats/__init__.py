"""Writers: each turns Arrow batches into one file's bytes, incrementally, into a binary sink."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, ClassVar

import duckdb

from ..bytesinks import ByteSink, ForwardingSink
from ..compression import STAGING, CompressedSink, open_staged
from ..enums import Compression, ExportFormat
from ..models import ExportRequest
from ..sources import READ_MEMORY_MB

if TYPE_CHECKING:
    import pyarrow as pa

COPY_CHUNK = 1 << 20



JSON_TEXT = {b"json": b"text"}
"""Field metadata of a string column that holds JSON text (a derived model's `properties`): JSON writers
splice it in as a value, tables store it as they store JSON."""


def is_json(field: pa.Field) -> bool:
    """True for a string field holding JSON text (`JSON_TEXT`)."""
    return (field.metadata or {}).get(b"json") == b"text"

@dataclass(frozen=True)
class Copied:
    """How a store's engine writes a format's rows itself: `COPY (SELECT {select} FROM rows) TO ...
    ({options})`, where `rows` has the query's columns as c0, c1, ...; with `options` None, `select` is
    one text column of each row's bytes, read as the engine's Arrow stream and written as it is (DuckDB's
    CSV writer spent a third more CPU on the same lines). The file is `head` (the writer's; left out of
    fragments), `opening` before the engine's first byte, the engine's bytes less `trim` at their end
    (JSON's last separator), then the writer's `tail`: the same bytes as the batch path, up to row order.
    `threads`, when set, caps the engine's threads for it (the store's setting otherwise)."""

    select: str
    options: str | None
    head: bytes = b""
    opening: bytes = b""
    trim: bytes = b""
    threads: int | None = None


class Writer:
    """Base of every format writer.

    Each batch goes through `encode`, the CPU-heavy part, which touches no writer state (so it
    can move to other threads), then through `write`, called in batch order, which puts the encoded
    bytes into the sink.

    `text_timestamps`: batches arrive with `timestamp` already as RFC 3339 text (text formats) rather
    than as timestamp[us, UTC]. Whether the codec is inside the file and whether `properties`
    stays nested are the format's spec (`ExportFormat.spec`), as are its extension, content type and
    the codecs it offers.

    A `fragment` is one partition of an export: a text writer leaves out what opens and closes the
    file (CSV header, JSON brackets), and is staged as `compression.STAGING` rather than in the
    export's codec, so `merge` can join the fragments into the file one run would have written, one
    compressed stream, without reading the source again.
    """

    text_timestamps: ClassVar[bool] = False
    read_memory_mb: ClassVar[int] = READ_MEMORY_MB
    """DuckDB's base cap while this writer's batch path runs (see `sources.READ_MEMORY_MB`): a writer
    holding more in Python takes it from DuckDB, so the export's peak stays under 300 MB."""
    batch_rows: ClassVar[int | None] = None
    """At most this many rows a batch (the `batch_size` setting caps it too)."""

    def __init__(self, sink: ForwardingSink, schema: pa.Schema, compression: Compression | None = None,
                 fragment: bool = False):
        self.sink = sink
        self.schema = schema
        self.compression = compression
        self.fragment = fragment

    def encode(self, batch: pa.RecordBatch) -> object:
        """The CPU-heavy part of writing `batch` (thread-safe); its result goes to `write`."""
        return batch

    def write(self, encoded: object) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Write whatever ends the file (footer, closing bracket); the sink stays open."""

    def release(self) -> None:
        """Free what the writer holds, finished or not (called after `close`, or instead of it)."""

    @classmethod
    def head(cls, names: tuple[str, ...]) -> bytes:
        """What a text file of columns `names` starts with before its first row (left out of fragments)."""
        return b""

    @classmethod
    def tail(cls, events: int) -> bytes:
        """What a text file of `events` rows ends with (left out of fragments)."""
        return b""

    separator: ClassVar[bytes] = b""
    """Put between two non-empty fragments."""

    @classmethod
    def copied(cls, names: tuple[str, ...], compression: Compression | None) -> Copied | None:
        """How an engine writes this format with columns `names` (see `Copied`); None where only this writer can."""
        return None

    @classmethod
    def empty(cls, columns: tuple[tuple[str, str], ...], compression: Compression | None) -> bytes | None:
        """What a file of no rows holds before its `tail(0)`, for `columns` (name, and kind: `text` or
        `timestamp`), made without pyarrow; None where only the writer or the engine can write one."""
        return None

    @classmethod
    def merge(cls, fragments: list[tuple[Path, int]], sink: ByteSink, schema: pa.Schema,
              compression: Compression | None) -> None:
        """Write to `sink` one file from `fragments` (path, events), in order: head, the fragments with
        separators, tail. Compressed, the staged fragments are decoded and the file is compressed as one
        stream (one gzip member, one zstd frame), which one-shot decoders read whole; uncompressed, the
        fragments are copied inside the kernel."""
        out = CompressedSink(sink, compression) if compression else sink

        def put(data: bytes) -> None:
            if data:
                out.write(data)

        put(cls.head(tuple(schema.names)))
        events = 0
        for path, count in fragments:
            if count:  # an empty fragment holds no rows; skipping it keeps separators right
                put(cls.separator if events else b"")
                with open_staged(path) if compression else open(path, "rb") as file:
                    copy(file, out)
                events += count
        put(cls.tail(events))
        if isinstance(out, CompressedSink):
            out.finish()


@functools.cache
def batch_database() -> duckdb.DuckDBPyConnection:
    """The process's in-memory, single-threaded DuckDB that `BatchSQL`s open connections to: starting
    a database takes ~70 ms, a connection to one ~1 ms, and an export split into one-event parts
    opens a writer per part."""
    return duckdb.connect(config={"threads": 1})


class BatchSQL:
    """One SQL statement run by an in-memory, single-threaded DuckDB over each batch (as table `batch`).

    DuckDB's vectorised string functions format timestamps and JSON many times faster than
    pyarrow's `strftime` or any Python loop. Each has a connection of its own (the `batch` it
    registers is seen by that connection alone).
    """

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.con = batch_database().cursor()
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


def copy(file: BinaryIO, sink: ByteSink, size: int | None = None) -> None:
    """Copy `size` bytes (or the rest) of `file` to `sink`: inside the kernel when the sink ends in a
    local file (`copy_from`), else in bounded chunks."""
    fast = getattr(sink, "copy_from", None)
    if fast is not None and fast(file, size) is not None:
        return
    while size is None or size > 0:
        chunk = file.read(COPY_CHUNK if size is None else min(COPY_CHUNK, size))
        if not chunk:
            if size:
                raise EOFError(f"{getattr(file, 'name', 'a fragment')} ended {size} bytes early")
            return
        sink.write(chunk)
        if size is not None:
            size -= len(chunk)


def string_bytes(array: pa.Array) -> memoryview:
    """The concatenated values of a null-free string (or large_string) array, without copying."""
    import pyarrow as pa  # loaded already: `array` is one

    if len(array) == 0:
        return memoryview(b"")
    _, offsets, data = array.buffers()
    positions = memoryview(offsets).cast("q" if pa.types.is_large_string(array.type) else "i")
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


def open_sink(target: ForwardingSink, fmt: ExportFormat, compression: Compression | None,
              fragment: bool = False) -> ForwardingSink:
    """What a file's writer writes to: the codec's stream around `target` when the codec wraps the file
    (text formats), else `target` itself (Parquet and Avro compress inside). A fragment's text is
    staged (`Writer.merge` compresses the joined file). `finish` it once the writer is closed."""
    codec = None if fmt.spec.codec_inside_file else compression
    if codec is not None and fragment:
        codec = STAGING
    return CompressedSink(target, codec) if codec is not None else target


def open_writer(writer_cls: type[Writer], target: ForwardingSink, schema: pa.Schema, fmt: ExportFormat,
                compression: Compression | None, fragment: bool = False) -> tuple[Writer, ForwardingSink]:
    """A file's encoding chain over `target`: the writer, and the sink it writes to (`open_sink`).
    Close the writer, then `finish` the sink."""
    sink = open_sink(target, fmt, compression, fragment)
    return writer_cls(sink, schema, compression, fragment), sink


GUARDED_CSV = "csv:GuardedCsvWriter"
"""CSV with its formula guard (`csv_formula_guard`)."""


def _load(path: str) -> type[Writer]:
    module, name = path.split(":")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def writer_class(fmt: ExportFormat) -> type[Writer]:
    return _load(WRITERS[fmt])


def writer_for(request: ExportRequest) -> type[Writer]:
    """The writer of `request`'s file: its format's, with CSV's formula guard when it asks for it."""
    if request.format is ExportFormat.CSV and request.csv_formula_guard:
        return _load(GUARDED_CSV)
    return writer_class(request.format)
