"""The contract: request, result and schedule types shared by the CLI, the API and the workers."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime, time, timezone
from enum import Enum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROPERTY_NAME = re.compile(r"[\w$][\w$.:/ -]{0,199}")
"""A plain property key: letters, digits and `_ $ . : / -` and spaces; no quotes, brackets or SQL."""


def utc(value: datetime | date) -> datetime:
    """A timezone-aware UTC datetime; naive values and plain dates are taken as UTC."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time.min)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def describe_errors(errors: list[dict], skip: tuple[str, ...] = ()) -> str:
    """pydantic errors as one line, `field: what is wrong` each, for the CLI and the API alike."""
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e["loc"] if p not in skip)
        message = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def check_property_name(name: str) -> str:
    """Reject property names that are not plain keys, saying what is allowed."""
    if not isinstance(name, str) or not PROPERTY_NAME.fullmatch(name):
        raise ValueError(
            f"property name {name!r} is not a plain key: use 1-200 letters, digits, "
            "spaces or `_ $ . : / -`, starting with a letter, digit, `_` or `$`"
        )
    return name


class ExportFormat(str, Enum):
    JSON = "json"
    JSON_LINES = "json_lines"
    CSV = "csv"
    PARQUET = "parquet"
    AVRO = "avro"

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self]

    @property
    def file_extension(self) -> str:
        return _EXTENSIONS[self]

    @classmethod
    def parse(cls, value: str) -> ExportFormat:
        """Accept an enum value (`json_lines`) or a file extension (`jsonl`)."""
        text = value.strip().lower().lstrip(".")
        for fmt in cls:
            if text in (fmt.value, fmt.file_extension):
                return fmt
        names = ", ".join(f"{f.value} ({f.file_extension})" for f in cls)
        raise ValueError(f"unknown format {value!r}: use one of {names}")


_CONTENT_TYPES = {
    ExportFormat.JSON: "application/json",
    ExportFormat.JSON_LINES: "application/x-ndjson",
    ExportFormat.CSV: "text/csv",
    ExportFormat.PARQUET: "application/octet-stream",
    ExportFormat.AVRO: "application/avro",
}
_EXTENSIONS = {
    ExportFormat.JSON: "json",
    ExportFormat.JSON_LINES: "jsonl",
    ExportFormat.CSV: "csv",
    ExportFormat.PARQUET: "parquet",
    ExportFormat.AVRO: "avro",
}


class Compression(str, Enum):
    GZIP = "gzip"
    ZSTD = "zstd"
    SNAPPY = "snappy"
    LZ4 = "lz4"

    @property
    def file_extension(self) -> str:
        """Suffix added to text formats (`.gz`, `.zst`, `.sz`, `.lz4`)."""
        return {"gzip": ".gz", "zstd": ".zst", "snappy": ".sz", "lz4": ".lz4"}[self.value]


class FilterOperator(str, Enum):
    EQ = "eq"
    NEQ = "neq"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    CONTAINS = "contains"
    NOT_CONTAINS = "not_contains"
    REGEX = "regex"
    IN = "in"
    NOT_IN = "not_in"
    IS_SET = "is_set"
    IS_NOT_SET = "is_not_set"


Scalar = Union[bool, int, float, str]
_NO_VALUE = {FilterOperator.IS_SET, FilterOperator.IS_NOT_SET}
_LIST_VALUE = {FilterOperator.IN, FilterOperator.NOT_IN}
_STRING_VALUE = {FilterOperator.CONTAINS, FilterOperator.NOT_CONTAINS, FilterOperator.REGEX}
_ORDERED_VALUE = {FilterOperator.GT, FilterOperator.GTE, FilterOperator.LT, FilterOperator.LTE}


class ExportFilter(BaseModel):
    """One condition on a property; the README documents each operator's semantics."""

    model_config = ConfigDict(extra="forbid")

    property: str
    operator: FilterOperator
    value: Scalar | list[Scalar] | None = None

    @field_validator("property")
    @classmethod
    def _plain_key(cls, value: str) -> str:
        return check_property_name(value)

    @model_validator(mode="after")
    def _value_fits_operator(self) -> ExportFilter:
        op, value = self.operator, self.value
        if op in _NO_VALUE:
            if value is not None:
                raise ValueError(f"operator {op.value} takes no value")
        elif op in _LIST_VALUE:
            if not isinstance(value, list) or not value:
                raise ValueError(f"operator {op.value} needs a non-empty list of values")
        elif isinstance(value, list) or value is None:
            raise ValueError(f"operator {op.value} needs a single value (string, number or boolean)")
        elif op in _STRING_VALUE and not isinstance(value, str):
            raise ValueError(f"operator {op.value} needs a string value")
        elif op in _ORDERED_VALUE and isinstance(value, bool):
            raise ValueError(f"operator {op.value} compares numbers or strings, not booleans")
        if op is FilterOperator.REGEX:
            try:
                re.compile(value)  # type: ignore[arg-type]
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return self


