"""The destination registry: one entry per destination type says everything the rest of the service
asks about it: its settings model, which of their fields the SSRF guard checks, the secrets its
connections hold, the modules that build it for exports and for streams, and how the console
offers it. The request unions, the guard, the connections, `GET /api/destinations` and the console
all read this table; a type that is not registered here does not exist anywhere.

Adding a destination is one module (its `build`) plus one `register(DestinationType(...))` below.
`register` refuses a type with a field that names a network location the guard would not check."""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Callable, Literal

from pydantic import BaseModel

from .specs import (
    AzureDestination,
    BigQueryTableDestination,
    ClickHouseTableDestination,
    DeltaTableDestination,
    DownloadDestination,
    GCSDestination,
    IcebergTableDestination,
    NatsDestination,
    PostgresTableDestination,
    RabbitMQDestination,
    S3Destination,
    SFTPDestination,
    SnowflakeTableDestination,
    WebhookDestination,
    check_header_value,
)

Kind = Literal["download", "files", "webhook", "table", "broker"]
"""What a destination takes: the server's own folder, files in a store, HTTP requests, rows of a
table, or messages of a broker."""

NETWORK_FIELD = re.compile(r"(host|hostname|server|address|endpoint|dsn|uri|url)|.*_(host|endpoint|uri|url)")
"""Settings fields that name where to connect: each must be guarded or say why it needs no check."""


@dataclass(frozen=True)
class DestinationType:
    """Everything one destination type is."""

    name: str
    """The `type` its settings carry."""
    label: str
    kind: Kind
    config: type[BaseModel]
    guarded: tuple[str, ...]
    """Fields holding a host (`host`) or a URL whose host the SSRF guard checks before anything connects."""
    unguarded: dict[str, str] = field(default_factory=dict)
    """Network-looking fields the guard does not check, each with the reason."""
    export: str | None = None
    """`module:function` (under the package) that builds its export Destination from a Placement."""
    stream: str | None = None
    """`module:function` that builds its stream Sink."""
    secrets: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    """Connection fields: (one of these groups must be complete, the rest is optional); None: no connections."""
    check_secrets: Callable[[dict[str, str]], None] | None = None
    """Further rules on a connection's secrets (ValueError saying what is wrong)."""
    server_credentials: bool = False
    """Without a connection it would use the server's own credentials (refused unless the server lends them)."""
    form: tuple[tuple[str, str] | tuple[str, str, str], ...] = ()
    """The console's inputs: (field, label[, "url" for an http(s) URL]); required-ness and numbers come from
    `config`."""

    def network_fields(self) -> set[str]:
        return {name for name in self.config.model_fields if NETWORK_FIELD.fullmatch(name)}


REGISTRY: dict[str, DestinationType] = {}


def register(kind: DestinationType) -> DestinationType:
    """Add `kind` to the registry; TypeError if its settings do not match it or a field naming a network
    location is neither guarded nor explained: no destination can bypass the SSRF guard by omission."""
    declared = kind.config.model_fields.get("type")
    if declared is None or declared.default != kind.name:
        raise TypeError(f"{kind.config.__name__} must have a field `type` defaulting to {kind.name!r}")
    missing = [f for f in (*kind.guarded, *kind.unguarded) if f not in kind.config.model_fields]
    if missing:
        raise TypeError(f"{kind.name}: {kind.config.__name__} has no field {missing[0]!r}")
    unchecked = sorted(kind.network_fields() - set(kind.guarded) - set(kind.unguarded))
    if unchecked:
        raise TypeError(f"{kind.name}: field {unchecked[0]!r} names where to connect, but the SSRF guard does not "
                        "check it: list it in `guarded`, or in `unguarded` with the reason")
    if kind.name in REGISTRY:
        raise TypeError(f"destination type {kind.name!r} is registered already")
    if kind.export is None and kind.stream is None:
        raise TypeError(f"{kind.name}: give `export`, `stream` or both")
    REGISTRY[kind.name] = kind
    return kind


