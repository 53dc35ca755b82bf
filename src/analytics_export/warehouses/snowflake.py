"""Snowflake tables (snowflake-connector-python): Parquet files PUT to a temporary stage, `COPY INTO` a
load table by column name, then one transaction deletes the window and inserts the load.

The batches are written to local Parquet files (`staged_files`), each PUT and removed as soon
as it is closed, so memory and disk stay bounded whatever the export's size. The target is created on
the first load: the table's own columns unquoted (so `EVENT`, `PROPERTIES:plan` work as Snowflake users
write them), `properties` a VARIANT, timestamps TIMESTAMP_TZ, and each selected property a VARCHAR
under its exact, quoted name; columns a later export selects are added. Nothing is visible before the
COMMIT: a load that fails or is killed leaves the table as it was (a killed one may leave its load
table, `<TABLE>__LOAD_<id>`, which is safe to drop).

A keyed load (`LoadWindow.key`) deletes the rows of the loaded and removed keys instead of a window, in
the same transaction; the table it creates is clustered by the key. int64 is NUMBER, float64 FLOAT,
timestamps TIMESTAMP_TZ, and JSON-text fields VARIANT, as `properties` is.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pyarrow as pa
import snowflake.connector
from cryptography.hazmat.primitives import serialization
from snowflake.connector.errors import Error as SnowflakeError
from snowflake.connector.errors import ProgrammingError

from ..destinations import Placement
from ..destinations.guard import check_host
from ..destinations.specs import SnowflakeTableDestination
from ..errors import Invalid, Rejected, Storage
from . import COLUMNS, LoadWindow, TableDestination, kind_of, staged_files, without_values

if TYPE_CHECKING:
    from ..destinations import Probe

REFUSED_LOGIN = {390100, 390101, 390102, 390144, 394304}
"""Snowflake's codes for a login it refuses (wrong password, locked or disabled user, a JWT that does not
match the user's key): permanent, like every ProgrammingError (no such object, no privilege, bad SQL)."""
TYPES = {"properties": "VARIANT", "timestamp": "TIMESTAMP_TZ", "inserted_at": "TIMESTAMP_TZ"}


def column(name: str) -> str:
    """A column as the table names it: the table's own unquoted (upper case), a property quoted exactly."""
    return name.upper() if name in COLUMNS else '"' + name.replace('"', '""') + '"'


KINDS = {"json": "VARIANT", "timestamp": "TIMESTAMP_TZ", "int64": "NUMBER", "float64": "FLOAT", "text": "VARCHAR"}


def column_type(field: pa.Field) -> str:
    return TYPES.get(field.name) or KINDS[kind_of(field)]


