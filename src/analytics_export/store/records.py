"""Exports as the job store hands them out, apart from SQLAlchemy: a worker sends a `Job` to the child
process that runs it (`runtime/isolated.py`), which then imports the export path only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..checks import STORED
from ..enums import ExportStatus
from ..models import ExportRequest, ExportResult


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time here is UTC."""
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


@dataclass
class Partition:
    """One time window of a partitioned export, run by whichever worker claims it."""

    number: int
    start: datetime
    end: datetime
    attempts: int


@dataclass
class Job:
    """One export as stored: the request, where it stands, and its result once finished."""

    id: str
    project: str
    request: ExportRequest
    status: ExportStatus
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    expires_at: datetime | None
    events_done: int
    bytes_done: int
    events_expected: int | None
    total_events: int | None
    file_size: int | None
    destination_path: str | None
    error: str | None
    attempts: int
    cancel_requested: bool
    parts: int | None = None
    parts_done: int | None = None
    privacy_version: int | None = None
    dropped_properties: list[str] | None = None
    partition: Partition | None = None  # set when this claim is for one partition of the export

    @classmethod
    def from_row(cls, row: Any) -> Job:
        m = row._mapping
        return cls(
            id=m["id"], project=m["project"], request=ExportRequest.model_validate(m["request"], context=STORED),
            status=ExportStatus(m["status"]), created_at=aware(m["created_at"]), started_at=aware(m["started_at"]),
            completed_at=aware(m["completed_at"]), expires_at=aware(m["expires_at"]),
            events_done=m["events_done"], bytes_done=m["bytes_done"], events_expected=m["events_expected"],
            total_events=m["total_events"],
            file_size=m["file_size"], destination_path=m["destination_path"], error=m["error"],
            attempts=m["attempts"], cancel_requested=m["cancel_requested"], parts=m["parts"],
            parts_done=m["parts_done"], privacy_version=m["privacy_version"],
            dropped_properties=m["dropped_properties"],
        )

    def result(self, download_url: str | None = None) -> ExportResult | None:
        if self.status not in (ExportStatus.COMPLETED, ExportStatus.FAILED, ExportStatus.EXPIRED):
            return None
        return ExportResult(
            export_id=self.id, status=self.status, total_events=self.total_events or 0,
            file_size=self.file_size or 0, download_url=download_url, destination_path=self.destination_path,
            error=self.error, started_at=self.started_at, completed_at=self.completed_at, expires_at=self.expires_at,
            privacy_policy_version=self.privacy_version or None, dropped_properties=self.dropped_properties or [],
        )
