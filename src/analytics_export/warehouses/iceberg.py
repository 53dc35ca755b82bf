"""Apache Iceberg tables (pyiceberg): a window is replaced by one transaction, a delete of the window and
one append of the export's data files, committed as one change of the table's metadata.

The catalog is a SQL catalog: SQLite in the table's folder under the data dir by default, or
PostgreSQL (`catalog_url`), or an Iceberg REST catalog (`catalog_url` http(s)://...). Data goes to the
data dir or to any S3-compatible store (`warehouse` s3://...; keys from a connection). New tables are
partitioned by day of `timestamp`. The batches are gathered in chunks of about CHUNK_BYTES, each written
as data files at once (pyiceberg splits a table by partition, not a stream), so memory holds one chunk;
the files of every chunk join one append, which becomes part of the table only with the commit: a load
that fails or is killed commits nothing (its files are orphans, removed by the catalog's orphan-file
maintenance). A stream's batch (`loaded_only`) deletes the rows of its own uuids
within its window, so a batch sent again replaces its earlier copy. Columns a later export selects are
added (`union_by_name`).

A keyed load (`LoadWindow.key`) writes its rows' data files first (one per key, sorted by it), then in
one transaction deletes the rows of the loaded and removed keys (`In`) and appends those files. A table
first made by a keyed load is unpartitioned, with a sort order on the key (Iceberg has no index). Columns
keep their Arrow types (int64 long, float64 double); JSON-text fields are strings, as `properties` is.
"""

from __future__ import annotations

import itertools
import uuid
import warnings
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError
from pyiceberg.expressions import And, GreaterThanOrEqual, In, LessThan
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.transforms import DayTransform, IdentityTransform

from ..destinations import Placement, Probe, redact
from ..destinations.guard import check_host
from ..destinations.specs import IcebergTableDestination
from ..errors import Invalid, Storage
from . import LoadWindow, TableDestination, local_path, s3_keys, table_files, without_values

CHUNK_BYTES = 32 << 20
"""Arrow bytes written at once (about 100,000 demo events): a chunk's data files are written before the next
chunk is read, so wide properties make more chunks, not bigger ones."""
CATALOG_FILE = "iceberg_catalog.db"
CATALOG_NAME = "analytics-export"
"""The SQL catalog's name: its rows are keyed by it, so every reader of the catalog must use it."""


