"""What a stream is: which events, in which shape, to which destination (a webhook, object storage, a
broker or a warehouse table), in batches of what size."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..checks import EXPORT_ID, STORED, EventNames, check_event_names, utc
from ..errors import Invalid
from ..models import (
    COMPRESSION_DOC,
    AzureDestination,
    ClickHouseTableDestination,
    Compression,
    DeltaTableDestination,
    ExportFormat,
    ExportRequest,
    FileLayout,
    Filters,
    FormatName,
    GCSDestination,
    PostgresTableDestination,
    S3Destination,
    SelectedProperties,
    WarehouseTable,
    WebhookDestination,
    offered_codec,
)
from ..privacy.rules import PrivacyRules

SUBJECT = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
QUEUE = re.compile(r"[A-Za-z0-9_.:\-]{1,255}")


class NatsDestination(BaseModel):
    """A NATS JetStream subject; each message carries `Nats-Msg-Id` (the event uuid, or the batch's
    range) so JetStream drops a redelivered duplicate within its window."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["nats"] = "nats"
    url: str = Field("nats://127.0.0.1:4222", description="nats://host:port")
    subject: str = Field(description="subject published to, e.g. analytics.events")
    stream: str | None = Field(None, description="JetStream stream to create for the subject if missing")
    connection: str | None = Field(None, description="stored connection with `user`/`password` or `token`")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"(nats|tls)://[^\s/?#@]+", value):
            raise ValueError("url must be nats://host:port (credentials go in a connection)")
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        if not SUBJECT.fullmatch(value):
            raise ValueError("subject must be dot-separated tokens of letters, digits, `_` or `-` (no wildcards)")
        return value


class RabbitMQDestination(BaseModel):
    """A RabbitMQ queue (through the default exchange, or `exchange` with the queue name as routing
    key), published with confirms; each message's `message_id` is the event uuid or the batch's range."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["rabbitmq"] = "rabbitmq"
    url: str = Field("amqp://127.0.0.1:5672/", description="amqp://host:port/vhost")
    queue: str = Field(description="declared durable if missing")
    exchange: str = Field("", description="default: the default exchange, routing by queue name")
    connection: str | None = Field(None, description="stored connection with `username`/`password`")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"amqps?://[^\s?#@]+", value):
            raise ValueError("url must be amqp://host:port/vhost (credentials go in a connection)")
        return value

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        if not QUEUE.fullmatch(value):
            raise ValueError("queue must be 1-255 letters, digits or `_ . : -`")
        return value


StreamDestination = Annotated[
    Union[WebhookDestination, S3Destination, GCSDestination, AzureDestination, NatsDestination, RabbitMQDestination,
          PostgresTableDestination, ClickHouseTableDestination, DeltaTableDestination],
    Field(discriminator="type"),
]


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
            if value.path_template:
                raise ValueError("stream files are named by the range of events they hold, under `prefix`: "
                                 "remove path_template")
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
