"""Schedule windows: half-open [start, end) intervals on a calendar grid in the schedule's time zone.

Windows come from the grid, not from when runs happen, so consecutive windows tile time with no
gap and no overlap whatever the scheduler's timing: a late or missed run finds the same windows.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterator
from zoneinfo import ZoneInfo

from croniter import croniter

from ..enums import DateRange

UTC = timezone.utc


def floor(t: datetime, unit: DateRange, tz: ZoneInfo) -> datetime:
    """The start (in UTC) of the calendar hour, day, ISO week or month in `tz` that holds `t`."""
    local = t.astimezone(tz)
    if unit is DateRange.LAST_HOUR:
        start = local.replace(minute=0, second=0, microsecond=0)  # keeps `fold`: the repeated hour stays apart
    elif unit is DateRange.LAST_DAY:
        start = datetime(local.year, local.month, local.day, tzinfo=tz)
    elif unit is DateRange.LAST_WEEK:
        monday = local.date() - timedelta(days=local.weekday())
        start = datetime(monday.year, monday.month, monday.day, tzinfo=tz)
    elif unit is DateRange.LAST_MONTH:
        start = datetime(local.year, local.month, 1, tzinfo=tz)
    else:
        raise ValueError(f"{unit.value} is not a calendar period")
    return start.astimezone(UTC)


def following(boundary: datetime, unit: DateRange, tz: ZoneInfo) -> datetime:
    """The grid boundary after `boundary` (itself a boundary)."""
    if unit is DateRange.LAST_HOUR:
        step = timedelta(hours=1)
        while (nxt := floor(boundary + step, unit, tz)) <= boundary:  # half-hour DST shifts (Lord Howe)
            step += timedelta(minutes=30)
        return nxt
    local = boundary.astimezone(tz)
    if unit is DateRange.LAST_DAY:
        day = local.date() + timedelta(days=1)
    elif unit is DateRange.LAST_WEEK:
        day = local.date() + timedelta(days=7)
    else:
        day = (local.date().replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def windows(unit: DateRange, tz: ZoneInfo, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The grid's windows from the boundary at or before `start` up to the last one ending by `end`."""
    lo = floor(start, unit, tz)
    while (hi := following(lo, unit, tz)) <= end:
        yield lo, hi
        lo = hi


def due(unit: DateRange, tz: ZoneInfo, watermark: datetime | None, fired: datetime, previous_fire: datetime,
        delay: timedelta, latest_only: bool) -> list[tuple[datetime, datetime]]:
    """Windows a run at `fired` exports: those ending by `fired - delay` after `watermark` (the end of
    the last window queued). A schedule's first run exports the latest complete window only;
    `latest_only` skips missed windows after downtime (a deliberate gap)."""
    cutoff = fired - delay
    if unit is DateRange.SINCE_LAST_RUN:
        start = watermark or (previous_fire - delay)
        return [(start, cutoff)] if start < cutoff else []
    end = floor(cutoff, unit, tz)
    if watermark is None or latest_only:
        start = floor(end - timedelta(microseconds=1), unit, tz)
        return [(start, end)] if watermark is None or start >= watermark else []
    return list(windows(unit, tz, watermark, end))


def fires(cron: str, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """The cron's firing times after `after`, in UTC (cron fields read in `tz`, DST included)."""
    it = croniter(cron, after.astimezone(tz))
    while True:
        yield it.get_next(datetime).astimezone(UTC)


def last_fire(cron: str, tz: ZoneInfo, at: datetime) -> datetime:
    """The cron's latest firing time at or before `at`."""
    it = croniter(cron, (at + timedelta(microseconds=1)).astimezone(tz))
    return it.get_prev(datetime).astimezone(UTC)
