"""Each destination type's settings as requests, schedules and streams give them (`type` names the
kind), with the checks they share: file layouts, webhook headers, server URLs. The registry
(`registry.py`) says what else each type is."""

from __future__ import annotations

import re
import string
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..checks import MAX_FOLDER_BYTES, check_connection_name, is_stored


class DownloadDestination(BaseModel):
    type: Literal["download"] = "download"

    def split_limits(self) -> tuple[int | None, int | None]:
        return None, None


EVENT_FIELDS = ("event_date", "event_hour", "event")
"""Placeholders of each event's own values: an export writes a file (or a split series) per value."""
LAYOUT_FIELDS = ("project", "export_id", "year", "month", "day", "hour", "start", "end", "format", *EVENT_FIELDS)

MAX_PARTITIONS = 10_000
"""Partitions (distinct values of a layout's per-event placeholders) one export may write."""

MAX_EVENT_SLUG = 100
"""Characters of `{event}` at most: a longer name is cut and given a hash of the whole (see `event_slug`)."""

LAYOUT_WIDTHS = {"project": "p" * 100, "export_id": "e" * 100, "year": "2026", "month": "01", "day": "01",
                 "hour": "00", "start": "20260101", "end": "20260101", "format": "json_lines",
                 "event_date": "2026-01-01", "event_hour": "00", "event": "e" * MAX_EVENT_SLUG}
"""The widest value of each placeholder (project names and export ids are at most 100 characters)."""


def check_window(fields: tuple[str, ...], start: datetime, end: datetime) -> None:
    """ValueError when a window has more days or hours than an export may have partitions and the layout
    makes a folder per day or hour: checked when the export is made, before any event is counted."""
    unit = timedelta(hours=1) if "event_hour" in fields else timedelta(days=1) if "event_date" in fields else None
    if unit is not None and (end - start) / unit > MAX_PARTITIONS:
        what = "hour" if unit == timedelta(hours=1) else "day"
        raise ValueError(f"the window has {(end - start) / unit:,.0f} {what}s, and path_template makes a folder "
                         f"per {what} ({{event_{'hour' if what == 'hour' else 'date'}}}); the most is "
                         f"{MAX_PARTITIONS:,}: shorten the window")


def placeholders(template: str) -> list[str]:
    """The placeholder names of a (checked) template."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def render_folder(prefix: str, template: str | None, values: dict[str, str]) -> str:
    """`prefix/template` with `values` in its placeholders, without leading or trailing `/`."""
    parts = [prefix, template.format(**values) if template else ""]
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


class FileLayout(BaseModel):
    """Where files go in a bucket or folder, and whether an export is split into numbered parts."""

    prefix: str = Field("", max_length=MAX_FOLDER_BYTES, description="folder the files go in, e.g. `exports/`")
    path_template: str | None = Field(
        None, max_length=MAX_FOLDER_BYTES, description="folder under `prefix` with placeholders "
        + ", ".join(f"{{{f}}}" for f in LAYOUT_FIELDS) + ", e.g. `year={year}/month={month}/day={day}`; "
        "dates are the export window's start (UTC). {event_date} (YYYY-MM-DD), {event_hour} (HH) and {event} (the "
        "event name, percent-encoded) are each event's own: a file, or a split series, per value, e.g. "
        "`date={event_date}/event={event}` (Hive-style)")
    max_file_size_mb: float | None = Field(None, gt=0, le=1_048_576, description="split into parts of about this size (at most 1 TB)")
    max_events_per_file: int | None = Field(None, ge=1, le=10**12, description="split into parts of at most this many events")
    connection: str | None = Field(None, description="name of a stored connection holding the credentials")

    @field_validator("prefix", "path_template")
    @classmethod
    def _relative_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "\\" in value or any(part == ".." for part in value.split("/")):
            raise ValueError(f"{value!r} must be a relative path with `/` separators and no `..`")
        return value.strip("/")

    @field_validator("path_template")
    @classmethod
    def _placeholders(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"path_template {value[:100]!r} is malformed: {exc}") from None
        if any(spec or conv for _, spec, conv in fields):
            raise ValueError("path_template placeholders take no format spec or conversion: write {year}, "
                             "not {year:>4} or {year!r}")
        names = [name for name, _, _ in fields]
        unknown = [n for n in names if n not in LAYOUT_FIELDS]
        if unknown:
            raise ValueError(f"path_template placeholder {{{unknown[0]}}} is unknown; use "
                             + ", ".join(f"{{{f}}}" for f in LAYOUT_FIELDS))
        return value

    @field_validator("connection")
    @classmethod
    def _connection_name(cls, value: str | None) -> str | None:
        return check_connection_name(value)

    @model_validator(mode="after")
    def _folder_fits(self) -> FileLayout:
        widest = render_folder(self.prefix, self.path_template, LAYOUT_WIDTHS)
        if len(widest.encode()) > MAX_FOLDER_BYTES:
            raise ValueError(f"prefix and path_template render to up to {len(widest.encode()):,} bytes; the most is "
                             f"{MAX_FOLDER_BYTES} (object keys are at most 1024 bytes, and the file name follows)")
        return self

    @property
    def per_event(self) -> tuple[str, ...]:
        """The placeholders of `path_template` that take each event's own values (EVENT_FIELDS)."""
        used = placeholders(self.path_template or "")
        return tuple(f for f in EVENT_FIELDS if f in used)

    def split_limits(self) -> tuple[int | None, int | None]:
        """(events, bytes) per file, each None when unlimited."""
        size = None if self.max_file_size_mb is None else max(1, int(self.max_file_size_mb * (1 << 20)))
        return self.max_events_per_file, size


