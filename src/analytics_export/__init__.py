"""analytics-export: get product-analytics events out of an event store, fast and in bounded memory.

    from analytics_export import export
    result = export(start_date="2026-11-01", end_date="2026-11-02", format="parquet", output_dir="out")
"""

from .config import Settings
from .exporting import export
from .models import Compression, ExportFilter, ExportFormat, ExportRequest, ExportResult, ExportStatus
from .pipeline.batches import Progress
from .sources.stores import open_store

__all__ = [
    "Compression", "ExportFilter", "ExportFormat", "ExportRequest", "ExportResult", "ExportStatus",
    "Progress", "Settings", "export", "open_store",
]
