"""Warehouse tables: destinations that load an export's batches into a table instead of writing files.

A load replaces its window: the rows whose time column (the export's `time_field`) falls in
[start_date, end_date) give way to the export's events, so a rerun of a window (a retry, a
schedule's window run again under the same export id) leaves exactly one copy of its events.
Tables hold the Parquet shape (typed timestamps; `properties` as JSON text, or one text column per
selected property) plus each event's `uuid` and `inserted_at`: an `inserted_at` window can be
replaced, and duplicates stay detectable. One module per table type, registered in
`destinations/registry.py`; `pipeline.tables.load_table` loads an export's batches through `load`, and a
stream appends each batch with the batch's own uuids as its window (streaming/sinks/table.py).

A keyed load (`LoadWindow.key`, for models such as persons and sessions) replaces rows by key instead:
the rows whose key column equals the key of a loaded row, or is one of `removed`, give way to the
loaded rows, whatever their time columns. The load's rows are first spooled to a local DuckDB file
(`unique_by_key`), so a key loaded twice in one load keeps only its last row (it should not happen; a
duplicate never reaches the table), and a row without a key is refused. Tables created by a keyed load
are indexed, ordered or clustered by the key and never partitioned by day; int64 and float64 columns
are typed as such, and string fields marked JSON text (`{b"json": b"text"}`) are stored as each engine
stores `properties` (see each module).
"""

from __future__ import annotations

import re
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterable, Iterator

from ..destinations import Destination, FileUpload, Placement
from ..errors import Invalid
from ..formats import is_json

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = ("event", "distinct_id", "timestamp", "properties", "uuid", "inserted_at")
"""A table's own columns: a selected property (a column of its own) may not take one of these names."""


@dataclass(frozen=True)
class LoadWindow:
    """The rows a load replaces: those whose `column` is in [start, end), and with `loaded_only`,
    only those among them whose uuid the load brings (a stream's batch appended again replaces its
    own earlier copy, and nothing else). With `key`, instead: the rows whose `key` column equals the key
    of a loaded row or is in `removed`, whatever their time (start, end and column are not used)."""

    start: datetime
    end: datetime
    column: str
    loaded_only: bool = False
    key: str | None = None
    removed: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.key is not None:
            gone = f" and {len(self.removed)} removed" if self.removed else ""
            return f"rows by {self.key}: the loaded keys{gone}"
        among = " with the loaded uuids" if self.loaded_only else ""
        return f"{self.column} in [{self.start.isoformat()}, {self.end.isoformat()}){among}"


def check_columns(properties: Iterable[str] | None, table: str = "the table", taken: tuple[str, ...] = COLUMNS) -> None:
    """Invalid if a selected property would take the name of one of the table's own columns."""
    clash = [p for p in properties or () if p in taken]
    if clash:
        raise Invalid(f"property {clash[0]!r} would be a column of {table}, which has one of that name already; "
                      "select the properties other than " + ", ".join(taken))


class TableDestination(Destination):
    """A table: `load` replaces one window of it with a stream of batches; it takes no files."""

    manifest = False
    kind: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name

    def open(self, name: str) -> FileUpload:
        raise Invalid(f"{self} is loaded with rows; it cannot take the file {name}")

    def load(self, batches: pa.RecordBatchReader, window: LoadWindow) -> None:
        """Replace the rows of `window` with `batches` (created or given new columns as needed); a keyed
        load's rows first go through `unique_by_key`."""
        if window.key is None:
            self.write(batches, window)
            return
        with unique_by_key(batches, window.key) as rows:
            self.write(rows, window)

    def write(self, batches: pa.RecordBatchReader, window: LoadWindow) -> None:
        """`load`, with one row per key when the load is keyed."""
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.kind} table {self.name}"


def without_values(message: str) -> str:
    """A table engine's error, first line only, without the event values it may quote (a JSON object, a
    long quoted string): events stay out of errors and logs."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    return re.sub(r"'[^']{16,}'|\"[^\"]{16,}\"", "'...'", re.sub(r"\{.*", "{...}", line))


def s3_keys(placement: Placement, kind: str) -> dict[str, str]:
    """The S3 keys of an s3:// table's connection (access_key_id, secret_access_key, session_token), or
    none where the server lends its own credentials."""
    secrets = placement.secrets
    if not secrets and not placement.settings.server_credentials:
        raise Invalid(f"an s3:// {kind} table needs a connection (POST /api/connections, type {kind}): this server "
                      "does not lend its own credentials unless ANALYTICS_EXPORT_SERVER_CREDENTIALS is set")
    return {k: secrets[k] for k in ("access_key_id", "secret_access_key", "session_token") if secrets.get(k)}


FILE_ROWS = 1_000_000
"""Rows per staged Parquet file: warehouses load files of 100-250 MB compressed fastest."""


def staged_files(batches: pa.RecordBatchReader) -> Iterator[Path]:
    """`batches` as snappy Parquet files of at most FILE_ROWS rows in a temporary folder, each yielded once
    closed and removed when the caller asks for the next (it has sent it by then): disk and memory hold
    one file."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="analytics-export-load-") as folder:
        writer, rows, path = None, 0, Path(folder)
        for batch in batches:
            if writer is None:
                path = Path(folder) / f"part-{uuid.uuid4().hex}.parquet"
                writer = pq.ParquetWriter(path, batches.schema, compression="snappy")
            writer.write_batch(batch)
            rows += batch.num_rows
            if rows >= FILE_ROWS:
                writer.close()
                yield path
                path.unlink()
                writer, rows = None, 0
        if writer is not None:
            writer.close()
            yield path