class S3Destination(FileLayout):
    type: Literal["s3"] = "s3"
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
                        description="3-63 lowercase letters, digits, `.` or `-` (the bucket becomes part of a host name)")
    region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,32}$")
    endpoint_url: str | None = Field(None, description="any S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    path_style: bool | None = Field(None, description="path-style addressing; default: on with endpoint_url")
    server_side_encryption: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = Field(None, description="with aws:kms; default the account's AWS managed key")

    @model_validator(mode="after")
    def _kms(self) -> S3Destination:
        if self.kms_key_id and self.server_side_encryption != "aws:kms":
            raise ValueError("kms_key_id needs server_side_encryption = \"aws:kms\"")
        return self


class GCSDestination(FileLayout):
    type: Literal["gcs"] = "gcs"
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
    endpoint_url: str | None = Field(None, description="API endpoint; default Google's, or STORAGE_EMULATOR_HOST")


class AzureDestination(FileLayout):
    type: Literal["azure"] = "azure"
    container: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
    account_url: str | None = Field(None, description="default https://{account}.blob.core.windows.net")


class SFTPDestination(FileLayout):
    type: Literal["sftp"] = "sftp"
    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    username: str = Field(min_length=1)
    path: str = Field(".", description="remote folder; files go under it, then under `prefix`")
    allow_unknown_host_key: bool = Field(
        False, description="accept a host key the connection's known_hosts does not list (insecure)")


class WebhookDestination(BaseModel):
    type: Literal["webhook"] = "webhook"
    url: str = Field(description="http(s) URL the export is POSTed to")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every request")
    connection: str | None = Field(None, description="stored connection with `signing_secret` and/or headers")
    batch_max_events: int | None = Field(None, ge=1, le=10**9, description="at most this many events per request")
    batch_max_bytes: int | None = Field(None, ge=1024, le=1 << 40, description="about this many body bytes per request at most")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value):
            raise ValueError("url must be an absolute http:// or https:// URL")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if is_stored(info):  # checked when it runs: an old row must still load
            return value
        return check_headers(value)

    def split_limits(self) -> tuple[int | None, int | None]:
        return self.batch_max_events, self.batch_max_bytes


RESERVED_HEADERS = {"content-type", "content-encoding", "content-length", "transfer-encoding", "host",
                    "x-export-id", "x-batch-index", "x-batch-count", "x-signature", "x-signature-timestamp",
                    "x-stream-id", "x-batch-id"}


HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An RFC 9110 field name (a token)."""


MAX_HEADERS = 50


MAX_HEADER_NAME = 256


MAX_HEADER_VALUE = 8 << 10


MAX_HEADERS_BYTES = 12 << 10
"""Bounds on a webhook's own headers: common servers take 8 KiB a field and 16 KiB in all (Node.js),
which leaves room for the headers analytics-export adds and a connection's Authorization."""