def chunks(batches: pa.RecordBatchReader, size: int) -> Iterator[pa.Table]:
    """`batches` gathered into tables of about `size` bytes."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += batch.nbytes
        if count >= size:
            yield pa.Table.from_batches(held, batches.schema)
            held, count = [], 0
    if held:
        yield pa.Table.from_batches(held, batches.schema)


class IcebergTable(TableDestination):
    kind = "iceberg"

    def __init__(self, placement: Placement) -> None:
        spec: IcebergTableDestination = placement.spec  # type: ignore[assignment]
        super().__init__(spec.table)
        self.spec, self.secrets = spec, placement.secrets
        self.identifier = tuple(spec.table.split("."))
        s3 = spec.warehouse.startswith("s3://")
        folder = None if s3 else local_path(placement, spec.warehouse)
        properties = {"warehouse": spec.warehouse, **s3_properties(spec, placement)} if s3 else {
            "warehouse": folder.as_uri()}  # type: ignore[union-attr]
        for url in filter(None, (spec.catalog_url, spec.endpoint_url)):
            check_host(urlsplit(url).hostname or "", placement.settings.destination_allow)
        self.catalog = self.guard(lambda: catalog(spec, folder, properties, placement.secrets))
        self.files = table_files(placement, spec.warehouse if s3 else str(folder), spec.endpoint_url, spec.region)

    def write(self, batches: pa.RecordBatchReader, window: LoadWindow) -> None:
        if window.key is not None:
            self.load_keyed(batches, window.key, window.removed)
            return
        time = window.column
        condition = And(GreaterThanOrEqual(time, window.start.isoformat()), LessThan(time, window.end.isoformat()))
        table = self.guard(lambda: self.table(batches.schema))
        if window.loaded_only:  # a stream's batch: small, and its uuids are the window
            loaded = batches.read_all()
            condition = And(condition, In("uuid", set(loaded.column("uuid").to_pylist())))
            parts: Iterator[pa.Table] = iter([loaded])
        else:
            parts = chunks(batches, CHUNK_BYTES)

        def commit() -> None:
            with table.transaction() as tx:
                with tx.update_schema() as update:
                    update.union_by_name(batches.schema)
                with warnings.catch_warnings():  # a window's first load deletes nothing, as it should
                    warnings.filterwarnings("ignore", "Delete operation did not match any records")
                    tx.delete(condition)
                # one snapshot of every chunk's files: Transaction.append's own writer (pinned 0.12.x), as
                # append takes one table, and a partitioned table no stream
                with tx.update_snapshot().fast_append() as append:
                    numbers = itertools.count()
                    for part in parts:
                        for data_file in _dataframe_to_data_files(tx.table_metadata, part, table.io,
                                                                  append.commit_uuid, numbers):
                            append.append_data_file(data_file)

        self.guard(commit)

    def load_keyed(self, rows: pa.RecordBatchReader, key: str, removed: tuple[str, ...]) -> None:
        """`rows` (one per key) replace the rows of their keys, and `removed` keys' rows go, in one commit."""
        table = self.guard(lambda: self.table(rows.schema, key))

        def commit() -> None:
            with table.transaction() as tx:
                with tx.update_schema() as update:
                    update.union_by_name(rows.schema)
                keys, files, numbers, written = set(removed), [], itertools.count(), uuid.uuid4()
                for part in chunks(rows, CHUNK_BYTES):  # written before the delete, which needs every key
                    keys.update(part.column(key).to_pylist())
                    files.extend(_dataframe_to_data_files(tx.table_metadata, part, table.io, written, numbers))
                if keys:
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", "Delete operation did not match any records")
                        tx.delete(In(key, keys))
                with tx.update_snapshot().fast_append() as append:
                    for data_file in files:
                        append.append_data_file(data_file)

        self.guard(commit)

    def probe(self, probe: Probe) -> None:
        """The catalog answers and holds the table (or its namespace takes one), and a file is written, read
        back and deleted in the warehouse."""
        with probe.step("catalog") as notes:
            namespaces = self.guard(self.catalog.list_namespaces)
            notes.append(f"{len(namespaces)} namespaces")
        with probe.step("table") as notes:
            def load() -> str:
                try:
                    return f"exists, {len(self.catalog.load_table(self.identifier).schema().fields)} columns"
                except NoSuchTableError:
                    return "does not exist yet (the first load creates it)"

            notes.append(self.guard(load))
        self.files.probe(probe)

    def table(self, schema: pa.Schema, key: str | None = None):
        """The table, created on the first load: partitioned by day of `timestamp`, or with `key`,
        unpartitioned and sorted by the key."""
        try:
            return self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            pass
        self.catalog.create_namespace_if_not_exists(self.identifier[:-1])
        try:
            with self.catalog.create_table_transaction(self.identifier, schema=schema) as tx:
                if key is not None:
                    with tx.update_sort_order() as order:
                        order.asc(key, IdentityTransform())
                else:
                    with tx.update_spec() as update:
                        update.add_field("timestamp", DayTransform(), "timestamp_day")
        except TableAlreadyExistsError:  # another load made it first
            pass
        return self.catalog.load_table(self.identifier)

    def guard(self, call):
        """Run a pyiceberg call; its failures become Storage, secrets taken out."""
        try:
            return call()
        except (Invalid, Storage):
            raise
        except Exception as exc:  # pyiceberg, pyarrow's file systems and the catalog's driver raise their own
            reason = redact(without_values(str(exc)) or type(exc).__name__, self.secrets)
            raise Storage(f"loading {self} failed: {reason}") from None


def s3_properties(spec: IcebergTableDestination, placement: Placement) -> dict[str, str]:
    """pyiceberg's S3 file IO settings: the connection's keys, or the server's own where it lends them."""
    out = {"s3.region": spec.region or "us-east-1"}
    out.update({f"s3.{name.replace('_', '-')}": value for name, value in s3_keys(placement, "iceberg").items()})
    if spec.endpoint_url:
        out["s3.endpoint"] = spec.endpoint_url
    return out


def catalog(spec: IcebergTableDestination, folder: Path | None, properties: dict[str, str],
            secrets: dict[str, str]) -> Catalog:
    """The table's catalog: REST, PostgreSQL, or SQLite in the table's folder (the default)."""
    url = spec.catalog_url
    if url and url.startswith(("http://", "https://")):
        if secrets.get("catalog_token"):
            properties = {**properties, "token": secrets["catalog_token"]}
        return RestCatalog(CATALOG_NAME, uri=url, **properties)
    if url:
        parts = urlsplit(url)
        if secrets.get("catalog_password"):
            url = parts._replace(netloc=f"{parts.username}:{secrets['catalog_password']}@{parts.hostname}"
                                        f"{f':{parts.port}' if parts.port else ''}").geturl()
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        if folder is None:
            raise Invalid("an s3:// iceberg warehouse needs a catalog_url: the catalog cannot live in the bucket")
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{folder / CATALOG_FILE}"
    return SqlCatalog(CATALOG_NAME, uri=url, **properties)


def build(placement: Placement) -> IcebergTable:
    return IcebergTable(placement)
