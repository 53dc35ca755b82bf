"""Settings from the environment (`ANALYTICS_EXPORT_*`) with defaults that run on a laptop."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .models import ExportConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANALYTICS_EXPORT_")

    data_dir: Path = Field(Path(".analytics-export"), description="event store and exports live here")
    project: str = Field("default", description="tenant whose events are read and written")
    duckdb_memory_limit: str = Field("64MB", description="DuckDB buffer pool cap for exports (a scan needs little)")
    duckdb_write_memory_limit: str = Field("1GB", description="DuckDB buffer pool cap for ingest and demo")
    duckdb_threads: int = Field(2, ge=1)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @property
    def events_path(self) -> Path:
        return self.data_dir / "events.duckdb"

    @property
    def export_dir(self) -> Path:
        return self.data_dir / "exports"
