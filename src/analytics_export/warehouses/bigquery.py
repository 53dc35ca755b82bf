"""BigQuery tables (google-cloud-bigquery): Parquet load jobs into a load table, then one multi-statement
transaction deletes the window and inserts the load.

The batches are written to local Parquet files (`staged_files`), each loaded (a load job from the file,
or, with a staging bucket, uploaded to GCS for one load job from gs://) and removed as soon as it is
closed, so memory and disk stay bounded. The target is created
on the first load, partitioned by day of `timestamp` and clustered by `event`: `properties` is JSON,
timestamps TIMESTAMP, the rest STRING; a selected property whose name BigQuery does not take (`$browser`,
`utm.source x`) gets a column name made of its letters, digits and `_` (`_browser`, `utm_source_x`) with
the original in the column's description. Columns a later export selects are added. Nothing is visible
before the COMMIT: a load that fails or is killed leaves the table as it was; its load table expires
within a day by itself. Honours BIGQUERY_EMULATOR_HOST and STORAGE_EMULATOR_HOST (emulators, reached
without credentials).

A keyed load (`LoadWindow.key`) deletes the rows of the loaded and removed keys instead of a window, in
the same transaction (a removed key is written as `FROM_HEX('...')`: hex digits only); the table it
creates is clustered by the key and not partitioned. int64 is INT64, float64 FLOAT64, timestamps
TIMESTAMP, and JSON-text fields JSON, as `properties` is.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pyarrow as pa
import requests
from google.api_core import exceptions as api
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.exceptions import GoogleAuthError
from google.cloud import bigquery, storage
from google.cloud.bigquery.retry import DEFAULT_RETRY

from ..destinations import Placement, redact
from ..destinations.gcs import service_account_credentials
from ..destinations.specs import BigQueryTableDestination
from ..errors import Invalid, Rejected, Storage
from . import LoadWindow, TableDestination, kind_of, staged_files, without_values

if TYPE_CHECKING:
    from ..destinations import Probe

EMULATOR = "BIGQUERY_EMULATOR_HOST"
TYPES = {"properties": "JSON", "timestamp": "TIMESTAMP", "inserted_at": "TIMESTAMP"}
LOAD_TABLE_HOURS = 24
"""A load table expires by itself this long after it was made, should its load be killed."""


def column_names(names: list[str]) -> list[str]:
    """BigQuery column names for `names`: letters, digits and `_`, not starting with a digit, unique
    regardless of case (`$browser` -> `_browser`)."""
    taken: set[str] = set()
    out = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_]", "_", name)[:290]
        base = base if base and not base[0].isdigit() else f"_{base}"
        candidate, n = base, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def micros(value: datetime) -> str:
    """A window bound as SQL: `TIMESTAMP_MICROS(n)`, digits only (BigQuery scripts take no query parameters
    in every runtime we test against, and an integer cannot carry anything but itself)."""
    return f"TIMESTAMP_MICROS({int(value.timestamp() * 1_000_000)})"


KINDS = {"json": "JSON", "timestamp": "TIMESTAMP", "int64": "INT64", "float64": "FLOAT64", "text": "STRING"}


def column_type(field: pa.Field) -> str:
    return TYPES.get(field.name) or KINDS[kind_of(field)]


def text(value: str) -> str:
    """A string as SQL made of hex digits only (scripts take no query parameters, see `micros`)."""
    return f"SAFE_CONVERT_BYTES_TO_STRING(FROM_HEX('{value.encode().hex()}'))"


class BigQueryTable(TableDestination):
    kind = "bigquery"

    def __init__(self, placement: Placement) -> None:
        spec: BigQueryTableDestination = placement.spec  # type: ignore[assignment]
        super().__init__(spec.table)
        self.spec, self.secrets = spec, placement.secrets
        self.dataset, self.table = spec.table.split(".")
        self.credentials = self.guard(lambda: credentials(placement))
        self.client = self.guard(lambda: client(spec, self.credentials))
        config = placement.settings.export  # google's retries are bounded by time: about upload_retries waits
        backoff = max(config.upload_backoff_seconds, 0.01)
        self.retries = config.upload_retries
        self.retry = DEFAULT_RETRY.with_delay(initial=backoff, multiplier=2, maximum=30).with_deadline(
            backoff * 2 ** (config.upload_retries + 1) + 5)

    def write(self, batches: pa.RecordBatchReader, window: LoadWindow) -> None:
        names = column_names(batches.schema.names)
        fields = [bigquery.SchemaField(name, column_type(field), description=field.name if name != field.name else None)
                  for name, field in zip(names, batches.schema)]
        key = names[batches.schema.names.index(window.key)] if window.key is not None else None
        target = f"{self.spec.project}.{self.dataset}.{self.table}"
        load = f"{target}__load_{uuid.uuid4().hex[:12]}"
        batches = pa.RecordBatchReader.from_batches(
            pa.schema([pa.field(n, f.type) for n, f in zip(names, batches.schema)]),
            (pa.RecordBatch.from_arrays(b.columns, names=names) for b in batches))
        self.guard(lambda: self.prepare(target, fields, key))
        staging = bigquery.Table(load, schema=[f if f.field_type != "JSON" else bigquery.SchemaField(f.name, "STRING")
                                               for f in fields])
        staging.expires = datetime.now(timezone.utc) + timedelta(hours=LOAD_TABLE_HOURS)
        self.guard(lambda: self.client.create_table(staging, retry=self.retry))
        try:
            self.stage(batches, load)
            if key is not None:
                gone = f" OR `{key}` IN ({', '.join(map(text, window.removed))})" if window.removed else ""
                replaced = f"`{key}` IN (SELECT `{key}` FROM `{load}`){gone}"
            else:
                time = f"`{names[batches.schema.names.index(window.column)]}`"
                among = f" AND uuid IN (SELECT uuid FROM `{load}`)" if window.loaded_only else ""
                replaced = f"{time} >= {micros(window.start)} AND {time} < {micros(window.end)}{among}"
            listed = ", ".join(f"`{f.name}`" for f in fields)
            values = ", ".join(f"PARSE_JSON(`{f.name}`)" if f.field_type == "JSON" else f"`{f.name}`" for f in fields)
            script = (f"BEGIN TRANSACTION;\n"
                      f"DELETE FROM `{target}` WHERE {replaced};\n"
                      f"INSERT INTO `{target}` ({listed}) SELECT {values} FROM `{load}`;\n"
                      "COMMIT TRANSACTION;")
            self.guard(lambda: self.client.query(script, location=self.spec.location, retry=self.retry).result(
                retry=self.retry))
        finally:
            self.guard(lambda: self.client.delete_table(load, not_found_ok=True, retry=self.retry))

    def prepare(self, target: str, fields: list[bigquery.SchemaField], key: str | None = None) -> None:
        """The target created from `fields` when missing (partitioned by day and clustered by event, or
        with `key`, clustered by it), or given those it lacks."""
        try:
            table = self.client.get_table(target, retry=self.retry)
        except api.NotFound:
            table = bigquery.Table(target, schema=fields)
            if key is not None:
                table.clustering_fields = [key]
            else:
                table.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY,
                                                                    field="timestamp")
                table.clustering_fields = ["event"]
            self.client.create_table(table, retry=self.retry)
            return
        present = {f.name.lower() for f in table.schema}
        for field in fields:
            if field.name.lower() not in present:  # DDL, not a schema patch: bqemulator applies only DDL
                described = f" OPTIONS(description={json.dumps(field.description)})" if field.description else ""
                self.client.query(f"ALTER TABLE `{target}` ADD COLUMN IF NOT EXISTS `{field.name}` "
                                  f"{field.field_type}{described}", retry=self.retry).result(retry=self.retry)

    def stage(self, batches: pa.RecordBatchReader, load: str) -> None:
        """`batches` into the load table: as Parquet files of at most FILE_ROWS rows, each a load job from
        this machine, or, with a staging bucket, each uploaded there and one load job from their gs://
        URIs (BigQuery reads them in parallel), the objects removed after."""
        config = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.PARQUET,
                                        write_disposition=bigquery.WriteDisposition.WRITE_APPEND)
        bucket = self.guard(lambda: storage_client(self.spec, self.credentials).bucket(self.spec.staging_bucket)
                            ) if self.spec.staging_bucket else None
        staged: list = []
        try:
            for path in staged_files(batches):
                if bucket is None:
                    with open(path, "rb") as file:
                        self.guard(lambda: self.client.load_table_from_file(
                            file, load, job_config=config, location=self.spec.location,
                            num_retries=self.retries).result(retry=self.retry))
                else:
                    staged.append(bucket.blob(f"analytics-export/{load.rsplit('.', 1)[1]}/{path.name}"))
                    self.guard(lambda: staged[-1].upload_from_filename(str(path), retry=self.retry))
            if staged:
                uris = [f"gs://{bucket.name}/{blob.name}" for blob in staged]  # type: ignore[union-attr]
                self.guard(lambda: self.client.load_table_from_uri(uris, load, job_config=config,
                                                                   location=self.spec.location,
                                                                   retry=self.retry).result(retry=self.retry))
        finally:
            for blob in staged:
                try:
                    blob.delete()
                except Exception:  # best effort: a lifecycle rule on the bucket removes what is left
                    pass

    def guard(self, call):
        """Run a client call; a refusal becomes Rejected (fix something), any other failure Storage."""
        try:
            return call()
        except (api.Forbidden, api.Unauthorized) as exc:
            raise Rejected(f"{self} refused the load ({exc.code}): check the connection's service account and "
                           "its roles (BigQuery Data Editor on the dataset, Job User on the project)") from None
        except api.NotFound as exc:
            raise Rejected(f"{self}: {exc.message} (create the dataset, or fix project, table or location)") from None
        except api.BadRequest as exc:  # another attempt fails alike
            raise Rejected(f"{self} refused the load: {redact(without_values(exc.message), self.secrets)}") from None
        except GoogleAuthError:
            raise Rejected(f"{self}: the service account's token request was refused; check the connection's "
                           "service_account_json") from None
        except (api.GoogleAPIError, requests.RequestException) as exc:  # 5xx, timeouts, no connection
            raise Storage(f"loading {self} failed: {redact(without_values(str(exc)), self.secrets)}") from None

    def probe(self, probe: Probe) -> None:
        """The dataset and (when it exists) the table are found, a query runs as the service account, and a
        staging bucket, when set, is found."""
        target = f"{self.spec.project}.{self.dataset}.{self.table}"
        with probe.step("dataset", f"{self.spec.project}.{self.dataset} found"):
            self.guard(lambda: self.client.get_dataset(f"{self.spec.project}.{self.dataset}", retry=self.retry))
        with probe.step("table") as notes:
            def found() -> str:
                try:
                    return f"exists, {len(self.client.get_table(target, retry=self.retry).schema)} columns"
                except api.NotFound:
                    return "does not exist yet (the first load creates it)"

            notes.append(self.guard(found))
            self.guard(lambda: self.client.query("SELECT 1", location=self.spec.location, retry=self.retry).result(
                retry=self.retry))
            notes.append("a query ran")
        if self.spec.staging_bucket:
            with probe.step("staging bucket", f"gs://{self.spec.staging_bucket} found"):
                self.guard(lambda: storage_client(self.spec, self.credentials).get_bucket(
                    self.spec.staging_bucket, retry=self.retry))

    def close(self) -> None:
        self.client.close()


def credentials(placement: Placement) -> Credentials | None:
    """The connection's service account; None for an emulator (none needed) or the server's own."""
    if placement.secrets.get("service_account_json"):
        return service_account_credentials(placement)
    if not os.environ.get(EMULATOR) and not placement.settings.server_credentials:
        raise Invalid("a bigquery table needs a connection (POST /api/connections, type bigquery): this server "
                      "does not lend its own credentials unless ANALYTICS_EXPORT_SERVER_CREDENTIALS is set")
    return None


def client(spec: BigQueryTableDestination, credentials: Credentials | None) -> bigquery.Client:
    """BigQuery's client: with `credentials`, else an emulator's (BIGQUERY_EMULATOR_HOST) or the server's own."""
    if credentials is None and os.environ.get(EMULATOR):
        endpoint = os.environ[EMULATOR]
        endpoint = endpoint if "://" in endpoint else f"http://{endpoint}"
        return bigquery.Client(project=spec.project, credentials=AnonymousCredentials(), location=spec.location,
                               client_options=ClientOptions(api_endpoint=endpoint))
    return bigquery.Client(project=spec.project, credentials=credentials, location=spec.location)


def storage_client(spec: BigQueryTableDestination, credentials: Credentials | None) -> storage.Client:
    """GCS's client for the staging bucket: the same credentials, else an emulator's (STORAGE_EMULATOR_HOST)
    or the server's own."""
    if credentials is None and os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(project=spec.project, credentials=AnonymousCredentials())
    return storage.Client(project=spec.project, credentials=credentials)


def build(placement: Placement) -> BigQueryTable:
    return BigQueryTable(placement)
