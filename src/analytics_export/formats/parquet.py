"""Parquet: typed columns (timestamp[us, UTC]), one row group per batch, the chosen codec inside.

Row groups are one 16k-row batch each: gathering 64k-row groups measured no faster and 30 MB larger.
Only `event` is dictionary-encoded (`DICTIONARY`). fastparquet misreads the other columns' likely
dictionaries: a dictionary past 1 MiB in a row group (the `properties` JSON, any long unique text)
falls back to PLAIN within the chunk and fastparquet reads those values as nulls (687,104 of 1M
`properties`); an uncompressed chunk that is all nulls (a selected property no event in the row
group has) has an empty dictionary page, on which fastparquet fails. At 1M demo events `event`
alone is also the smallest choice with every codec and encodes no slower than pyarrow's default.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from ..bytesinks import ByteSink
from ..errors import Format
from ..enums import Compression
from . import Copied, Writer, copy, thrift

if TYPE_CHECKING:
    import pyarrow as pa

MAGIC = b"PAR1"

DICTIONARY = ["event"]
"""The columns written with dictionary encoding: few values, never null (see above)."""

ROW_GROUP = 32_768
"""Rows per row group when DuckDB writes the file. Each row group costs DuckDB memory until the file
ends (about 38 KB each, uncompressed: 50M events in 16,384-row groups peaked 94 MB above 5M) and CPU;
5M demo events, uncompressed, snappy, zstd: 16,384 3.9-4.2, 2.9-3.0, 3.3-3.4 s; 32,768 3.0-3.3, 2.7,
3.3 s; 65,536 3.2, 2.9-3.0, 4.1-4.2 s; 122,880 (DuckDB's default) 4.3, 5.0 s and 20-40 MB more."""

CODECS = {None: "none", Compression.GZIP: "gzip", Compression.ZSTD: "zstd",
          Compression.SNAPPY: "snappy", Compression.LZ4: "lz4"}


class ParquetWriter(Writer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        import pyarrow.parquet as pq  # here: DuckDB writes the files the engine can, without pyarrow

        self.writer = pq.ParquetWriter(self.sink, self.schema, compression=CODECS[self.compression],
                                       use_dictionary=DICTIONARY)

    @classmethod
    def copied(cls, names: tuple[str, ...], compression: Compression | None) -> Copied | None:
        """DuckDB's Parquet writer: the same column names, types and codec; every column optional, as
        pyarrow writes them (DuckDB would make a NOT NULL source column required); row groups of ROW_GROUP
        rows. Dictionaries are where DuckDB finds them worth it (see docs/formats.md)."""
        columns = ", ".join(f"CASE WHEN c{i} IS NULL THEN NULL ELSE c{i} END AS {quoted(name)}"
                            for i, name in enumerate(names))
        codec = "uncompressed" if compression is None else CODECS[compression]
        return Copied(columns, f"FORMAT parquet, COMPRESSION {codec}, ROW_GROUP_SIZE {ROW_GROUP}")

    def write(self, batch: pa.RecordBatch) -> None:  # type: ignore[override]
        if batch.num_rows:
            self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()

    @classmethod
    def merge(cls, fragments: list[tuple[Path, int]], sink: ByteSink, schema: pa.Schema,
              compression: Compression | None) -> None:
        """One file whose row groups are the fragments' row groups, copied as bytes: their column
        chunks follow each other and the footer lists them all, offsets moved to their new place."""
        sink.write(MAGIC)
        position, footer, groups, rows = len(MAGIC), None, [], 0
        for path, _ in fragments:
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                file.seek(size - 8)
                length, magic = struct.unpack("<I4s", file.read(8))
                data_end = size - 8 - length
                if magic != MAGIC or data_end < len(MAGIC):
                    raise Format(f"{path.name} is not a Parquet file")
                file.seek(data_end)
                meta = thrift.decode(file.read(length))
                for group in thrift.get(meta, ROW_GROUPS).value.values:  # kept encoded: ~10x smaller
                    groups.append(thrift.encode(moved(group, position - len(MAGIC), len(groups))))
                rows += thrift.get(meta, NUM_ROWS).value
                footer = footer or meta
                file.seek(len(MAGIC))
                copy(file, sink, data_end - len(MAGIC))
                position += data_end - len(MAGIC)
        thrift.get(footer, ROW_GROUPS).value.values = groups
        thrift.get(footer, NUM_ROWS).value = rows
        blob = thrift.encode(footer)
        sink.write(blob + struct.pack("<I", len(blob)) + MAGIC)


def quoted(name: str) -> str:
    """`name` as a DuckDB identifier."""
    return '"' + name.replace('"', '""') + '"'


# Field ids in parquet.thrift: FileMetaData, RowGroup, ColumnChunk, ColumnMetaData.
NUM_ROWS, ROW_GROUPS = 3, 4
RG_COLUMNS, RG_FILE_OFFSET, RG_ORDINAL = 1, 5, 7
CC_FILE_OFFSET, CC_META, CC_OFFSET_INDEX, CC_COLUMN_INDEX = 2, 3, 4, 6
CM_OFFSETS = (9, 10, 11, 14)  # data, index and dictionary page offsets, and the bloom filter's


def moved(group: list[thrift.Field], shift: int, ordinal: int) -> list[thrift.Field]:
    """`group` (a RowGroup) with every file offset moved by `shift` bytes, numbered `ordinal`."""
    shift_field(group, RG_FILE_OFFSET, shift)
    if (field := thrift.get(group, RG_ORDINAL)) is not None:  # an i16: optional, dropped past its range
        if ordinal < 1 << 15:
            field.value = ordinal
        else:
            group.remove(field)
    for chunk in thrift.get(group, RG_COLUMNS).value.values:
        if any(thrift.get(chunk, i) for i in (CC_OFFSET_INDEX, CC_COLUMN_INDEX)):
            raise Format("cannot merge Parquet fragments with page indexes")
        if (field := thrift.get(chunk, CC_FILE_OFFSET)) is not None and field.value:  # 0: unset (deprecated)
            field.value += shift
        meta = thrift.get(chunk, CC_META).value
        for field_id in CM_OFFSETS:
            shift_field(meta, field_id, shift)
    return group


def shift_field(fields: list[thrift.Field], field_id: int, shift: int) -> None:
    if (field := thrift.get(fields, field_id)) is not None:
        field.value += shift
