"""Shared checks and bounds: the validators and limits that requests, destinations, privacy rules,
schedules and settings all apply, so each rule has one wording everywhere."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timezone
from typing import Annotated

from pydantic import BeforeValidator, ValidationInfo

PROPERTY_NAME = re.compile(r"[\w$][\w$.:/ -]{0,199}")
"""A plain property key: letters, digits and `_ $ . : / -` and spaces; no quotes, brackets or SQL."""
STORED = {"stored": True}
"""Validation context for rows read back from the job store: checks added since a row was saved (a
five-field cron, webhook header rules) are made when it runs, as a clear permanent error, or by the
scheduler, which pauses it with the reason; a request's values are checked when they arrive."""
EXPORT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
"""Ids of exports, schedules and streams: they become file names and parts of object keys."""

# Bounds on what one request may ask for: each is checked when the request is made, so no request can
# make the API or a worker plan a query, render a path or store a row of unbounded size.
MAX_FILTERS = 100
MAX_LIST_VALUES = 10_000
MAX_LIST_FILTERS = 10
"""`in` / `not_in` filters: each is a hash lookup that holds about 9 MB of the store's memory while it runs."""
MAX_VALUE_CHARS = 4_096
MAX_FILTERS_CHARS = 256 * 1024
MAX_EVENTS = 1_000
MAX_EVENT_NAME_CHARS = 1_000
MAX_PROPERTIES = 200
"""Selected properties: each is a column of every batch (250 took a worker 180 MB)."""
MAX_RULE_PROPERTIES = 1_000
MAX_PATTERN_CHARS = 1_000
MAX_FOLDER_BYTES = 900
"""A rendered `prefix/path_template`: object keys are at most 1024 bytes, and the file name follows."""


def is_stored(info: ValidationInfo) -> bool:
    """Whether the model is being read back from the job store (validated with context STORED)."""
    return bool((info.context or {}).get("stored"))


def utc(value: datetime | date) -> datetime:
    """A timezone-aware UTC datetime; naive values and plain dates are taken as UTC."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time.min)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range in UTC") from None


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


def check_event_names(value: list[str]) -> list[str]:
    """Distinct, non-empty event names of bounded length."""
    for name in value:
        if not name:
            raise ValueError("event names must be non-empty strings")
        if len(name) > MAX_EVENT_NAME_CHARS:
            raise ValueError(f"an event name has {len(name):,} characters; the most is {MAX_EVENT_NAME_CHARS:,}")
    return list(dict.fromkeys(value))


def at_most(limit: int, what: str) -> BeforeValidator:
    def check(value: object) -> object:
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(f"{len(value):,} {what}; the most is {limit:,}")
        return value
    return BeforeValidator(check)


EventNames = Annotated[list[str], at_most(MAX_EVENTS, "event names")]


PropertyNames = Annotated[list[str], at_most(MAX_PROPERTIES, "selected properties")]


RuleProperties = Annotated[list[str], at_most(MAX_RULE_PROPERTIES, "property names")]
CONNECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_connection_name(value: str | None) -> str | None:
    """`value` if it is None or a valid connection name."""
    if value is not None and not CONNECTION_NAME.fullmatch(value):
        raise ValueError("connection names are 1-100 letters, digits or `_ . -`")
    return value
PROJECT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
"""A project (tenant) name: it names folders (exports, archives), so no `/`, no `..`, nothing hidden
(`.` first) and nothing that reads as a command-line option (`-` first)."""


def check_project_name(value: str) -> str:
    """`value` if it is a valid project name; the one check every way a project name comes in uses."""
    if not isinstance(value, str) or not PROJECT_NAME.fullmatch(value):
        shown = repr(value[:100]) + ("..." if len(value) > 100 else "") if isinstance(value, str) else repr(value)
        raise ValueError(f"project name {shown} is not 1-100 letters, digits or `_ . -` starting with a letter, "
                         "digit or `_`")
    return value