def get(name: str) -> DestinationType:
    """The registered type `name`; a KeyError names the types there are."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no destination type {name!r}; registered: {', '.join(REGISTRY)}") from None


def load(path: str | None) -> Callable:
    """The function `module:function` (under the package) names: a builder, imported on first use so
    each destination's client library loads only where it is used."""
    if path is None:
        raise ValueError("this destination type has no such builder")
    module, function = path.split(":")
    return getattr(importlib.import_module(f"{__package__.rpartition('.')[0]}.{module}"), function)


def export_configs() -> tuple[type[BaseModel], ...]:
    return tuple(k.config for k in REGISTRY.values() if k.export)


def stream_configs() -> tuple[type[BaseModel], ...]:
    return tuple(k.config for k in REGISTRY.values() if k.stream)


def _azure(secrets: dict[str, str]) -> None:
    if not re.fullmatch(r"[a-z0-9]{3,24}", secrets["account_name"]):
        raise ValueError("secrets.account_name must be 3-24 lowercase letters or digits")
    if not (secrets.get("account_key") or secrets.get("sas_token")):
        raise ValueError("an azure connection needs secrets.account_key or secrets.sas_token")


def _gcs(secrets: dict[str, str]) -> None:
    try:
        info = json.loads(secrets["service_account_json"])
    except json.JSONDecodeError:
        raise ValueError("secrets.service_account_json must be a service account key file's JSON") from None
    if not isinstance(info, dict) or "private_key" not in info or "client_email" not in info:
        raise ValueError("secrets.service_account_json needs client_email and private_key")


def _sftp(secrets: dict[str, str]) -> None:
    if not (secrets.get("password") or secrets.get("private_key")):
        raise ValueError("an sftp connection needs secrets.password or secrets.private_key")


def _webhook(secrets: dict[str, str]) -> None:
    if secrets.get("authorization"):
        try:
            check_header_value("Authorization", secrets["authorization"])
        except ValueError as exc:
            raise ValueError(f"secrets.authorization: {exc}") from None


def _snowflake(secrets: dict[str, str]) -> None:
    if not (secrets.get("password") or secrets.get("private_key")):
        raise ValueError("a snowflake connection needs secrets.password or secrets.private_key (key-pair "
                         "authentication: the PEM of the user's private key)")


LAYOUT = (("prefix", "Prefix (folder)"),
          ("path_template", "Path template, e.g. year={year}/month={month} or date={event_date}/event={event}"))
S3_KEYS = (("access_key_id", "secret_access_key"), ("session_token",))

register(DestinationType(
    "download", "Download from this server", "download", DownloadDestination, guarded=(),
    export="destinations.local:build"))
register(DestinationType(
    "s3", "Amazon S3 (or compatible)", "files", S3Destination, guarded=("endpoint_url",),
    export="destinations.s3:build", stream="streaming.sinks.files:build", secrets=S3_KEYS, server_credentials=True,
    form=(("bucket", "Bucket"), ("region", "Region"), ("endpoint_url", "Endpoint URL", "url"), *LAYOUT)))
register(DestinationType(
    "gcs", "Google Cloud Storage", "files", GCSDestination, guarded=("endpoint_url",),
    export="destinations.gcs:build", stream="streaming.sinks.files:build",
    secrets=(("service_account_json",), ()), check_secrets=_gcs, server_credentials=True,
    form=(("bucket", "Bucket"), *LAYOUT)))
register(DestinationType(
    "azure", "Azure Blob Storage", "files", AzureDestination, guarded=("account_url",),
    export="destinations.azure:build", stream="streaming.sinks.files:build",
    secrets=(("account_name",), ("account_key", "sas_token")), check_secrets=_azure, server_credentials=True,
    form=(("container", "Container"), ("account_url", "Account URL", "url"), *LAYOUT)))