def check_header_value(name: str, value: str) -> str:
    """`value` if it is a valid HTTP field value (RFC 9110): visible ASCII, with spaces and tabs
    inside only, at most MAX_HEADER_VALUE characters. The message never quotes the value (it may be
    a secret), only what is wrong and where."""
    if len(value) > MAX_HEADER_VALUE:
        raise ValueError(f"header {name!r}: the value has {len(value)} characters; at most {MAX_HEADER_VALUE}")
    for i, c in enumerate(value):
        if ord(c) > 0x7F:
            raise ValueError(f"header {name!r}: the value has a non-ASCII character at position {i}; header "
                             "values are visible ASCII, spaces and tabs (percent- or base64-encode other text)")
        if (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F:
            raise ValueError(f"header {name!r}: the value has control character U+{ord(c):04X} at position {i}; "
                             "header values are visible ASCII, spaces and tabs (no NUL, CR or LF)")
    if value != value.strip(" \t"):
        raise ValueError(f"header {name!r}: the value starts or ends with a space or tab; remove it")
    return value


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` if each is a valid HTTP field (RFC 9110) not set by analytics-export, within the
    bounds above; otherwise ValueError naming the header and the rule."""
    if len(headers) > MAX_HEADERS:
        raise ValueError(f"{len(headers)} headers; at most {MAX_HEADERS}")
    seen: set[str] = set()
    for name, value in headers.items():
        if not HEADER_NAME.fullmatch(name) or len(name) > MAX_HEADER_NAME:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise ValueError(f"header name {shown!r} must be 1-{MAX_HEADER_NAME} letters, digits or "
                             "! # $ % & ' * + - . ^ _ ` | ~ (an RFC 9110 token)")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by analytics-export; choose another name")
        if name.lower() in seen:
            raise ValueError(f"header {name!r} is given twice (header names are case-insensitive)")
        seen.add(name.lower())
        check_header_value(name, value)
    size = sum(len(n) + len(v) for n, v in headers.items())
    if size > MAX_HEADERS_BYTES:
        raise ValueError(f"headers total {size} characters (names and values); at most {MAX_HEADERS_BYTES}")
    return headers


TABLE_NAME = r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$"


LOCAL_TABLE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}(?:/[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}){0,9}")
"""A table on this machine: a relative path without `..`, placed under DATA_DIR/tables/PROJECT/."""


POSTGRES_OPTIONS = frozenset({"sslmode", "connect_timeout", "application_name", "target_session_attrs"})


class WarehouseTable(BaseModel):
    """A table the export is loaded into instead of a file: a run replaces its window there (the rows
    whose time column falls in [start_date, end_date)), so a rerun never duplicates (see warehouses/)."""

    model_config = ConfigDict(extra="forbid")

    connection: str | None = Field(None, description="name of a stored connection holding the credentials")

    @field_validator("connection")
    @classmethod
    def _connection_name(cls, value: str | None) -> str | None:
        return check_connection_name(value)

    def split_limits(self) -> tuple[int | None, int | None]:
        return None, None


def check_server_url(value: str, schemes: tuple[str, ...], options: frozenset[str] = frozenset()) -> str:
    """`value` if it is `scheme://[user@]host[:port]/...` with no password and only `options` as query."""
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"url must be {' or '.join(s + '://' for s in schemes)}[user@]host[:port]/database")
    if parts.password is not None:
        raise ValueError("put the password in a connection (POST /api/connections), not in the url")
    unknown = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)} - options)
    if unknown:
        raise ValueError(f"url option {unknown[0]!r} is not allowed"
                         + (f"; use {', '.join(sorted(options))}" if options else ""))
    return value


class PostgresTableDestination(WarehouseTable):
    """A PostgreSQL table, created and given new columns as needed; a window is replaced in one transaction."""

    type: Literal["postgres"] = "postgres"
    url: str = Field(description="postgresql://user@host:5432/database[?sslmode=...]; the password goes in a "
                     "connection")
    table: str = Field(pattern=TABLE_NAME, description="`table` or `schema.table`: letters, digits, `_`")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_server_url(value, ("postgresql", "postgres"), POSTGRES_OPTIONS)


