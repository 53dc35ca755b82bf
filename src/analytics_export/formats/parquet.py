"""Parquet: typed columns (timestamp[us, UTC]), one row group per batch, the chosen codec inside.

Row groups are one 16k-row batch each: gathering 64k-row groups measured no faster and 30 MB larger.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from ..models import Compression
from . import Writer

CODECS = {None: "none", Compression.GZIP: "gzip", Compression.ZSTD: "zstd",
          Compression.SNAPPY: "snappy", Compression.LZ4: "lz4"}


class ParquetWriter(Writer):
    internal_compression = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writer = pq.ParquetWriter(self.sink, self.schema, compression=CODECS[self.compression])

    def write(self, batch: pa.RecordBatch) -> None:  # type: ignore[override]
        if batch.num_rows:
            self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()
