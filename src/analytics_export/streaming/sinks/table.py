"""A stream's batches appended to a warehouse table (PostgreSQL, ClickHouse, Delta Lake): each batch
is one load whose window is its own events, the rows of its `inserted_at` range with its uuids. A
batch sent again (after a crash before the checkpoint) replaces its earlier copy instead of adding
a second, so the table holds every event exactly once."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from ...destinations import Placement, destination_for
from ...warehouses import LoadWindow, TableDestination
from . import Delivery

if TYPE_CHECKING:
    from ...config import Settings
    from ..spec import StreamSpec


class TableSink:
    def __init__(self, spec: StreamSpec, project: str, settings: Settings, secrets: dict[str, str]) -> None:
        self.table: TableDestination = destination_for(  # type: ignore[assignment]
            Placement(spec.destination, project, settings, secrets, export_id=spec.id))

    def send(self, delivery: Delivery) -> None:
        rows = pa.Table.from_batches(delivery.rows)
        inserted = rows.column("inserted_at")
        window = LoadWindow(pc.min(inserted).as_py(), pc.max(inserted).as_py() + timedelta(microseconds=1), "inserted_at",
                        loaded_only=True)
        self.table.load(rows.to_reader(), window)

    def close(self) -> None:
        self.table.close()


def build(spec: StreamSpec, project: str, settings: Settings, secrets: dict[str, str]) -> TableSink:
    return TableSink(spec, project, settings, secrets)