SNOWFLAKE_NAME = r"[A-Za-z_][A-Za-z0-9_$]{0,254}"


class SnowflakeTableDestination(WarehouseTable):
    """A Snowflake table, created and given new columns as needed: Parquet files staged, copied into a
    load table, then the window replaced in one transaction."""

    type: Literal["snowflake"] = "snowflake"
    account: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$",
                         description="account identifier, e.g. myorg-myaccount (its host is "
                         "ACCOUNT.snowflakecomputing.com)")
    user: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$", description="user name")
    warehouse: str | None = Field(None, pattern=f"^{SNOWFLAKE_NAME}$", description="virtual warehouse; default the user's")
    role: str | None = Field(None, pattern=f"^{SNOWFLAKE_NAME}$", description="role; default the user's")
    table: str = Field(pattern=f"^{SNOWFLAKE_NAME}\\.{SNOWFLAKE_NAME}\\.{SNOWFLAKE_NAME}$",
                       description="DATABASE.SCHEMA.TABLE (unquoted identifiers)")
    url: str | None = Field(None, description="http(s)://host[:port] to reach instead of the account's host "
                            "(private connectivity, an emulator)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/?#@]+/?", value):
            raise ValueError("url must be http(s)://host[:port]")
        return value


class IcebergTableDestination(WarehouseTable):
    """An Apache Iceberg table (partitioned by day of `timestamp`); a window is replaced in one commit."""

    type: Literal["iceberg"] = "iceberg"
    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}\.[A-Za-z_][A-Za-z0-9_]{0,99}$",
                       description="NAMESPACE.TABLE")
    warehouse: str = Field(description="where data files go: s3://bucket/path, or NAME: a folder in "
                           "DATA_DIR/tables/PROJECT/NAME, which also holds the default catalog")
    catalog_url: str | None = Field(None, description="postgresql://user@host/db (a SQL catalog; the password "
                                    "in a connection's catalog_password) or http(s)://... (a REST catalog; a "
                                    "token in catalog_token); default: SQLite in the warehouse folder")
    region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,32}$", description="S3 region; default us-east-1")
    endpoint_url: str | None = Field(None, description="any S3-compatible endpoint, e.g. http://127.0.0.1:9000")

    @model_validator(mode="after")
    def _where(self) -> IcebergTableDestination:
        s3 = re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?", self.warehouse)
        if not s3 and not LOCAL_TABLE.fullmatch(self.warehouse):
            raise ValueError("warehouse must be s3://bucket/path or a relative path (letters, digits, `_ . -`, "
                             "no `..`)")
        if s3 and not self.catalog_url:
            raise ValueError("an s3:// warehouse needs a catalog_url: the default catalog is a file on this machine")
        if not s3 and (self.region or self.endpoint_url):
            raise ValueError("region and endpoint_url apply to s3:// warehouses only")
        if self.endpoint_url and not re.fullmatch(r"https?://[^\s/?#@]+/?", self.endpoint_url):
            raise ValueError("endpoint_url must be http(s)://host[:port]")
        if self.catalog_url:
            parts = urlsplit(self.catalog_url)
            if parts.scheme not in ("postgresql", "postgres", "http", "https") or not parts.hostname:
                raise ValueError("catalog_url must be postgresql://user@host[:port]/database or http(s)://host/...")
            if parts.password is not None:
                raise ValueError("put the catalog's password in a connection (catalog_password), not in the url")
        return self


class BigQueryTableDestination(WarehouseTable):
    """A BigQuery table, created (partitioned by day of `timestamp`, clustered by `event`) and given new
    columns as needed: Parquet load jobs into a load table, then one transaction replaces the window."""

    type: Literal["bigquery"] = "bigquery"
    project: str = Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", description="Google Cloud project id")
    table: str = Field(pattern=r"^[A-Za-z0-9_]{1,1024}\.[A-Za-z0-9_]{1,1024}$", description="DATASET.TABLE")
    location: str | None = Field(None, pattern=r"^[A-Za-z0-9-]{1,64}$", description="the dataset's location, "
                                 "e.g. US or europe-west1; default: found from the dataset")
    staging_bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$",
                                       description="a GCS bucket (in the dataset's location) to stage large "
                                       "loads in: one load job reads the files from gs://; default: a load "
                                       "job per file from this machine")


