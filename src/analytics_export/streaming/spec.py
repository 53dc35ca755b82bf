"""What a stream is: which events, in which shape, to which destination (a webhook, object storage, a
broker or a warehouse table), in batches of what size."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..checks import EXPORT_ID, STORED, EventNames, check_event_names, utc
from ..destinations import registry
from ..destinations.specs import (
    EVENT_FIELDS,
    DeltaTableDestination,
    FileLayout,
    WarehouseTable,
    WebhookDestination,
    placeholders,
)
from ..errors import Invalid
from ..enums import COMPRESSION_DOC, Compression, ExportFormat
from ..models import ExportRequest, Filters, FormatName, SelectedProperties, offered_codec
from ..privacy.rules import PrivacyRules

StreamDestination = Annotated[Union[registry.stream_configs()], Field(discriminator="type")]
"""Where a stream goes: each registered destination type that streams (see destinations/registry.py)."""


class StreamSpec(BaseModel):
    """A stream: new events of the project, as `events`/`filters`/`properties` select them, in
    batches of at most `max_batch_events` or `max_batch_seconds`, to `destination`."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), pattern=EXPORT_ID)
    name: str = Field(min_length=1, max_length=200)
    events: EventNames = Field(default_factory=list, description="event names; empty means all")
    filters: Filters = Field(default_factory=list)
    properties: SelectedProperties = Field(None, description="properties to keep; empty or null means all")
    privacy: PrivacyRules | None = Field(None, description="rules added to the project's privacy policy")
    format: FormatName = Field(ExportFormat.JSON_LINES, description="webhook bodies and object-storage files "
                                 "(a table takes typed columns: format and compression do not apply)")
    compression: Compression | None = Field(None, description=COMPRESSION_DOC)
    destination: StreamDestination
    max_batch_events: int = Field(1000, ge=1, le=100_000)
    max_batch_seconds: float = Field(1.0, ge=0.05, le=3600)
    message: Literal["event", "batch"] = Field(
        "event", description="brokers: one message per event (JSON), or one per batch (the format's body)")
    failing_after_seconds: float = Field(300, ge=1, allow_inf_nan=False,
                                         description="failing this long, the stream shows `failing`")
    start: datetime | None = Field(None, description="deliver events stored from this time on; default: from creation")

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        return check_event_names(value)

    @field_validator("compression")
    @classmethod
    def _offered(cls, value: Compression | None, info: ValidationInfo) -> Compression | None:
        return offered_codec(value, info)  # a stored stream shows the reason when it runs

    @field_validator("destination")
    @classmethod
    def _one_file_per_batch(cls, value: object) -> object:
        if isinstance(value, FileLayout):
            if value.path_template and (not value.per_event or set(placeholders(value.path_template)) - set(EVENT_FIELDS)):
                raise ValueError("stream files are named by the range of events they hold, under `prefix`; a "
                                 "path_template may only lay them out by each event's own values: use "
                                 + ", ".join(f"{{{f}}}" for f in EVENT_FIELDS) + " alone")
            if value.split_limits() != (None, None):
                raise ValueError("a stream's batch is one file: use max_batch_events, not max_events_per_file "
                                 "or max_file_size_mb")
        if isinstance(value, WebhookDestination) and (value.batch_max_events or value.batch_max_bytes):
            raise ValueError("a stream's batch is one request: use max_batch_events, not batch_max_events or "
                             "batch_max_bytes")
        return value

    @model_validator(mode="after")
    def _table_columns(self) -> "StreamSpec":
        from ..warehouses import COLUMNS, check_columns

        if isinstance(self.destination, WarehouseTable):
            day = isinstance(self.destination, DeltaTableDestination) and self.destination.partition_by_day
            try:
                check_columns(self.properties, taken=COLUMNS + ("day",) if day else COLUMNS)
            except Invalid as exc:
                raise ValueError(str(exc)) from None
        return self

    @field_validator("start")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return utc(value) if value is not None else None

    def request(self, start: datetime | None = None, end: datetime | None = None,
                format: ExportFormat | None = None) -> ExportRequest:
        """An export request with the stream's selection over [start, end) (default: the last day),
        for the checks exports get and the shape batches are read in (as stored: the stream's codec is
        checked by the stream, and batches read for a broker or a table take another format)."""
        end = end or datetime.now(timezone.utc)
        return ExportRequest.model_validate(dict(
            id=self.id, start_date=start or end - timedelta(days=1), end_date=end, format=format or self.format,
            events=self.events, filters=self.filters, properties=self.properties, compression=self.compression,
            privacy=self.privacy), context=STORED)
