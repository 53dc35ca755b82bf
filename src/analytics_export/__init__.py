"""analytics-export: get product-analytics events out of an event store, fast and in bounded memory.

    from analytics_export import export
    result = export(start_date="2026-11-01", end_date="2026-11-02", format="parquet", output_dir="out")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings
    from .enums import Compression, ExportFormat, ExportStatus
    from .exporting import export
    from .models import ExportFilter, ExportRequest, ExportResult
    from .pipeline.batches import Progress
    from .sources.stores import open_store

EXPORTS = {
    "Compression": "enums", "ExportFilter": "models", "ExportFormat": "enums", "ExportRequest": "models",
    "ExportResult": "models", "ExportStatus": "enums", "Progress": "pipeline.batches", "Settings": "config",
    "export": "exporting", "open_store": "sources.stores",
}
"""Name -> module: loaded when first used, so `import analytics_export` (and every command's start,
which imports the package first) pays for none of them."""

__all__ = [
    "Compression", "ExportFilter", "ExportFormat", "ExportRequest", "ExportResult", "ExportStatus",
    "Progress", "Settings", "export", "open_store",
]


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{EXPORTS[name]}", __name__), name)