class SnowflakeTable(TableDestination):
    kind = "snowflake"

    def __init__(self, placement: Placement) -> None:
        spec: SnowflakeTableDestination = placement.spec  # type: ignore[assignment]
        super().__init__(spec.table)
        self.spec = spec
        secrets = placement.secrets
        if not (secrets.get("password") or secrets.get("private_key")):
            raise Invalid("a snowflake table needs a connection (POST /api/connections, type snowflake) holding "
                          "password or private_key")
        target = urlsplit(spec.url) if spec.url else None
        host = target.hostname if target else f"{spec.account}.snowflakecomputing.com"
        check_host(host or "", placement.settings.destination_allow)
        self.options: dict = {"account": spec.account, "user": spec.user, "host": host, "login_timeout": 30,
                              "network_timeout": 300, "client_session_keep_alive": False,
                              "session_parameters": {"QUERY_TAG": "analytics-export"}}
        if target is not None:
            self.options.update(protocol=target.scheme, port=target.port or (443 if target.scheme == "https" else 80))
        self.options.update({k: v for k, v in (("warehouse", spec.warehouse), ("role", spec.role)) if v})
        if secrets.get("private_key"):
            self.options["private_key"] = private_key(secrets["private_key"], secrets.get("private_key_passphrase"))
        else:
            self.options["password"] = secrets["password"]
        self.database, self.schema, self.table = spec.table.split(".")
        self.options.update(database=self.database, schema=self.schema)

    def write(self, batches: pa.RecordBatchReader, window: LoadWindow) -> None:
        folded = [n.upper() for n in batches.schema.names]
        twins = sorted({n for n in folded if folded.count(n) > 1})
        if twins:  # COPY INTO matches names case-insensitively, and unquoted names are upper case
            raise Invalid(f"{self} would get two columns named {twins[0]} in any case: select properties whose "
                          "names differ from each other, and from the table's own columns, in more than case")
        target = f"{self.database}.{self.schema}.{self.table}"
        suffix = uuid.uuid4().hex[:12].upper()
        load, stage = f"{target}__LOAD_{suffix}", f"ANALYTICS_EXPORT_{suffix}"  # the stage: in the session's schema
        columns = [(column(f.name), column_type(f)) for f in batches.schema]
        cluster = f" CLUSTER BY ({column(window.key)})" if window.key is not None else ""
        try:
            with snowflake.connector.connect(**self.options) as conn, conn.cursor() as cur:
                cur.execute(f"CREATE TABLE IF NOT EXISTS {target} "
                            f"({', '.join(f'{name} {kind}' for name, kind in columns)}){cluster}")
                cur.execute("SELECT column_name FROM information_schema.columns WHERE table_catalog = %s "
                            "AND table_schema = %s AND table_name = %s",
                            (self.database.upper(), self.schema.upper(), self.table.upper()))
                present = {row[0] for row in cur.fetchall()}
                for field, (name, kind) in zip(batches.schema, columns):
                    if column(field.name).strip('"').replace('""', '"') not in present:
                        cur.execute(f"ALTER TABLE {target} ADD COLUMN {name} {kind}")
                cur.execute(f"CREATE TEMPORARY STAGE {stage}")
                loaded = ", ".join(f"{name} {'VARCHAR' if kind == 'VARIANT' else kind}" for name, kind in columns)
                cur.execute(f"CREATE TRANSIENT TABLE {load} ({loaded})")
                try:
                    self.stage(cur, batches, stage)
                    cur.execute(f"COPY INTO {load} FROM @{stage} FILE_FORMAT = (TYPE = PARQUET) "
                                "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE PURGE = TRUE")
                    if window.key is not None:
                        key = column(window.key)
                        gone = f" OR {key} IN ({', '.join(['%s'] * len(window.removed))})" if window.removed else ""
                        replaced, params = f"{key} IN (SELECT {key} FROM {load}){gone}", window.removed
                    else:
                        time = column(window.column)
                        among = f" AND UUID IN (SELECT UUID FROM {load})" if window.loaded_only else ""
                        replaced, params = f"{time} >= %s AND {time} < %s{among}", (window.start, window.end)
                    listed = ", ".join(name for name, _ in columns)
                    values = ", ".join(f"PARSE_JSON({name})" if kind == "VARIANT" else name for name, kind in columns)
                    cur.execute("BEGIN")
                    cur.execute(f"DELETE FROM {target} WHERE {replaced}", params)
                    cur.execute(f"INSERT INTO {target} ({listed}) SELECT {values} FROM {load}")
                    cur.execute("COMMIT")
                finally:  # the stage is temporary: it goes with the session
                    cur.execute(f"DROP TABLE IF EXISTS {load}")
        except SnowflakeError as exc:
            raise self.explain(exc) from None

    def explain(self, exc: SnowflakeError) -> Rejected | Storage:
        reason = without_values(str(exc.msg or exc))
        if isinstance(exc, ProgrammingError) or exc.errno in REFUSED_LOGIN:  # another attempt fails alike
            return Rejected(f"{self} refused the load: {reason}")
        return Storage(f"loading {self} failed: {reason}")

    def probe(self, probe: Probe) -> None:
        """Log in; in the table's schema make and drop a table and a stage as a load does; and, when the
        table exists, a DELETE of no rows in a transaction rolled back."""
        target = f"{self.database}.{self.schema}.{self.table}"
        suffix = uuid.uuid4().hex[:12].upper()
        with probe.step("login", "logged in"):
            try:
                conn = snowflake.connector.connect(**self.options)
            except SnowflakeError as exc:
                raise self.explain(exc) from None
        try:
            with probe.step("table") as notes, conn.cursor() as cur:
                try:
                    cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_catalog = %s "
                                "AND table_schema = %s AND table_name = %s",
                                (self.database.upper(), self.schema.upper(), self.table.upper()))
                    if cur.fetchone()[0]:
                        cur.execute("BEGIN")
                        try:
                            cur.execute(f"DELETE FROM {target} WHERE FALSE")
                        finally:
                            cur.execute("ROLLBACK")
                        notes.append("exists; a DELETE of no rows, rolled back")
                    else:
                        notes.append("does not exist yet (the first load creates it)")
                    cur.execute(f"CREATE TRANSIENT TABLE {target}__TEST_{suffix} (ID INTEGER)")
                    cur.execute(f"DROP TABLE IF EXISTS {target}__TEST_{suffix}")
                    cur.execute(f"CREATE TEMPORARY STAGE ANALYTICS_EXPORT_TEST_{suffix}")  # gone with the session
                    notes.append("a load table created and dropped; a temporary stage created")
                except SnowflakeError as exc:
                    raise self.explain(exc) from None
        finally:
            conn.close()

    @staticmethod
    def stage(cur, batches: pa.RecordBatchReader, stage: str) -> None:
        """PUT `batches` to `stage` as bounded Parquet files, each removed here once uploaded."""
        for path in staged_files(batches):
            cur.execute(f"PUT 'file://{path}' @{stage} AUTO_COMPRESS = FALSE PARALLEL = 4")


def private_key(pem: str, passphrase: str | None) -> bytes:
    """The DER bytes the connector takes for key-pair authentication, from the user's PEM key."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), passphrase.encode() if passphrase else None)
    except (ValueError, TypeError) as exc:
        raise Invalid(f"the connection's private_key is not a PEM private key this passphrase opens: {exc}") from None
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def build(placement: Placement) -> SnowflakeTable:
    return SnowflakeTable(placement)
