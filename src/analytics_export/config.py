"""Settings from the environment (`ANALYTICS_EXPORT_*`) with defaults that run on a laptop."""

import os
import secrets
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .alerts import AlertConfig
from .checks import check_project_name
from .destinations import registry
from .errors import Invalid
from .models import ExportConfig

ENGINES = {"postgres": "postgresql", "postgresql": "postgresql", "clickhouse": "clickhouse", "chdb": "clickhouse"}
"""events_url schemes and the engine each names."""


def project_folder(parent: Path, project: str) -> Path:
    """`parent / project`, the name checked again: a folder outside `parent` must never come of a
    project name, whatever stored it (a key made before names were checked)."""
    try:
        return parent / check_project_name(project)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANALYTICS_EXPORT_", env_nested_delimiter="__")

    data_dir: Path = Field(Path(".analytics-export"), description="event store and exports live here")
    project: str = Field("default", description="tenant whose events are read and written")
    duckdb_memory_limit: str | None = Field(None, description="DuckDB buffer pool cap for exports; default per "
                                            "query on the embedded store: 128MB, 16MB more per in-list filter, "
                                            "512KB per filter and selected property; 256MB for the DuckDB that "
                                            "filters PostgreSQL's and ClickHouse's pages")
    duckdb_write_memory_limit: str = Field("1GB", description="DuckDB buffer pool cap for ingest and demo")
    duckdb_threads: int = Field(2, ge=1)
    database_url: str | None = Field(None, description="job store; default sqlite in the data dir")
    events_url: str | None = Field(None, description="event store: postgresql://..., clickhouse://..., "
                                   "chdb:///path or a DuckDB file path; default DATA_DIR/events.duckdb")
    secret_key: str | None = Field(None, description="signs download links; default a random key kept in the data dir")
    max_body_bytes: int = Field(8 << 20, gt=0, description="largest body of the bulk uploads: POST /api/events "
                                "and POST /api/projects/{project}/suppressions (100,000 distinct_ids a call)")
    max_json_body_bytes: int = Field(1 << 20, gt=0, description="largest body of every other API request: the "
                                     "biggest real one (an export request naming hundreds of events and "
                                     "properties, a connection with a private key) is tens of KB")
    header_timeout_seconds: float = Field(10, gt=0, description="a request head must arrive within this of the "
                                          "connection opening or of the previous response, else the connection "
                                          "is closed")
    body_idle_timeout_seconds: float = Field(10, gt=0, description="each part of a request body must arrive "
                                             "within this, else 408 and the connection is closed")
    body_timeout_seconds: float = Field(60, gt=0, description="a whole request body must arrive within this, "
                                        "else 408 and the connection is closed")
    max_header_bytes: int = Field(64 << 10, gt=0, description="largest request head (request line and headers)")
    max_connections: int = Field(1000, ge=1, description="connections one API process holds; more are answered "
                                 "503 at once")
    api_ingest_memory_limit: str = Field(
        "192MB", description="DuckDB buffer pool cap of one POST /api/events (on one thread), so no upload can take "
        "the API's memory: 8 MiB of the widest events (5,000 properties each) took 171 MB; a body needing more is a 413")
    metrics_token: SecretStr | None = Field(
        None, description="if set, /metrics needs `Authorization: Bearer TOKEN` and adds per-project and "
        "per-stream series; unset, /metrics is open and shows only totals (no project names or stream ids)")
    server_credentials: bool = Field(
        False, description="let exports without a connection use this server's own cloud credentials "
        "(AWS_*, AZURE_STORAGE_*, Google default): only for a single-tenant deployment")
    sts_endpoint_url: str | None = Field(
        None, description="the STS endpoint where S3 connections naming a role_arn assume it (tests, other clouds, "
        "a VPC endpoint); default AWS's for the region")
    sts_region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,32}$", description="the region STS calls are signed "
                                   "for; default the destination's region, else us-east-1")
    sts_access_key_id: SecretStr | None = Field(
        None, description="this server's own AWS keys, used only to call sts:AssumeRole for connections that name "
        "a role_arn (never to write): the only permission they need")
    sts_secret_access_key: SecretStr | None = Field(None, description="the secret of sts_access_key_id")
    sts_refresh_margin_seconds: int = Field(
        300, ge=0, le=3600, description="assume the role again this long before its credentials expire, so an "
        "export longer than the session goes on with fresh ones; a connection's session_duration must exceed it")
    destination_allow: list[str] = Field(
        default_factory=list, description="hosts or CIDRs destinations may reach although not public, "
        'e.g. ["127.0.0.1", "10.1.0.0/16"]; everything else must resolve to public addresses')
    export: ExportConfig = Field(default_factory=ExportConfig)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    public_url: str = Field("http://127.0.0.1:8000", max_length=2000, pattern=r"^https?://\S+$",
                            description="where users open the console: alerts link to its pages from here")
    retention_lease_seconds: float = Field(
        60, gt=0, description="a retention run holds its project's lease this long past its last renewal: "
        "a killed run's project can run again after it")
    streams_per_worker: int = Field(8, ge=0, description="streams one worker process runs at once (0: none)")
    stream_settle_seconds: float | None = Field(
        None, ge=0, description="streams read events stored at least this long ago: longer than the longest "
        "ingest still committing (an event stamped earlier must not appear after the cursor passed it). "
        "Default 0 on the embedded store, whose ingests commit one after another, 0.5 on the others")

    def stream_settle(self) -> float:
        if self.stream_settle_seconds is not None:
            return self.stream_settle_seconds
        return 0.0 if self.events_engine == "duckdb" else 0.5

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        return check_project_name(value)

    @field_validator("events_url")
    @classmethod
    def _events_scheme(cls, value: str | None) -> str | None:
        if value and "://" in value and value.split("://")[0].split("+")[0] not in ENGINES:
            raise ValueError(f"events_url must be a DuckDB file path or start with one of "
                             f"{', '.join(s + '://' for s in ENGINES)}")
        return value

    @property
    def events_engine(self) -> str:
        """`duckdb`, `postgresql` or `clickhouse`: the engine `events_url` names."""
        if not self.events_url or "://" not in self.events_url:
            return "duckdb"
        return ENGINES[self.events_url.split("://")[0].split("+")[0]]

    @property
    def events_path(self) -> Path:
        """The DuckDB event store file (when the engine is DuckDB)."""
        return Path(self.events_url) if self.events_url and self.events_engine == "duckdb" else self.data_dir / "events.duckdb"

    @property
    def events_store_name(self) -> str:
        """The event store for messages: the engine (never the URL's credentials), or the file."""
        return str(self.events_path) if self.events_engine == "duckdb" else self.events_engine

    @property
    def export_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def staging_dir(self) -> Path:
        """Where a partitioned export's fragments wait to be joined; workers on several machines
        share it (like the export dir), or deliver split exports, which need no staging."""
        return self.data_dir / "staging"

    def check_credentials(self, destination: object) -> None:
        """Raise Invalid unless `destination` names a connection or may use the server's credentials
        (the GCS and BigQuery emulators need none)."""
        kind = getattr(destination, "type", None)
        lends = kind in registry.REGISTRY and registry.REGISTRY[kind].server_credentials
        if not lends or getattr(destination, "connection", None) or self.server_credentials:
            return
        if os.environ.get({"gcs": "STORAGE_EMULATOR_HOST", "bigquery": "BIGQUERY_EMULATOR_HOST"}.get(kind, "")):
            return
        raise Invalid(f"a {kind} destination needs a connection (POST /api/connections): this server does "
                         "not lend its own credentials unless ANALYTICS_EXPORT_SERVER_CREDENTIALS is set")

    def hide_paths(self, text: str) -> str:
        """`text` with the data dir (and the event store's folder) as `DATA_DIR`: errors from the
        stores and workers name files there, which API callers have no business seeing."""
        folders = {str(p) for d in (self.data_dir, self.events_path.parent) for p in (d.absolute(), d.resolve())}
        for folder in sorted(folders, key=len, reverse=True):
            text = text.replace(folder, "DATA_DIR")
        return text

    def project_export_dir(self, project: str) -> Path:
        """Each project's downloads live in their own folder under the export dir (the name is checked
        again here: a folder outside the data dir must never come of it, whatever stored it)."""
        return project_folder(self.export_dir, project)

    def project_archive_dir(self, project: str) -> Path:
        """Each project's retention archives (downloads kind) live in their own folder."""
        return project_folder(self.data_dir / "archive", project)

    def signing_key(self) -> bytes:
        """The server secret for download links: the configured one, or one made once and kept."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".secret.{os.getpid()}")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            try:
                os.link(temp, path)  # atomic: the first process to get here wins, whole
            except FileExistsError:
                pass
            finally:
                temp.unlink()
        return path.read_text().strip().encode()
