"""The contract's plain choices (formats and their facts, compressions, filter operators, statuses, date
ranges): no pydantic, so the command line parses and prints `--help` without loading the models."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Compression(str, Enum):
    GZIP = "gzip"
    ZSTD = "zstd"
    SNAPPY = "snappy"
    LZ4 = "lz4"

    @property
    def file_extension(self) -> str:
        """Suffix added to text formats (`.gz`, `.zst`, `.sz`, `.lz4`)."""
        return {"gzip": ".gz", "zstd": ".zst", "snappy": ".sz", "lz4": ".lz4"}[self.value]


@dataclass(frozen=True)
class FormatSpec:
    """What a format is, in the one place every part of the service reads it from.

    `codecs` are the compressions offered: those that mainstream readers (DuckDB, ClickHouse, polars,
    pandas, pyarrow, Spark; fastparquet, fastavro and Apache Avro for their formats) open whole, as
    measured (the README's Compression section has the table); `codecs_note` says why others are refused.
    `codec_inside_file`: the codec is the file's own (Parquet pages, Avro blocks) and the name keeps
    its plain extension; otherwise the file is wrapped in one compressed stream and gets the codec's
    suffix. `nested_properties`: `properties` stays one nested object even when properties are
    selected (JSON, JSON Lines); tabular formats get one column per selected property instead.
    """

    extension: str
    content_type: str
    codecs: tuple[Compression, ...]
    codecs_note: str = ""
    codec_inside_file: bool = False
    nested_properties: bool = False


_TEXT_CODECS = (Compression.GZIP, Compression.ZSTD)
_TEXT_NOTE = ("readers such as DuckDB, pandas, polars and Spark cannot open snappy- or lz4-framed text; snappy "
              "and lz4 are offered inside Parquet and Avro files")


class ExportFormat(str, Enum):
    JSON = "json"
    JSON_LINES = "json_lines"
    CSV = "csv"
    PARQUET = "parquet"
    AVRO = "avro"

    @property
    def spec(self) -> FormatSpec:
        return FORMAT_SPECS[self]

    @property
    def content_type(self) -> str:
        return self.spec.content_type

    @property
    def file_extension(self) -> str:
        return self.spec.extension

    @classmethod
    def parse(cls, value: str) -> ExportFormat:
        """Accept an enum value (`json_lines`) or a file extension (`jsonl`)."""
        text = value.strip().lower().lstrip(".")
        for fmt in cls:
            if text in (fmt.value, fmt.file_extension):
                return fmt
        names = ", ".join(f"{f.value} ({f.file_extension})" for f in cls)
        raise ValueError(f"unknown format {value!r}: use one of {names}")


FORMAT_SPECS: dict[ExportFormat, FormatSpec] = {
    ExportFormat.JSON: FormatSpec("json", "application/json", _TEXT_CODECS, _TEXT_NOTE, nested_properties=True),
    ExportFormat.JSON_LINES: FormatSpec("jsonl", "application/x-ndjson", _TEXT_CODECS, _TEXT_NOTE,
                                        nested_properties=True),
    ExportFormat.CSV: FormatSpec("csv", "text/csv", _TEXT_CODECS, _TEXT_NOTE),
    ExportFormat.PARQUET: FormatSpec(
        "parquet", "application/octet-stream",
        (Compression.GZIP, Compression.ZSTD, Compression.SNAPPY, Compression.LZ4), codec_inside_file=True),
    ExportFormat.AVRO: FormatSpec(
        "avro", "application/avro", (Compression.GZIP, Compression.ZSTD, Compression.SNAPPY),
        "lz4 is not in the Avro specification: only fastavro reads it; gzip is written as Avro's deflate, which "
        "every reader tested opens, and polars cannot read zstd", codec_inside_file=True),
}
"""Each format's facts; `codec_problem` says why a format does not offer a compression."""
COMPRESSION_DOC = ("text formats are wrapped in one stream (`.gz`, `.zst`); Parquet and Avro compress inside the "
                   "file (Avro's gzip is deflate). Offered: " + "; ".join(
                       f"{f.value} {', '.join(c.value for c in spec.codecs)}" for f, spec in FORMAT_SPECS.items()))


def file_suffix(fmt: ExportFormat, compression: Compression | None) -> str:
    """A file's suffix: the format's extension, then the codec's when it wraps the file (`.csv.gz`)."""
    wrapped = compression is not None and not fmt.spec.codec_inside_file
    return f".{fmt.file_extension}{compression.file_extension if wrapped else ''}"  # type: ignore[union-attr]


def codec_problem(fmt: ExportFormat, compression: Compression | None) -> str | None:
    """Why `fmt` does not offer `compression`, naming what it offers, or None (no compression always is)."""
    spec = fmt.spec
    if compression is None or compression in spec.codecs:
        return None
    names = [c.value for c in spec.codecs]
    offered = ", ".join(names[:-1]) + f" or {names[-1]}"
    why = f" ({spec.codecs_note})" if spec.codecs_note else ""
    return f"{compression.value} is not offered for {fmt.value}: use {offered}{why}"


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


class ExportModel(str, Enum):
    """What each row of an export is (docs/models.md)."""

    EVENTS = "events"
    PERSONS = "persons"
    SESSIONS = "sessions"


class ExportStatus(str, Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


class DateRange(str, Enum):
    LAST_HOUR = "last_hour"
    LAST_DAY = "last_day"
    LAST_WEEK = "last_week"
    LAST_MONTH = "last_month"
    SINCE_LAST_RUN = "since_last_run"
