"""Avro: one object container file under a declared schema; polars encodes each batch's block.

polars encodes fast but writes whole files only, so each batch is encoded uncompressed in memory
and its raw block is appended, under our schema and codec, by fastavro's `write_block`.
"""

from __future__ import annotations

import io
import re

import fastavro
import polars as pl
import pyarrow as pa

from ..models import Compression
from . import Writer

CODECS = {None: "null", Compression.GZIP: "deflate", Compression.ZSTD: "zstandard",
          Compression.SNAPPY: "snappy", Compression.LZ4: "lz4"}
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
    """Every field nullable (polars' encoding: a union with null first); original names kept in `doc`."""
    taken: set[str] = set()
    fields = []
    for field in schema:
        kind = TIMESTAMP if pa.types.is_timestamp(field.type) else "string"
        entry = {"name": avro_name(field.name, taken), "type": ["null", kind]}
        if entry["name"] != field.name:
            entry["doc"] = field.name
        fields.append(entry)
    return {"type": "record", "name": "Event", "namespace": "analytics_export", "fields": fields}


class AvroWriter(Writer):
    internal_compression = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writer = fastavro.write.Writer(self.sink, fastavro.parse_schema(avro_schema(self.schema)),
                                            codec=CODECS[self.compression])
        self.names = [f"c{i}" for i in range(len(self.schema))]

    def encode(self, batch: pa.RecordBatch) -> list:
        """The batch as uncompressed Avro blocks, encoded by polars."""
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