class DownloadDestination(BaseModel):
    type: Literal["download"] = "download"


class S3Destination(BaseModel):
    type: Literal["s3"] = "s3"
    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    connection: str | None = None


class GCSDestination(BaseModel):
    type: Literal["gcs"] = "gcs"
    bucket: str
    prefix: str = ""
    connection: str | None = None


class AzureDestination(BaseModel):
    type: Literal["azure"] = "azure"
    container: str
    prefix: str = ""
    account_url: str | None = None
    connection: str | None = None


class SFTPDestination(BaseModel):
    type: Literal["sftp"] = "sftp"
    host: str
    port: int = Field(22, ge=1, le=65535)
    username: str
    path: str = "."
    connection: str | None = None


class WebhookDestination(BaseModel):
    type: Literal["webhook"] = "webhook"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    connection: str | None = None


ExportDestination = Annotated[
    Union[
        DownloadDestination,
        S3Destination,
        GCSDestination,
        AzureDestination,
        SFTPDestination,
        WebhookDestination,
    ],
    Field(discriminator="type"),
]


class ExportStatus(str, Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ExportRequest(BaseModel):
    """What to export: events in [start_date, end_date), filtered and projected, in one format."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    events: list[str] = Field(default_factory=list, description="event names; empty means all")
    start_date: datetime
    end_date: datetime
    format: ExportFormat = ExportFormat.JSON_LINES
    properties: list[str] | None = Field(None, description="properties to keep; null means all")
    filters: list[ExportFilter] = Field(default_factory=list)
    compression: Compression | None = None
    destination: ExportDestination = Field(default_factory=DownloadDestination)
    created_at: datetime = Field(default_factory=_now)
    status: ExportStatus = ExportStatus.PENDING

    @field_validator("start_date", "end_date", "created_at", mode="after")
    @classmethod
    def _as_utc(cls, value: datetime) -> datetime:
        return utc(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        if any(not e for e in value):
            raise ValueError("event names must be non-empty strings")
        return list(dict.fromkeys(value))

    @field_validator("properties")
    @classmethod
    def _properties(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("properties must name at least one property, or be null for all")
        return list(dict.fromkeys(check_property_name(p) for p in value))

    @model_validator(mode="after")
    def _window(self) -> ExportRequest:
        if self.end_date <= self.start_date:
            raise ValueError(
                f"end_date ({self.end_date.isoformat()}) must be after start_date "
                f"({self.start_date.isoformat()}); the window is [start_date, end_date)"
            )
        return self

    @property
    def file_name(self) -> str:
        """`export_{id}_{start:%Y%m%d}_to_{end:%Y%m%d}.{ext}{compression_ext}`."""
        suffix = ""
        if self.compression and self.format in (ExportFormat.JSON, ExportFormat.JSON_LINES, ExportFormat.CSV):
            suffix = self.compression.file_extension
        return (
            f"export_{self.id}_{self.start_date:%Y%m%d}_to_{self.end_date:%Y%m%d}"
            f".{self.format.file_extension}{suffix}"
        )


class ExportResult(BaseModel):
    export_id: str
    status: ExportStatus
    total_events: int = 0
    file_size: int = 0
    download_url: str | None = None
    destination_path: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    expires_at: datetime | None = None


class DateRange(str, Enum):
    LAST_HOUR = "last_hour"
    LAST_DAY = "last_day"
    LAST_WEEK = "last_week"
    LAST_MONTH = "last_month"
    SINCE_LAST_RUN = "since_last_run"


class ScheduledExport(BaseModel):
    """A recurring export: `request` is the template, each run covers one `date_range` window."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    name: str
    schedule: str = Field(description="cron expression, e.g. `0 2 * * *`")
    timezone: str = "UTC"
    date_range: DateRange = DateRange.LAST_DAY
    events: list[str] = Field(default_factory=list)
    format: ExportFormat = ExportFormat.JSON_LINES
    properties: list[str] | None = None
    filters: list[ExportFilter] = Field(default_factory=list)
    compression: Compression | None = None
    destination: ExportDestination = Field(default_factory=DownloadDestination)
    enabled: bool = True
    last_run: datetime | None = None
    next_run: datetime | None = None


class ExportConfig(BaseModel):
    """Limits and tuning that apply to every export."""

    batch_size: int = Field(16_384, ge=1_024, le=1_048_576, description="rows per Arrow batch")
    max_range_days: int = Field(366, ge=1)
    file_expiry_hours: float = Field(24 * 7, gt=0, description="downloads expire this long after completion")
    max_concurrent_exports: int = Field(4, ge=1)
    max_attempts: int = Field(3, ge=1, description="runs of an export that fails for a transient reason")
    retry_backoff_seconds: float = Field(5.0, ge=0, description="wait before the 2nd run; doubles after each")
