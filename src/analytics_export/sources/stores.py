"""Which event store a process reads: `open_store(settings)`."""

from __future__ import annotations

from ..config import Settings
from . import EventStore


def open_store(settings: Settings, *, read_only: bool = True) -> EventStore:
    """The configured event store: `events_url` names PostgreSQL, ClickHouse or a DuckDB file; the
    default is `events.duckdb` in the data dir. Each engine's module loads on first use."""
    memory_limit = settings.duckdb_write_memory_limit if not read_only else settings.duckdb_memory_limit
    if settings.events_engine != "duckdb":  # their in-process DuckDB filters and projects every page
        memory_limit = memory_limit or "256MB"
    if settings.events_engine == "postgresql":
        from .postgres import PostgresEventStore

        return PostgresEventStore(settings.events_url, memory_limit=memory_limit, threads=settings.duckdb_threads)
    if settings.events_engine == "clickhouse":
        from .clickhouse import ClickHouseEventStore

        return ClickHouseEventStore(settings.events_url, memory_limit=memory_limit, threads=settings.duckdb_threads)
    from .duckdb import DuckDBEventStore

    return DuckDBEventStore(settings.events_path, read_only=read_only, memory_limit=memory_limit,
                            threads=settings.duckdb_threads)