ROW = "_analytics_export_row"
"""The spool's column numbering the load's rows (the last of a key wins); never written to a table."""


def kind_of(field: pa.Field) -> str:
    """What a column holds, for a table's type map: `json`, `timestamp`, `int64`, `float64` or `text`."""
    import pyarrow as pa

    if is_json(field):
        return "json"
    if pa.types.is_timestamp(field.type):
        return "timestamp"
    return "int64" if pa.types.is_int64(field.type) else "float64" if pa.types.is_float64(field.type) else "text"


@contextmanager
def unique_by_key(batches: pa.RecordBatchReader, key: str) -> Iterator[pa.RecordBatchReader]:
    """`batches` with one row per `key` (the last loaded of each), ordered by key: spooled to a DuckDB file
    in a temporary folder (DuckDB spills, so memory stays bounded), read back as batches of the same
    schema. Invalid if `key` is not a column or a row has none; the source's own failure is raised as it was."""
    import duckdb
    import pyarrow as pa

    schema = batches.schema
    if key not in schema.names:
        raise Invalid(f"the load's rows have no column {key!r} to key them by")
    failed: list[Exception] = []

    def numbered() -> Iterator[pa.RecordBatch]:
        count = 0
        try:
            for batch in batches:
                yield batch.append_column(ROW, pa.array(range(count, count + batch.num_rows), pa.int64()))
                count += batch.num_rows
        except Exception as exc:  # DuckDB wraps it as it crosses the Arrow stream: raised as it was, below
            failed.append(exc)
            raise

    incoming = pa.RecordBatchReader.from_batches(schema.append(pa.field(ROW, pa.int64())), numbered())
    name = '"' + key.replace('"', '""') + '"'
    with tempfile.TemporaryDirectory(prefix="analytics-export-keyed-") as folder:
        con = duckdb.connect(str(Path(folder) / "rows.duckdb"))
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.register("incoming", incoming)
            try:
                con.execute("CREATE TABLE spooled AS SELECT * FROM incoming")
            except duckdb.Error:
                if failed:
                    raise failed[0] from None
                raise
            if con.execute(f"SELECT count(*) FROM spooled WHERE {name} IS NULL").fetchall()[0][0]:
                raise Invalid(f"a row of the load has no {key}: a keyed load needs one in every row")
            result = con.sql(f"SELECT * EXCLUDE ({ROW}) FROM spooled QUALIFY row_number() OVER "
                                 f"(PARTITION BY {name} ORDER BY {ROW} DESC) = 1 ORDER BY {name}")
            yield pa.RecordBatchReader.from_batches(
                schema, (batch.cast(schema) for batch in result.to_arrow_reader(FILE_ROWS // 10)))
        finally:
            con.close()


def table_files(placement: Placement, uri: str, endpoint_url: str | None, region: str | None) -> Destination:
    """The folder of a table's files (an s3:// URI, with the table's connection, or a folder on this
    machine) as a file destination: what a test writes, reads back and deletes to prove the table's data
    can be stored there."""
    if not uri.startswith("s3://"):
        from ..destinations.local import LocalDestination

        return LocalDestination(Path(uri))
    from obstore.store import S3Store

    from ..destinations.objectstore import ObjectStoreDestination, client_options, retry_config

    bucket, _, folder = uri.removeprefix("s3://").partition("/")
    config = {**s3_keys(placement, placement.spec.type), "region": region or "us-east-1"}
    if endpoint_url:
        config.update(endpoint=endpoint_url, virtual_hosted_style_request=False)
    store = S3Store(bucket, config=config, client_options=client_options(placement, endpoint_url),
                    retry_config=retry_config(placement))
    inside = Placement(placement.spec, placement.project, placement.settings, placement.secrets, folder.strip("/"))
    return ObjectStoreDestination(inside, store, f"s3://{bucket}")


def local_path(placement: Placement, name: str) -> Path:
    """Where a table on this machine lives: DATA_DIR/tables/PROJECT/NAME, each project apart."""
    return placement.settings.data_dir / "tables" / placement.project / name
