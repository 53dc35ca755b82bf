"""Demo events for the benches: generated into a DuckDB file, copied row for row into other stores."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path


def store_urls(data: Path, pg_database: str) -> dict[str, str]:
    """events_url per store: the DuckDB file in `data` (""), PostgreSQL `pg_database`, chDB under `data`."""
    return {"duckdb": "", "postgres": f"postgresql://postgres@127.0.0.1:5432/{pg_database}",
            "clickhouse": f"chdb://{data / 'chdb'}"}


def generate_demo(data: Path, events: int, end: datetime | None = None) -> float:
    """`events` demo events into `data`'s DuckDB store; returns the seconds it took."""
    from analytics_export import Settings, open_store
    from analytics_export.demo import generate

    started = time.perf_counter()
    store = open_store(Settings(data_dir=data), read_only=False)
    try:
        generate(store, events, "default", end=end)
    finally:
        store.close()
    return time.perf_counter() - started


def copy_demo(data: Path, url: str) -> float:
    """Copy `data`'s DuckDB events into the store at `url`; returns the seconds it took."""
    from analytics_export import Settings, open_store

    started = time.perf_counter()
    store = open_store(Settings(data_dir=data, events_url=url), read_only=False)
    try:
        store.execute(f"ATTACH '{data / 'events.duckdb'}' AS demo (READ_ONLY)", [])
        store.insert("SELECT * FROM demo.events")
    finally:
        store.close()
    return time.perf_counter() - started
