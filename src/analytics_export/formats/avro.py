"""Avro: one object container file under a declared schema; polars encodes each batch's block.

polars encodes fast but writes whole files only, so each batch is encoded uncompressed in memory
and its raw block is appended, under our schema and codec, by fastavro's `write_block`.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterable

import fastavro

from ..bytesinks import ByteSink
from ..errors import Format
from ..enums import Compression
from . import Writer, copy

if TYPE_CHECKING:  # loaded by the writer: an export of no event writes its header without them
    import pyarrow as pa

CODECS = {None: "null", Compression.GZIP: "deflate", Compression.ZSTD: "zstandard", Compression.SNAPPY: "snappy"}
"""The Avro specification's names of the codecs Avro offers (see ExportFormat.spec)."""
TIMESTAMP = {"type": "long", "logicalType": "timestamp-micros"}


def avro_name(name: str, taken: set[str]) -> str:
    """A valid, unique Avro field name for `name` (`$browser` -> `_browser`)."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not base or base[0].isdigit():
        base = "_" + base
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}_{n}"
    taken.add(candidate)
    return candidate


def avro_schema(schema: pa.Schema) -> dict:
    """The record of an Arrow schema's rows (`record_schema`); a derived model names its rows in the
    schema's metadata."""
    import pyarrow as pa

    kinds = [TIMESTAMP if pa.types.is_timestamp(field.type) else "long" if pa.types.is_int64(field.type)
             else "double" if pa.types.is_float64(field.type) else "string" for field in schema]
    return record_schema(zip(schema.names, kinds), (schema.metadata or {}).get(b"record", b"Event").decode())


def record_schema(columns: Iterable[tuple[str, str | dict]], record: str = "Event") -> dict:
    """A record of `columns` (name, Avro type), every field nullable (polars' encoding: a union with
    null first); original names kept in `doc`."""
    taken: set[str] = set()
    fields = []
    for name, kind in columns:
        entry = {"name": avro_name(name, taken), "type": ["null", kind]}
        if entry["name"] != name:
            entry["doc"] = name
        fields.append(entry)
    return {"type": "record", "name": record, "namespace": "analytics_export", "fields": fields}


class AvroWriter(Writer):
    read_memory_mb = 48  # polars and fastavro: 5M events peaked at 406 MB at 128MB and 16,384 rows, 300 MB at
    # 64MB, 280 MB here, 8% slower; 50M peaked at 306 MB at 64MB
    batch_rows = 4_096

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writer = fastavro.write.Writer(self.sink, fastavro.parse_schema(avro_schema(self.schema)),
                                            codec=CODECS[self.compression])
        self.names = [f"c{i}" for i in range(len(self.schema))]

    def encode(self, batch: pa.RecordBatch) -> list:
        """The batch as uncompressed Avro blocks, encoded by polars."""
        import polars as pl
        import pyarrow as pa

        if not batch.num_rows:
            return []
        columns = [c.cast(pa.timestamp("us")) if pa.types.is_timestamp(c.type) else c for c in batch.columns]
        frame = pl.from_arrow(pa.RecordBatch.from_arrays(columns, names=self.names))
        encoded = io.BytesIO()
        frame.write_avro(encoded, compression="uncompressed")
        encoded.seek(0)
        return list(fastavro.block_reader(encoded))

    def write(self, blocks: list) -> None:
        for block in blocks:  # appended under our schema; our codec compresses them
            self.writer.write_block(block)

    def close(self) -> None:
        self.writer.flush()

    @classmethod
    def empty(cls, columns: tuple[tuple[str, str], ...], compression: Compression | None) -> bytes:
        """The container file's header: the schema `__init__` writes for an event query's batches."""
        out = io.BytesIO()
        schema = record_schema((name, TIMESTAMP if kind == "timestamp" else "string") for name, kind in columns)
        fastavro.write.Writer(out, fastavro.parse_schema(schema), codec=CODECS[compression]).flush()
        return out.getvalue()

    @classmethod
    def merge(cls, fragments: list[tuple[Path, int]], sink: ByteSink, schema: pa.Schema,
              compression: Compression | None) -> None:
        """One container file: the first fragment's header, then every fragment's blocks copied as
        they are (still compressed), each followed by that header's sync marker."""
        marker = None
        for path, _ in fragments:
            with open(path, "rb") as file:
                header, sync = read_header(file)
                if marker is None:
                    sink.write(header)
                    marker = sync
                while head := block_head(file):
                    sink.write(head[0])
                    copy(file, sink, head[1])
                    if file.read(SYNC_SIZE) != sync:
                        raise Format(f"{path.name}: an Avro block does not end with the file's sync marker")
                    sink.write(marker)


SYNC_SIZE = 16


def read_long(file: BinaryIO, raw: bytearray) -> int | None:
    """An Avro long (zigzag varint) from `file`, its bytes appended to `raw`; None at end of file."""
    shift = n = 0
    while byte := file.read(1):
        raw += byte
        n |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return (n >> 1) ^ -(n & 1)
        shift += 7
    if raw:
        raise Format("an Avro file ends inside a number")
    return None


def read_header(file: BinaryIO) -> tuple[bytes, bytes]:
    """The raw header of the container file (magic, metadata map, sync marker) and its sync marker."""
    raw = bytearray(file.read(4))
    if raw != b"Obj\x01":
        raise Format("not an Avro container file")
    while count := read_long(file, raw):
        if count < 0:
            count = -count
            read_long(file, raw)  # the block's size in bytes
        for _ in range(2 * count):  # key and value, each a length-prefixed byte string
            length = read_long(file, raw)
            raw += file.read(length or 0)
    sync = file.read(SYNC_SIZE)
    return bytes(raw + sync), sync


def block_head(file: BinaryIO) -> tuple[bytes, int] | None:
    """The raw (count, size) that start the next block, and its size; None after the last block."""
    raw = bytearray()
    if read_long(file, raw) is None:
        return None
    size = read_long(file, raw)
    if size is None:
        raise Format("an Avro file ends inside a block header")
    return bytes(raw), size
