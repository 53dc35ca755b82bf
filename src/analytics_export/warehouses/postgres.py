"""PostgreSQL tables: binary COPY (ADBC) into a temporary table, then one transaction replaces the window.

The table is created from the export's columns when missing (indexed on `timestamp` and
`inserted_at`) and given the columns a later export adds. `properties` is jsonb, `uuid` uuid,
timestamps timestamptz, the rest text. The whole load is one transaction under a lock on the
table's name: a load that fails or is killed midway leaves the table as it was, and two runs of one
window (a retry racing a run that lost its lease) cannot both insert.

A keyed load (`LoadWindow.key`) deletes the rows of the loaded and removed keys instead of a window, in
the same transaction; the table it creates has a unique index on the key (no time indexes). int64 is
bigint, float64 double precision, and JSON-text fields are jsonb, as `properties` is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa

from ..destinations import Placement
from ..destinations.guard import check_host
from ..destinations.specs import PostgresTableDestination
from ..errors import Rejected, Storage
from ..sources.postgres import first_line
from . import LoadWindow, TableDestination, kind_of

if TYPE_CHECKING:
    from ..destinations import Probe

TYPES = {"properties": "jsonb", "uuid": "uuid"}
STAGE = "analytics_export_load"


def quoted(name: str) -> str:
    """A column name (a property's may hold `.` and spaces) as a quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def qualified(name: str) -> str:
    """`table` or `schema.table` as quoted identifiers."""
    return ".".join(map(quoted, name.split(".")))


KINDS = {"json": "jsonb", "timestamp": "timestamptz", "int64": "bigint", "float64": "double precision", "text": "text"}


def column_type(field: pa.Field) -> str:
    return TYPES.get(field.name) or KINDS[kind_of(field)]


class PostgresTable(TableDestination):
    kind = "postgres"

    def __init__(self, placement: Placement) -> None:
        spec: PostgresTableDestination = placement.spec  # type: ignore[assignment]
        super().__init__(spec.table)
        parts = urlsplit(spec.url)
        # libpq connects to the address the SSRF guard checked, not to a second DNS answer
        address = check_host(parts.hostname or "", placement.settings.destination_allow)[0]
        options = parse_qsl(parts.query) + [("hostaddr", address)]
        if placement.secrets.get("password"):
            options.append(("password", placement.secrets["password"]))
        self.uri = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(options)))

    def write(self, batches: pa.RecordBatchReader, window: LoadWindow) -> None:
        table, time = qualified(self.name), quoted(window.column)
        columns = [(quoted(f.name), column_type(f)) for f in batches.schema]
        names = ", ".join(name for name, _ in columns)
        casts = ", ".join(f"{name}::{kind}" for name, kind in columns)
        try:
            with adbc.connect(self.uri) as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", (f"analytics-export {table}",))
                cur.execute("SELECT to_regclass($1) IS NULL", (table,))
                if cur.fetchone()[0]:
                    cur.execute(f"CREATE TABLE {table} ({', '.join(f'{name} {kind}' for name, kind in columns)})")
                    if window.key is not None:
                        cur.execute(f"CREATE UNIQUE INDEX ON {table} ({quoted(window.key)})")
                    else:
                        cur.execute(f'CREATE INDEX ON {table} ("timestamp")')
                        cur.execute(f"CREATE INDEX ON {table} (inserted_at)")
                cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
                            "AND NOT attisdropped", (table,))
                present = {row[0] for row in cur.fetchall()}
                for field, (name, kind) in zip(batches.schema, columns):
                    if field.name not in present:  # an ALTER locks the table even when it changes nothing
                        cur.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                cur.adbc_ingest(STAGE, batches, mode="create", temporary=True)
                if window.key is not None:
                    key = quoted(window.key)
                    kind = column_type(batches.schema.field(window.key))
                    gone = ", ".join(f"${n}::{kind}" for n in range(1, len(window.removed) + 1))
                    cur.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT {key}::{kind} FROM {STAGE})"
                                + (f" OR {key} IN ({gone})" if gone else ""), window.removed or None)
                else:
                    among = f" AND uuid IN (SELECT uuid::uuid FROM {STAGE})" if window.loaded_only else ""
                    cur.execute(f"DELETE FROM {table} WHERE {time} >= $1 AND {time} < $2{among}",
                                (window.start, window.end))
                cur.execute(f"INSERT INTO {table} ({names}) SELECT {casts} FROM {STAGE}")
                conn.commit()
        except adbc.Error as exc:
            raise Storage(f"loading {self} failed: {first_line(exc)}") from None


    def probe(self, probe: Probe) -> None:
        """In one transaction, rolled back: the table's INSERT and DELETE privileges and the lock a load
        takes, or, before the first load, the table created; and a temporary table, as loads stage in one."""
        table = qualified(self.name)
        with probe.step("login", "logged in"):
            try:
                conn = adbc.connect(self.uri)
            except adbc.Error as exc:
                raise Storage(f"cannot connect to {self}: {first_line(exc)}") from None
        try:
            with probe.step("table") as notes, conn.cursor() as cur:
                try:
                    cur.execute("SELECT to_regclass($1) IS NULL", (table,))
                    if cur.fetchone()[0]:
                        cur.execute(f"CREATE TABLE {table} (uuid uuid, inserted_at timestamptz)")
                        notes.append("does not exist yet: created, then rolled back (the first load creates it)")
                    else:
                        cur.execute("SELECT has_table_privilege($1, 'INSERT'), has_table_privilege($1, 'DELETE')",
                                    (table,))
                        insert, delete = cur.fetchone()
                        if not (insert and delete):
                            lacking = " and ".join(p for p, ok in (("INSERT", insert), ("DELETE", delete)) if not ok)
                            raise Rejected(f"{self}: the user lacks {lacking} on the table; GRANT INSERT, DELETE")
                        cur.execute(f"DELETE FROM {table} WHERE false")
                        notes.append("exists; INSERT and DELETE granted; a DELETE of no rows, rolled back")
                    cur.execute("CREATE TEMPORARY TABLE analytics_export_test (id int)")
                except adbc.Error as exc:
                    raise Rejected(f"{self}: {first_line(exc)}") from None
                finally:
                    conn.rollback()
        finally:
            conn.close()


def build(placement: Placement) -> PostgresTable:
    return PostgresTable(placement)
