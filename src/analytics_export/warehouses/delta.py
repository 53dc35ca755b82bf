"""Delta Lake tables (delta-rs): a window is written with replace-where, in one atomic commit (a
stream's batch, whose window is its own uuids, is merged on uuid instead).

`write_deltalake(mode="overwrite", predicate=<window>)` drops the window's rows and adds the new
files in one commit of the table's log: readers see the old window or the new one, never part of
either, and a load that fails or is killed commits nothing (its unreferenced files are left for
`vacuum`). The first load creates the table with the export's columns; later loads add columns
(`schema_mode="merge"`). Batches stream from the source, so memory stays bounded. A table on S3
takes its keys from a `delta` connection (or the server's own, where it lends them).

A keyed load (`LoadWindow.key`) is one MERGE on the key, in one commit: a loaded row replaces the row
of its key or is added, and a removed key (sent as a source row flagged `GONE`, never written) deletes
its row. The first keyed load creates the table, never partitioned (Delta has no index; the merge
joins on the key). Columns keep their Arrow types (int64 long, float64 double); JSON-text fields are
strings, as `properties` is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from ..destinations import Placement, Probe
from ..destinations.specs import DeltaTableDestination
from ..errors import Invalid, Storage
from . import LoadWindow, TableDestination, local_path, s3_keys, table_files

GONE = "_analytics_export_removed"
"""The merge source's flag of a removed key's row."""
DAY = "day"
"""The partition column of a `partition_by_day` table: the UTC date of the window's time column."""


def literal(value: datetime) -> str:
    return f"'{value:%Y-%m-%dT%H:%M:%S.%fZ}'"


def storage_options(spec: DeltaTableDestination, placement: Placement) -> dict[str, str]:
    """delta-rs's S3 options: the connection's keys, or none (the server's own) where it lends them."""
    options = {"aws_region": spec.region or "us-east-1"}
    options.update({f"aws_{name}": value for name, value in s3_keys(placement, "delta").items()})
    if spec.endpoint_url:
        options["aws_endpoint_url"] = spec.endpoint_url
        options["aws_allow_http"] = str(spec.endpoint_url.startswith("http://")).lower()
    return options


def with_day(batches: pa.RecordBatchReader, column: str) -> pa.RecordBatchReader:
    """`batches` with the `day` column added."""
    if DAY in batches.schema.names:
        raise Invalid(f"a partition_by_day table has a `{DAY}` column: select the properties other than {DAY!r}")
    schema = batches.schema.append(pa.field(DAY, pa.date32()))
    return pa.RecordBatchReader.from_batches(
        schema, (batch.append_column(DAY, pc.cast(batch[column], pa.date32())) for batch in batches))


class DeltaLakeTable(TableDestination):
    kind = "delta"

    def __init__(self, placement: Placement) -> None:
        spec: DeltaTableDestination = placement.spec  # type: ignore[assignment]
        super().__init__(spec.uri)
        s3 = spec.uri.startswith("s3://")
        self.uri = spec.uri if s3 else str(local_path(placement, spec.uri))
        self.options = storage_options(spec, placement) if s3 else None
        self.partition_by_day = spec.partition_by_day
        self.files = table_files(placement, self.uri, spec.endpoint_url, spec.region)

    def write(self, batches: pa.RecordBatchReader, window: LoadWindow) -> None:
        if window.key is not None:
            try:
                self.merge(batches, window.key, window.removed)
            except DeltaError as exc:
                raise Storage(f"loading {self} failed: {str(exc).splitlines()[0]}") from None
            return
        column = f'"{window.column}"'
        predicate = f"{column} >= {literal(window.start)} AND {column} < {literal(window.end)}"
        if self.partition_by_day:
            batches = with_day(batches, window.column)
        try:
            table = self.table()
            if window.loaded_only and table is not None:
                self.upsert(table, batches, predicate.replace(column, f"t.{column}"))
            else:
                write_deltalake(self.uri, batches, mode="overwrite", predicate=predicate, schema_mode="merge",
                                partition_by=[DAY] if self.partition_by_day and table is None else None,
                                storage_options=self.options)
        except DeltaError as exc:
            raise Storage(f"loading {self} failed: {str(exc).splitlines()[0]}") from None

    def merge(self, rows: pa.RecordBatchReader, key: str, removed: tuple[str, ...]) -> None:
        """A keyed load: `rows` (one per key) replace the rows of their keys and `removed` keys' rows go,
        in one commit; or, before the first load, the table created with `rows`."""
        table = self.table()
        if table is None:  # "error": a load that created the table first makes this one fail, and retry
            write_deltalake(self.uri, rows, mode="error", storage_options=self.options)
            return
        schema = rows.schema.append(pa.field(GONE, pa.bool_()))

        def source() -> Iterator[pa.RecordBatch]:
            loaded: set[str] = set()
            for batch in rows:
                loaded.update(batch.column(key).to_pylist())
                yield batch.append_column(GONE, pa.array([False] * batch.num_rows))
            gone = [k for k in removed if k not in loaded]
            if gone:
                yield pa.RecordBatch.from_pydict({**{f.name: pa.nulls(len(gone), f.type) for f in schema},
                                                  key: gone, GONE: [True] * len(gone)}, schema=schema)

        name = f'"{key}"'
        (table.merge(pa.RecordBatchReader.from_batches(schema, source()), f"t.{name} = s.{name}", source_alias="s",
                     target_alias="t", merge_schema=True)
         .when_matched_delete(f"s.{GONE}")
         .when_matched_update_all(f"NOT s.{GONE}", except_cols=[GONE])
         .when_not_matched_insert_all(f"NOT s.{GONE}", except_cols=[GONE]).execute())

    def table(self) -> DeltaTable | None:
        """The table, or None before its first load (`is_deltatable` failed to list moto's S3)."""
        try:
            return DeltaTable(self.uri, storage_options=self.options)
        except TableNotFoundError:
            return None

    def probe(self, probe: Probe) -> None:
        """A file written, read back and deleted in the table's folder, and its log read (when it exists)."""
        self.files.probe(probe)
        with probe.step("table") as notes:
            try:
                table = self.table()
            except (DeltaError, OSError) as exc:
                raise Storage(f"cannot read {self}: {str(exc).splitlines()[0]}") from None
            notes.append(f"exists at version {table.version()}" if table is not None else
                         "does not exist yet (the first load creates it)")

    @staticmethod
    def upsert(table: DeltaTable, batches: pa.RecordBatchReader, window: str) -> None:
        """A stream's batch: each event replaces the row of its uuid within `window`, or is added,
        in one commit (a MERGE: a replace-where would have to list every uuid in its predicate,
        which crashed delta-rs's parser at 100,000 of them)."""
        (table.merge(batches, f"{window} AND t.uuid = s.uuid", source_alias="s", target_alias="t", merge_schema=True)
         .when_matched_update_all().when_not_matched_insert_all().execute())


def build(placement: Placement) -> DeltaLakeTable:
    return DeltaLakeTable(placement)