register(DestinationType(
    "sftp", "SFTP", "files", SFTPDestination, guarded=("host",), export="destinations.sftp:build",
    secrets=((), ("password", "private_key", "passphrase", "known_hosts")), check_secrets=_sftp,
    form=(("host", "Host"), ("port", "Port"), ("username", "Username"), ("path", "Remote folder"), *LAYOUT)))
register(DestinationType(
    "webhook", "Webhook", "webhook", WebhookDestination, guarded=("url",), export="destinations.webhook:build",
    stream="streaming.sinks.webhook:build", secrets=((), ("signing_secret", "authorization")),
    check_secrets=_webhook, form=(("url", "URL", "url"), ("batch_max_events", "Events per request (at most)"))))
register(DestinationType(
    "postgres", "PostgreSQL table", "table", PostgresTableDestination, guarded=("url",),
    export="warehouses.postgres:build", stream="streaming.sinks.table:build", secrets=((), ("password",)),
    form=(("url", "URL (postgresql://user@host/db)"), ("table", "Table"))))
register(DestinationType(
    "clickhouse", "ClickHouse table", "table", ClickHouseTableDestination, guarded=("url",),
    export="warehouses.clickhouse:build", stream="streaming.sinks.table:build", secrets=((), ("password",)),
    form=(("url", "URL (clickhouse://user@host:8123/db)"), ("table", "Table"))))
register(DestinationType(
    "delta", "Delta Lake table", "table", DeltaTableDestination, guarded=("endpoint_url",),
    unguarded={"uri": "an s3:// uri goes to AWS unless endpoint_url (guarded) says otherwise; a name is a folder "
                      "under the server's data dir"},
    export="warehouses.delta:build", stream="streaming.sinks.table:build", secrets=S3_KEYS,
    form=(("uri", "URI (s3://bucket/path or a name)"),)))
register(DestinationType(
    "snowflake", "Snowflake table", "table", SnowflakeTableDestination, guarded=("url",),
    unguarded={"account": "names ACCOUNT.snowflakecomputing.com, Snowflake's own domain; url (guarded) replaces it"},
    export="warehouses.snowflake:build", stream="streaming.sinks.table:build",
    secrets=((), ("password", "private_key", "private_key_passphrase")), check_secrets=_snowflake,
    form=(("account", "Account (myorg-myaccount)"), ("user", "User"), ("warehouse", "Warehouse"), ("role", "Role"),
          ("table", "Table (DATABASE.SCHEMA.TABLE)"))))
register(DestinationType(
    "iceberg", "Apache Iceberg table", "table", IcebergTableDestination, guarded=("catalog_url", "endpoint_url"),
    unguarded={"warehouse": "an s3:// warehouse goes to AWS unless endpoint_url (guarded) says otherwise; a name is "
                            "a folder under the server's data dir"},
    export="warehouses.iceberg:build", stream="streaming.sinks.table:build",
    secrets=((), ("access_key_id", "secret_access_key", "session_token", "catalog_password", "catalog_token")),
    form=(("table", "Table (NAMESPACE.TABLE)"), ("warehouse", "Warehouse (s3://bucket/path or a name)"),
          ("catalog_url", "Catalog URL (default: SQLite next to the data)"))))
register(DestinationType(
    "bigquery", "BigQuery table", "table", BigQueryTableDestination, guarded=(),
    export="warehouses.bigquery:build", stream="streaming.sinks.table:build",
    secrets=(("service_account_json",), ()), check_secrets=_gcs, server_credentials=True,
    form=(("project", "Project"), ("table", "Table (DATASET.TABLE)"), ("location", "Location"))))
register(DestinationType(
    "nats", "NATS JetStream subject", "broker", NatsDestination, guarded=("url",),
    stream="streaming.sinks.nats:build", secrets=((), ("user", "password", "token"))))
register(DestinationType(
    "rabbitmq", "RabbitMQ queue", "broker", RabbitMQDestination, guarded=("url",),
    stream="streaming.sinks.rabbitmq:build", secrets=(("username", "password"), ())))

