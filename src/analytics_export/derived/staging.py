"""The in-process DuckDB a derived model's SQL runs in: the store's selections are loaded into its tables,
which spill to a private folder past the memory cap, and the model's rows are read back as Arrow."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import duckdb
import pyarrow as pa

from ..errors import Cancelled
from ..sources import EventQuery, EventSource, Selection
from ..sources.duckdb import translated_errors

MEMORY = "256MB"
PREFIX = "analytics-export-model-"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned() -> None:
    """Delete the staging folders of processes that are gone (a killed export leaves its own behind)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = folder.name.removeprefix(PREFIX).split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


class Staging:
    """A staging database in a private folder of its own, named after this process."""

    def __init__(self, should_stop: Callable[[], bool] | None = None, export_id: str = "",
                 memory_limit: str = MEMORY, threads: int = 2) -> None:
        remove_abandoned()
        self.should_stop, self.export_id = should_stop, export_id
        self.folder = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")  # 0700
        self.con = duckdb.connect(f"{self.folder}/staging.duckdb", config={"memory_limit": memory_limit, "threads": threads,
                                                      "temp_directory": self.folder,
                                                      "preserve_insertion_order": False})
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")

    def load(self, source: EventSource, query: EventQuery, tables: dict[str, tuple[str, Selection]]) -> None:
        """Create each table (name: (its column definitions, the selection filling it)) and fill them all
        from one pass of `source.select` over `query`'s events."""
        names = list(tables)
        rows = source.select(query, [selection for _, selection in tables.values()])
        self.fill({name: columns for name, (columns, _) in tables.items()},
                  ((names[index], batch) for index, batch in rows))

    def fill(self, tables: dict[str, str], rows: Iterable[tuple[str, pa.RecordBatch]]) -> None:
        """Create each table (name: its column definitions) and insert the (table, batch) `rows`."""
        for name, columns in tables.items():
            self.run(f"CREATE OR REPLACE TABLE {name} ({columns})")
        for name, batch in rows:
            self.check()
            if batch.num_rows:
                self.con.register("batch", batch)
                try:
                    self.run(f"INSERT INTO {name} SELECT * FROM batch")
                finally:
                    self.con.unregister("batch")

    def check(self) -> None:
        """Cancelled once the export's `should_stop()` says so."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"export {self.export_id} was cancelled")

    def run(self, text: str, params: list[Any] | None = None) -> duckdb.DuckDBPyConnection:
        with translated_errors():
            return self.con.execute(text, params or [])

    def rows(self, text: str, params: list[Any], schema: pa.Schema, batch_size: int,
             close: bool = False) -> Iterator[pa.RecordBatch]:
        """The result of `text` as batches of `schema` (by position); with `close`, the staging is closed
        once they are read, or the reading stopped."""
        try:
            with translated_errors():
                reader = self.con.sql(text, params=params).to_arrow_reader(batch_size)
                for batch in reader:
                    yield pa.RecordBatch.from_arrays([c.cast(f.type) for c, f in zip(batch.columns, schema)],
                                                     schema=schema)
        finally:
            if close:
                self.close()

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.folder, ignore_errors=True)
