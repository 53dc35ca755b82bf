"""The contract: request, result and schedule types shared by the CLI, the API and the workers."""

from __future__ import annotations

import math
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue

from .checks import (
    EXPORT_ID,
    MAX_FILTERS,
    MAX_FILTERS_CHARS,
    MAX_LIST_FILTERS,
    MAX_LIST_VALUES,
    MAX_PATTERN_CHARS,
    MAX_VALUE_CHARS,
    STORED,
    EventNames,
    PropertyNames,
    at_most,
    check_event_names,
    check_property_name,
    is_stored,
    utc,
)
from .destinations import registry
from .destinations.specs import DownloadDestination, FileLayout, WarehouseTable, check_window
from .enums import (
    COMPRESSION_DOC,
    Compression,
    DateRange,
    ExportFormat,
    ExportModel,
    ExportStatus,
    FilterOperator,
    codec_problem,
    file_suffix,
)
from .privacy.rules import PrivacyRules


def offered_codec(value: Compression | None, info: ValidationInfo) -> Compression | None:
    """The `compression` field's check in every model that chooses a format (declared before it): `value`
    if the format offers it; read back from the job store, `value` as saved (checked when it runs). A
    field check, not a model check: pydantic runs model checks again on nested instances (a stored
    request inside a view)."""
    fmt = info.data.get("format")
    if fmt is not None and not is_stored(info):
        problem = codec_problem(fmt, value)
        if problem is not None:
            raise ValueError(problem)
    return value


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

    @field_validator("value", mode="before")
    @classmethod
    def _bounded(cls, value: object) -> object:
        if isinstance(value, list) and len(value) > MAX_LIST_VALUES:
            raise ValueError(f"a list holds {len(value):,} values; the most is {MAX_LIST_VALUES:,}: "
                             "split the export, or filter on a coarser property")
        for item in value if isinstance(value, list) else [value]:
            check_scalar(item)
        return value

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
            if len(value) > MAX_PATTERN_CHARS:  # type: ignore[arg-type]
                raise ValueError(f"a regular expression has at most {MAX_PATTERN_CHARS:,} characters")
            try:
                re.compile(value)  # type: ignore[arg-type]
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return self

    @property
    def size(self) -> int:
        """About how many characters the filter takes (its JSON text): what MAX_FILTERS_CHARS bounds."""
        values = self.value if isinstance(self.value, list) else [self.value]
        return len(self.property) + 20 + sum(len(v) + 3 if isinstance(v, str) else 24 for v in values)


