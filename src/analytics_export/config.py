"""Settings from the environment (`ANALYTICS_EXPORT_*`) with defaults that run on a laptop."""

import os
import secrets
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .models import ExportConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANALYTICS_EXPORT_", env_nested_delimiter="__")

    data_dir: Path = Field(Path(".analytics-export"), description="event store and exports live here")
    project: str = Field("default", description="tenant whose events are read and written")
    duckdb_memory_limit: str = Field("64MB", description="DuckDB buffer pool cap for exports (a scan needs little)")
    duckdb_write_memory_limit: str = Field("1GB", description="DuckDB buffer pool cap for ingest and demo")
    duckdb_threads: int = Field(2, ge=1)
    database_url: str | None = Field(None, description="job store; default sqlite in the data dir")
    events_url: str | None = Field(None, description="event store: postgresql://..., clickhouse://..., "
                                   "chdb:///path or a DuckDB file path; default DATA_DIR/events.duckdb")
    secret_key: str | None = Field(None, description="signs download links; default a random key kept in the data dir")
    max_body_bytes: int = Field(16 << 20, description="largest POST /api/events body")
    server_credentials: bool = Field(
        False, description="let exports without a connection use this server's own cloud credentials "
        "(AWS_*, AZURE_STORAGE_*, Google default): only for a single-tenant deployment")
    destination_allow: list[str] = Field(
        default_factory=list, description="hosts or CIDRs destinations may reach although not public, "
        'e.g. ["127.0.0.1", "10.1.0.0/16"]; everything else must resolve to public addresses')
    export: ExportConfig = Field(default_factory=ExportConfig)

    @property
    def events_path(self) -> Path:
        """The DuckDB event store file (unless `events_url` names PostgreSQL)."""
        if self.events_url and "://" not in self.events_url:
            return Path(self.events_url)
        return self.data_dir / "events.duckdb"

    @property
    def events_store_name(self) -> str:
        """The event store for messages: the URL's scheme (never its credentials), or the file."""
        return self.events_url.split("://")[0] if self.events_url and "://" in self.events_url else str(self.events_path)

    @property
    def export_dir(self) -> Path:
        return self.data_dir / "exports"

    def check_credentials(self, destination: object) -> None:
        """Raise ValueError unless `destination` names a connection or may use the server's credentials
        (the GCS emulator needs none)."""
        kind = getattr(destination, "type", None)
        if kind not in ("s3", "gcs", "azure") or getattr(destination, "connection", None) or self.server_credentials:
            return
        if kind == "gcs" and os.environ.get("STORAGE_EMULATOR_HOST"):
            return
        raise ValueError(f"a {kind} destination needs a connection (POST /api/connections): this server does "
                         "not lend its own credentials unless ANALYTICS_EXPORT_SERVER_CREDENTIALS is set")

    def project_export_dir(self, project: str) -> Path:
        """Each project's downloads live in their own folder under the export dir."""
        return self.export_dir / project

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