class ClickHouseTableDestination(WarehouseTable):
    """A ClickHouse MergeTree table, created and given new columns as needed; a window is deleted, then inserted."""

    type: Literal["clickhouse"] = "clickhouse"
    url: str = Field(description="clickhouse://user@host:8123/database (HTTP), clickhouses://... (HTTPS), or "
                     "chdb:NAME (chDB, ClickHouse in-process, in DATA_DIR/tables/PROJECT/NAME); the password "
                     "goes in a connection")
    table: str = Field(pattern=TABLE_NAME, description="`table` or `database.table`: letters, digits, `_`")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value.startswith("chdb:"):
            if not LOCAL_TABLE.fullmatch(value.removeprefix("chdb:")):
                raise ValueError("a chdb url is chdb:NAME, a relative path (letters, digits, `_ . -`, no `..`)")
            return value
        return check_server_url(value, ("clickhouse", "clickhouses"))


class DeltaTableDestination(WarehouseTable):
    """A Delta Lake table; a window is written with replace-where: one atomic commit replaces it."""

    type: Literal["delta"] = "delta"
    uri: str = Field(description="s3://bucket/path, or NAME: a table in DATA_DIR/tables/PROJECT/NAME")
    region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,32}$", description="S3 region; default us-east-1")
    endpoint_url: str | None = Field(None, description="any S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    partition_by_day: bool = Field(False, description="a new table is partitioned by `day`, the UTC date of the "
                                   "window's time column")

    @model_validator(mode="after")
    def _where(self) -> DeltaTableDestination:
        s3 = re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?", self.uri)
        if not s3 and not LOCAL_TABLE.fullmatch(self.uri):
            raise ValueError("uri must be s3://bucket/path or a relative path (letters, digits, `_ . -`, no `..`)")
        if not s3 and (self.connection or self.region or self.endpoint_url):
            raise ValueError("connection, region and endpoint_url apply to s3:// tables only")
        if self.endpoint_url and not re.fullmatch(r"https?://[^\s/?#]+/?", self.endpoint_url):
            raise ValueError("endpoint_url must be http(s)://host[:port]")
        return self


SUBJECT = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")


QUEUE = re.compile(r"[A-Za-z0-9_.:\-]{1,255}")


class NatsDestination(BaseModel):
    """A NATS JetStream subject; each message carries `Nats-Msg-Id` (the event uuid, or the batch's
    range) so JetStream drops a redelivered duplicate within its window."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["nats"] = "nats"
    url: str = Field("nats://127.0.0.1:4222", description="nats://host:port")
    subject: str = Field(description="subject published to, e.g. analytics.events")
    stream: str | None = Field(None, description="JetStream stream to create for the subject if missing")
    connection: str | None = Field(None, description="stored connection with `user`/`password` or `token`")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"(nats|tls)://[^\s/?#@]+", value):
            raise ValueError("url must be nats://host:port (credentials go in a connection)")
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        if not SUBJECT.fullmatch(value):
            raise ValueError("subject must be dot-separated tokens of letters, digits, `_` or `-` (no wildcards)")
        return value


class RabbitMQDestination(BaseModel):
    """A RabbitMQ queue (through the default exchange, or `exchange` with the queue name as routing
    key), published with confirms; each message's `message_id` is the event uuid or the batch's range."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["rabbitmq"] = "rabbitmq"
    url: str = Field("amqp://127.0.0.1:5672/", description="amqp://host:port/vhost")
    queue: str = Field(description="declared durable if missing")
    exchange: str = Field("", description="default: the default exchange, routing by queue name")
    connection: str | None = Field(None, description="stored connection with `username`/`password`")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"amqps?://[^\s?#@]+", value):
            raise ValueError("url must be amqp://host:port/vhost (credentials go in a connection)")
        return value

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        if not QUEUE.fullmatch(value):
            raise ValueError("queue must be 1-255 letters, digits or `_ . : -`")
        return value
