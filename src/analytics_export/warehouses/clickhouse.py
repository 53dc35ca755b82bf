"""ClickHouse tables (clickhouse-connect): a window's batches go to a staging table as Arrow, then the
window is deleted from the table and the staged rows copied in, inside the server.

The table is a MergeTree created from the export's columns when missing (ordered by `timestamp`,
`uuid`) and given the columns a later export adds: timestamps DateTime64(6, 'UTC'), `uuid` UUID,
selected properties Nullable(String), the rest String. ClickHouse has no transaction around a
delete and an insert: a load that fails while staging (the source, the network) leaves the table
as it was, but one that fails between the (synchronous, lightweight) DELETE and the copy leaves the
window empty or partly copied until the export runs again, which the worker does for a storage
failure. Two runs of one window copying at the same moment could both insert (a run that lost its
lease stops at its next batch, so only one still staging when the other copies is safe). A killed
run leaves its staging table (`TABLE__load_*`) behind.
A keyed load (`LoadWindow.key`) deletes the rows of the loaded and removed keys instead of a window, with
the same (lack of a) transaction; the table it creates is ordered by the key alone, which is String
(ClickHouse sorts by no Nullable column), every other column Nullable: Int64, Float64, timestamps, and
String for JSON-text fields, as `properties` is.
`chdb:NAME` runs the same client on chDB, in DATA_DIR/tables/PROJECT/NAME (one path per process).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.exceptions import ClickHouseError

from ..destinations import Placement
from ..destinations.guard import check_host
from ..destinations.specs import ClickHouseTableDestination
from ..errors import Rejected, Storage
from . import COLUMNS, LoadWindow, TableDestination, local_path

if TYPE_CHECKING:
    from ..destinations import Probe

TIME = "DateTime64(6, 'UTC')"
TYPES = {"event": "LowCardinality(String)", "uuid": "UUID"}


def quoted(name: str) -> str:
    """A column name (a property's may hold `.` and spaces) as a quoted identifier."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def qualified(name: str) -> str:
    """`table` or `schema.table` as quoted identifiers."""
    return ".".join(map(quoted, name.split(".")))


def column_type(field: pa.Field, key: str | None = None) -> str:
    """An event table's column, or, with `key`, a keyed table's (every column but the key Nullable)."""
    if key is None and pa.types.is_timestamp(field.type):
        return TIME
    if key is None and field.name in TYPES:
        return TYPES[field.name]
    kind = (TIME if pa.types.is_timestamp(field.type) else "Int64" if pa.types.is_int64(field.type)
            else "Float64" if pa.types.is_float64(field.type) else "String")
    plain = field.name == key if key is not None else field.name in COLUMNS
    return kind if plain else f"Nullable({kind})"


class ClickHouseTable(TableDestination):
    kind = "clickhouse"

    def __init__(self, placement: Placement) -> None:
        spec: ClickHouseTableDestination = placement.spec  # type: ignore[assignment]
        super().__init__(spec.table)
        self.spec, self.placement = spec, placement

    def client(self) -> Any:
        """A client of the table's server, or of chDB in the project's tables folder."""
        if self.spec.url.startswith("chdb:"):
            path = local_path(self.placement, self.spec.url.removeprefix("chdb:"))
            path.mkdir(parents=True, exist_ok=True)
            return clickhouse_connect.get_client(interface="chdb", path=str(path))
        parts = urlsplit(self.spec.url)
        secure = parts.scheme == "clickhouses"
        address = check_host(parts.hostname or "", self.placement.settings.destination_allow)[0]
        return clickhouse_connect.get_client(
            host=parts.hostname if secure else address,  # https needs the name for its certificate
            port=parts.port or (8443 if secure else 8123), username=parts.username or "default",
            password=self.placement.secrets.get("password", ""), database=parts.path.strip("/") or None,
            secure=secure)

    def write(self, batches: pa.RecordBatchReader, window: LoadWindow) -> None:
        table, time = qualified(self.name), quoted(window.column)
        stage = f"{self.name}__load_{uuid.uuid4().hex[:12]}"
        columns = [(quoted(f.name), column_type(f, window.key)) for f in batches.schema]
        order = quoted(window.key) if window.key is not None else "(`timestamp`, uuid)"
        names = ", ".join(name for name, _ in columns)
        try:
            ch = self.client()
        except (ClickHouseError, OSError) as exc:
            raise Storage(f"cannot reach {self}: {str(exc).splitlines()[0]}") from None
        try:
            ch.command(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{n} {t}' for n, t in columns)}) "
                       f"ENGINE = MergeTree ORDER BY {order}")
            for name, kind in columns:
                ch.command(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {kind}")
            ch.command(f"CREATE TABLE {qualified(stage)} AS {table}")
            try:
                for batch in batches:
                    ch.insert_arrow(stage, pa.Table.from_batches([batch]))
                if window.key is not None:
                    key = quoted(window.key)
                    gone = f" OR {key} IN {{gone:Array(String)}}" if window.removed else ""
                    ch.command(f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {qualified(stage)}){gone}",
                               parameters={"gone": list(window.removed)})
                else:
                    among = f" AND uuid IN (SELECT uuid FROM {qualified(stage)})" if window.loaded_only else ""
                    ch.command(f"DELETE FROM {table} WHERE {time} >= {{lo:{TIME}}} AND {time} < {{hi:{TIME}}}"
                               f"{among}", parameters={"lo": window.start, "hi": window.end})
                ch.command(f"INSERT INTO {table} ({names}) SELECT {names} FROM {qualified(stage)}")
            finally:
                ch.command(f"DROP TABLE IF EXISTS {qualified(stage)}")
        except ClickHouseError as exc:
            raise Storage(f"loading {self} failed: {str(exc).splitlines()[0]}") from None
        finally:
            ch.close()


    def probe(self, probe: Probe) -> None:
        """What a load does besides its rows: create a table next to the target (a load stages in one),
        insert a row into it and drop it; and the target's columns when it exists."""
        with probe.step("login", "logged in"):
            try:
                ch = self.client()
                ch.command("SELECT 1")
            except (ClickHouseError, OSError) as exc:
                raise Storage(f"cannot reach {self}: {str(exc).splitlines()[0]}") from None
        try:
            with probe.step("table") as notes:
                table = qualified(self.name)
                scratch = qualified(f"{self.name}__test_{uuid.uuid4().hex[:12]}")
                try:
                    exists = ch.command(f"EXISTS TABLE {table}")
                    notes.append("exists" if str(exists) == "1" else "does not exist yet (the first load creates it)")
                    ch.command(f"CREATE TABLE {scratch} (uuid UUID) ENGINE = Memory")
                    try:
                        ch.command(f"INSERT INTO {scratch} SELECT generateUUIDv4()")
                    finally:
                        ch.command(f"DROP TABLE IF EXISTS {scratch}")
                    notes.append("a staging table created, written and dropped")
                except ClickHouseError as exc:
                    raise Rejected(f"{self}: {str(exc).splitlines()[0]}") from None
        finally:
            ch.close()


def build(placement: Placement) -> ClickHouseTable:
    return ClickHouseTable(placement)