def check_scalar(value: object) -> None:
    """Raise ValueError for a filter value that no store could compare: a string beyond
    MAX_VALUE_CHARS, or a number that is not finite or is outside a double's range."""
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise ValueError(f"a value has {len(value):,} characters; the most is {MAX_VALUE_CHARS:,}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            finite = math.isfinite(float(value))
        except OverflowError:
            finite = False
        if not finite:
            text = str(value) if isinstance(value, float) or abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit number"
            raise ValueError(f"{text} is not a finite number within ±1.8e308; filters compare numbers as doubles")


def check_filters(filters: list[ExportFilter]) -> list[ExportFilter]:
    """`filters` if together they stay within MAX_FILTERS_CHARS."""
    lists = sum(f.operator in _LIST_VALUE for f in filters)
    if lists > MAX_LIST_FILTERS:
        raise ValueError(f"{lists} in/not_in filters; the most is {MAX_LIST_FILTERS}: put the values of one property "
                         "in one list")
    size = sum(f.size for f in filters)
    if size > MAX_FILTERS_CHARS:
        raise ValueError(f"the filters take about {size:,} characters; the most is {MAX_FILTERS_CHARS:,} "
                         "(a list of a few thousand values fits): split the export")
    return filters


Filters = Annotated[list[ExportFilter], at_most(MAX_FILTERS, "filters"), AfterValidator(check_filters)]


def check_selected_properties(value: list[str] | None) -> list[str] | None:
    """Distinct plain property names, or None for all: an empty list means all too (the seed's contract),
    and becomes None so every source, writer and schema sees one spelling of "all"."""
    return list(dict.fromkeys(check_property_name(p) for p in value)) if value else None


def format_name(value: object) -> object:
    """An export format from its name (`json_lines`) or its file extension (`jsonl`), as the CLI takes
    it, so the API, schedules and streams accept what the CLI does; ExportFormat.parse says what else fits."""
    return ExportFormat.parse(value) if isinstance(value, str) and not isinstance(value, ExportFormat) else value


class _ExtensionAliases:
    """In request schemas, the file extensions a format field takes besides the enum's names (`jsonl`);
    responses carry the enum's name only, so their schema stays the enum."""

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        names = handler(schema)
        if handler.mode != "validation":
            return names
        aliases = [{"const": f.file_extension, "type": "string", "description": f"the same as `{f.value}`"}
                   for f in ExportFormat if f.file_extension != f.value]
        return {"anyOf": [names, *aliases]}


FormatName = Annotated[ExportFormat, BeforeValidator(format_name), _ExtensionAliases()]
SelectedProperties = Annotated[PropertyNames | None, AfterValidator(check_selected_properties)]


MAX_CRON_LENGTH = 200
"""Longest cron expression accepted: a minute list of all 60 minutes fits with room to spare."""


def check_cron(value: str, stored: bool = False) -> str:
    """`value` if it is a five-field cron expression (or an alias such as `@daily`) that fires;
    `stored` (read back from the job store) only needs to be one croniter reads."""
    from croniter import CroniterBadDateError, croniter

    if not stored and len(value) > MAX_CRON_LENGTH:
        raise ValueError(f"the cron expression is {len(value)} characters; the most is {MAX_CRON_LENGTH}")
    five = value.startswith("@") or len(value.split()) == 5
    if not croniter.is_valid(value) or (not five and not stored):
        raise ValueError(f"{value!r} is not a cron expression: five fields, minute hour day month weekday "
                         "(no seconds, no years), e.g. `0 2 * * *`")
    try:
        croniter(value).get_next()
    except CroniterBadDateError:
        raise ValueError(f"{value!r} never fires: no date has that day in that month") from None
    return value


def cron_shortest_gap(cron: str) -> int:
    """Minutes between the two closest firings of the five-field `cron` on its wall clock, over its
    whole daily cycle: between its times of day, and from the last to the first as on two days in a
    row (so a cron firing near midnight is judged as if it fired on consecutive days)."""
    from croniter import croniter

    fields, _ = croniter.expand(cron)
    minutes = range(60) if fields[0] == ["*"] else fields[0]
    hours = range(24) if fields[1] == ["*"] else fields[1]
    times = sorted(h * 60 + m for h in hours for m in minutes)
    return min([b - a for a, b in zip(times, times[1:])] + [24 * 60 - times[-1] + times[0]])


def check_cron_interval(cron: str, minimum_seconds: float) -> str:
    """`cron` if no two of its firings are closer than `minimum_seconds` (the server's
    `min_schedule_interval_seconds`); each firing runs a whole export job."""
    gap = cron_shortest_gap(cron)
    if gap * 60 < minimum_seconds:
        raise ValueError(f"{cron!r} fires {gap} minute{'s' if gap != 1 else ''} apart at its closest; this server "
                         f"runs a schedule at most every {minimum_seconds / 60:g} minutes "
                         f"(min_schedule_interval_seconds={minimum_seconds:g}): space its times further apart, "
                         "or use a stream for fresher data")
    return cron


def schedule_problem(cron: str, minimum_seconds: float) -> str | None:
    """Why a stored `cron` may no longer run here (rules tightened, or the limit raised), or None."""
    try:
        check_cron_interval(check_cron(cron), minimum_seconds)
    except ValueError as exc:
        return str(exc)
    return None


ExportDestination = Annotated[Union[registry.export_configs()], Field(discriminator="type")]
"""Where an export goes: each registered destination type that exports (see destinations/registry.py)."""


TimeField = Literal["timestamp", "inserted_at"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def check_formula_guard(fmt: ExportFormat, guard: bool) -> None:
    """Refuse csv_formula_guard for a format other than CSV: there is nothing a spreadsheet would run
    in typed Parquet/Avro columns or in JSON, and silently ignoring the flag would hide a mistake."""
    if guard and fmt is not ExportFormat.CSV:
        raise ValueError(f"csv_formula_guard applies to CSV only; this export is {fmt.value}: "
                         "remove csv_formula_guard or choose format csv")


IncludeColumn = Literal["uuid", "inserted_at"]
Include = Annotated[list[IncludeColumn], AfterValidator(lambda value: [c for c in ("uuid", "inserted_at") if c in value])]
"""Extra columns, each once, in the order files carry them."""
EVENT_COLUMNS = ("event", "distinct_id", "timestamp")
"""The columns every export has; in CSV, Parquet and Avro each selected property is a column beside them."""


def check_columns(fmt: ExportFormat, properties: list[str] | None, include: list[str]) -> None:
    """Refuse a selected property that would be a second column of the same name in a tabular file
    (readers then rename, refuse or pick one of the two); JSON formats nest properties, so no clash."""
    if properties is None or fmt.spec.nested_properties:
        return
    taken = (*EVENT_COLUMNS, *include)
    clash = [p for p in properties if p in taken]
    if clash:
        raise ValueError(f"property {clash[0]!r} would be a second {clash[0]!r} column of the {fmt.value} file: "
                         f"select properties other than {', '.join(taken)}, or export all properties "
                         "(properties: null) to find it inside the `properties` column, or use json_lines")


PersonEventCount = Literal["all", "range"]
MODEL_DOC = ("what each row is: an event (default), a person merged from its ids, or a session; persons and "
             "sessions are derived from every event of the project (docs/models.md)")
GAP_DOC = "sessions: a user's events more than this many minutes apart are in different sessions"
COUNT_DOC = "persons: `event_count` over the person's whole history (`all`) or over the window (`range`)"


def check_model(model: ExportModel, events: list[str], filters: list, properties: list[str] | None,
                include: list[str], destination: object) -> None:
    """Persons and sessions are built from every event of the project: a selection of events or
    columns would change what a person or a session is."""
    if model is ExportModel.EVENTS:
        return
    chosen = [name for name, value in (("events", events), ("filters", filters), ("include", include)) if value]
    if properties is not None:
        chosen.append("properties")
    if chosen:
        raise ValueError(f"a {model.value} export takes no {', '.join(chosen)}: its rows are built from every "
                         "event of the project (docs/models.md); leave them out")
    if isinstance(destination, FileLayout) and destination.per_event:
        raise ValueError(f"a {model.value} export cannot lay files out by {{event_date}}, {{event_hour}} or "
                         "{event}: those are values of events; use {start_date} or {end_date}")


class ExportRequest(BaseModel):
    """What to export: events in [start_date, end_date), filtered and projected, in one format."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), pattern=EXPORT_ID)
    events: EventNames = Field(default_factory=list, description="event names; empty means all")
    start_date: datetime
    end_date: datetime
    format: FormatName = ExportFormat.JSON_LINES
    properties: SelectedProperties = Field(None, description="properties to keep; empty or null means all")
    filters: Filters = Field(default_factory=list)
    compression: Compression | None = Field(None, description=COMPRESSION_DOC)
    destination: ExportDestination = Field(default_factory=DownloadDestination)
    time_field: TimeField = Field(
        "timestamp", description="the window selects on the event's `timestamp`, or on `inserted_at` "
        "(when it was stored: late events fall into a later window instead of being missed)")
    privacy: PrivacyRules | None = Field(
        None, description="rules added to the project's privacy policy for this export (they can only add protection)")
    include: Include = Field(
        default_factory=list, max_length=2, description="extra columns after the others: `uuid` (each event's "
        "id, to drop duplicates that at-least-once delivery or a re-run can bring) and `inserted_at` (when it "
        "was stored). Empty by default, which keeps the export's columns as they always were")
    csv_formula_guard: bool = Field(
        False, description="CSV only: a string cell (or header cell) starting with `=`, `+`, `-`, `@`, tab or CR, "
        "unless it is a plain number, gets a leading `'`, so a spreadsheet shows it as text instead of running "
        "it as a formula (OWASP's CSV injection advice). Off by default: it changes the values, which other "
        "readers (warehouses, pandas) then see")
    model: ExportModel = Field(ExportModel.EVENTS, description=MODEL_DOC)
    session_gap_minutes: int = Field(30, ge=1, le=1440, description=GAP_DOC)
    person_event_count: PersonEventCount = Field("all", description=COUNT_DOC)
    created_at: datetime = Field(default_factory=_now)
    status: ExportStatus = ExportStatus.PENDING

    @field_validator("start_date", "end_date", "created_at", mode="after")
    @classmethod
    def _as_utc(cls, value: datetime) -> datetime:
        return utc(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        return check_event_names(value)

    @field_validator("compression")
    @classmethod
    def _offered(cls, value: Compression | None, info: ValidationInfo) -> Compression | None:
        return offered_codec(value, info)  # a stored export fails with the reason when it runs

    @model_validator(mode="after")
    def _window(self, info: ValidationInfo) -> ExportRequest:
        check_formula_guard(self.format, self.csv_formula_guard)
        if not is_stored(info):  # one saved before the check still loads, to be listed
            check_columns(self.format, self.properties, self.include)
            check_model(self.model, self.events, self.filters, self.properties, self.include, self.destination)
        if self.end_date <= self.start_date:
            raise ValueError(
                f"end_date ({self.end_date.isoformat()}) must be after start_date "
                f"({self.start_date.isoformat()}); the window is [start_date, end_date)"
            )
        if not is_stored(info) and isinstance(self.destination, FileLayout):
            check_window(self.destination.per_event, self.start_date, self.end_date)
        if not is_stored(info) and self.model is ExportModel.SESSIONS:
            closed = self.end_date + timedelta(minutes=self.session_gap_minutes)
            if closed > _now():
                raise ValueError(f"the sessions of a window are known only once the gap has passed after it: "
                                 f"export this window after {closed.isoformat()}, or end it earlier")
        return self

    @property
    def laid_out(self) -> bool:
        """Whether the files are laid out by each event's own values (`{event_date}`... in path_template)."""
        return isinstance(self.destination, FileLayout) and bool(self.destination.per_event)

    @property
    def file_stem(self) -> str:
        return f"export_{self.id}_{self.start_date:%Y%m%d}_to_{self.end_date:%Y%m%d}"

    @property
    def file_extension(self) -> str:
        return file_suffix(self.format, self.compression)

    @property
    def file_name(self) -> str:
        """`export_{id}_{start:%Y%m%d}_to_{end:%Y%m%d}.{ext}{compression_ext}`."""
        return self.file_stem + self.file_extension

    def part_name(self, number: int, partition: int | None = None) -> str:
        """The name of part `number` (from 1) of an export split into several files; a partitioned
        export's parts are numbered within their partition."""
        within = f"{partition:04d}-" if partition is not None else ""
        return f"{self.file_stem}.part-{within}{number:05d}{self.file_extension}"

    @property
    def manifest_name(self) -> str:
        """Written last when an export is split: lists its parts, so a reader knows it is complete."""
        return f"{self.file_stem}.manifest.json"


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
    privacy_policy_version: int | None = Field(
        None, description="the project privacy policy version the export applied (null: the project had none)")
    dropped_properties: list[str] = Field(
        default_factory=list, description="selected properties the privacy policy kept out of the export")


class ScheduledExport(BaseModel):
    """A recurring export: at each cron time, the complete `date_range` windows not yet exported are."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), pattern=EXPORT_ID)
    name: str = Field(min_length=1, max_length=200)
    schedule: str = Field(description="cron expression, e.g. `0 2 * * *`, read in `timezone`")
    timezone: str = Field("UTC", description="IANA time zone of the cron and of the calendar windows")
    date_range: DateRange = DateRange.LAST_DAY
    time_field: TimeField = Field(
        "inserted_at", description="windows select on `inserted_at` (late events go to the next window, "
        "none is missed) or on the event's `timestamp` (late events after `delay_seconds` are missed)")
    delay_seconds: float = Field(60, ge=0, le=31 * 86400,
                                 description="wait after a window ends before exporting it")
    catch_up: Literal["all", "latest"] = Field(
        "all", description="after downtime, export every missed window, or only the latest one")
    max_failures: int = Field(10, ge=1, le=10_000, description="pause after this many consecutive failed runs")
    backfill_concurrency: int = Field(2, ge=1, le=100, description="backfilled windows exported at once")
    events: EventNames = Field(default_factory=list)
    format: FormatName = ExportFormat.JSON_LINES
    properties: SelectedProperties = Field(None, description="properties to keep; empty or null means all")
    filters: Filters = Field(default_factory=list)
    compression: Compression | None = Field(None, description=COMPRESSION_DOC)
    csv_formula_guard: bool = Field(False, description="as in an export request: CSV cells a spreadsheet would "
                                    "run as formulas start with `'`")
    include: Include = Field(default_factory=list, max_length=2,
                                         description="as in an export request: `uuid` and/or `inserted_at` columns")
    destination: ExportDestination = Field(default_factory=DownloadDestination)
    model: ExportModel = Field(ExportModel.EVENTS, description=MODEL_DOC + "; a sessions window is exported "
                               "once `session_gap_minutes` more than `delay_seconds` have passed after it")
    session_gap_minutes: int = Field(30, ge=1, le=1440, description=GAP_DOC)
    person_event_count: PersonEventCount = Field("all", description=COUNT_DOC)
    enabled: bool = True
    last_run: datetime | None = None
    next_run: datetime | None = None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str, info: ValidationInfo) -> str:
        return check_cron(value, stored=is_stored(info))

    @field_validator("compression")
    @classmethod
    def _offered(cls, value: Compression | None, info: ValidationInfo) -> Compression | None:
        return offered_codec(value, info)  # a stored schedule is paused with the reason when due

    @model_validator(mode="after")
    def _guard(self, info: ValidationInfo) -> ScheduledExport:
        check_formula_guard(self.format, self.csv_formula_guard)
        if not is_stored(info):  # one saved before the check still loads, to be listed
            check_columns(self.format, self.properties, self.include)
            check_model(self.model, self.events, self.filters, self.properties, self.include, self.destination)
        return self

    @property
    def settle_seconds(self) -> float:
        """How long after a window ends it is exported: `delay_seconds`, and for sessions the gap too."""
        gap = self.session_gap_minutes * 60 if self.model is ExportModel.SESSIONS else 0
        return self.delay_seconds + gap

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        return check_event_names(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone, e.g. `Europe/Berlin` or `UTC`") from None
        return value

    def request(self, export_id: str, start: datetime, end: datetime) -> ExportRequest:
        """The export of one window (as stored: the schedule's own checks were made on it, and an export
        of a stored schedule the rules no longer allow fails with the reason when it runs)."""
        return ExportRequest.model_validate(dict(
            id=export_id, events=self.events, start_date=start, end_date=end, format=self.format,
            properties=self.properties, filters=self.filters, compression=self.compression,
            destination=self.destination, time_field=self.time_field, csv_formula_guard=self.csv_formula_guard,
            include=self.include, model=self.model, session_gap_minutes=self.session_gap_minutes,
            person_event_count=self.person_event_count),
            context=STORED)


class ExportConfig(BaseModel):
    """Limits and tuning that apply to every export."""

    batch_size: int = Field(16_384, ge=1_024, le=1_048_576, description="rows per Arrow batch")
    engine_writes: bool = Field(True, description="let the event store's engine write a file itself (DuckDB's "
                                "COPY) when nothing in Python touches its rows; off: every file is written from "
                                "Arrow batches (same rows and bytes, slower)")
    max_range_days: int = Field(366, ge=1)
    file_expiry_hours: float = Field(24 * 7, gt=0, description="downloads expire this long after completion")
    max_concurrent_exports: int = Field(4, ge=1, description="exports of one project pending or running at once "
                                        "(a partitioned export counts once); more are refused (429) or, from "
                                        "schedules, queued at a later tick")
    min_schedule_interval_seconds: float = Field(
        300, ge=60, le=86_400, description="closest two firings of a schedule's or retention policy's cron may be")
    max_attempts: int = Field(3, ge=1, description="runs of an export that fails for a transient reason")
    retry_backoff_seconds: float = Field(5.0, ge=0, description="wait before the 2nd run; doubles after each")
    upload_retries: int = Field(5, ge=0, description="retries of a destination request that failed transiently")
    upload_backoff_seconds: float = Field(0.5, ge=0, description="wait before an upload retry; doubles, with jitter")
    upload_timeout_seconds: float = Field(60, gt=0, description="a destination request that takes longer fails")
    partition_hours: float = Field(24, ge=0, description="a queued export spanning more than this is run as "
                                   "partitions of this length, by any free workers at once; 0: never")
    max_partitions: int = Field(32, ge=2, description="partitions are made longer so there are at most this many")
    min_partition_events: int = Field(500_000, ge=1, description="and so that each holds about this many events "
                                      "or more (counted before filters): small exports are not worth cutting up")
    isolate: bool = Field(True, description="run each export in a child process of the worker: its memory is given "
                          "back when it ends, and a crash or out-of-memory kill fails that attempt (retried), not the "
                          "worker; off: in the worker's own process, which then keeps what exports' allocations leave behind")
    partition_embedded: bool = Field(
        False, description="partition also the exports of the embedded store (DuckDB): the one machine that holds "
        "its file runs each export on every core already, so partitions would share those cores and add their "
        "staging and joining")


class RetentionPolicy(BaseModel):
    """Export before deletion: each whole UTC day older than `days` is archived to `destination`
    (Hive-style `date=YYYY-MM-DD/` folders), verified by reading it back, then deleted from the store."""

    model_config = ConfigDict(extra="forbid")

    days: int = Field(ge=1, le=36_500, description="events older than this many days are archived, then deleted")
    destination: ExportDestination = Field(
        default_factory=DownloadDestination,
        description="where archives go; `download` keeps them in the data dir's `archive/` folder")
    compression: Compression | None = Field(Compression.ZSTD, description="the Parquet codec")
    schedule: str = Field("0 3 * * *", description="cron expression (UTC) of the runs")
    enabled: bool = True

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str, info: ValidationInfo) -> str:
        return check_cron(value, stored=is_stored(info))

    @field_validator("destination")
    @classmethod
    def _readable(cls, value: ExportDestination) -> ExportDestination:
        if value.type == "webhook":
            raise ValueError("archives must be read back before events are deleted: choose download, s3, gcs, "
                             "azure or sftp, not webhook")
        if isinstance(value, WarehouseTable):
            raise ValueError("archives are Parquet files, read back before events are deleted: choose download, "
                             "s3, gcs, azure or sftp, not a table")
        if isinstance(value, FileLayout) and value.split_limits() != (None, None):
            raise ValueError("an archive is one file a day: remove max_events_per_file / max_file_size_mb")
        return value
