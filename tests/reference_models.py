"""Plain-Python oracle of the persons and sessions models: the rules of docs/models.md, nothing more.

Both functions take every event of one project (suppression is the caller's job) and a window
[start, end); rows come back as dicts with Python values, in the models' row order.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st


@dataclass(frozen=True)
class Event:
    uuid: str  # text uuid
    event: str
    distinct_id: str
    timestamp: datetime  # tz-aware UTC, microsecond precision
    properties: dict
    inserted_at: datetime


LOOKBACK = timedelta(hours=24)
LINK_PROPERTY = {"$identify": "$anon_distinct_id", "$create_alias": "alias"}
FIRST_EVENT_COLUMNS = {
    "referrer": "$referrer",
    "utm_source": "utm_source",
    "utm_medium": "utm_medium",
    "utm_campaign": "utm_campaign",
    "utm_term": "utm_term",
    "utm_content": "utm_content",
    "browser": "$browser",
    "os": "$os",
}


def _event_order(e: Event) -> tuple[datetime, str]:
    return (e.timestamp, e.uuid)


def _id_order(s: str) -> bytes:
    return s.encode()


def _string_property(properties: dict, key: str) -> str | None:
    """The value of a string property (a non-empty JSON string), else None."""
    value = properties.get(key)
    return value if isinstance(value, str) and value else None


def _column_value(value: Any) -> str | None:
    """A session column: a string is its text, null is null, anything else its JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _linked_id(e: Event) -> str | None:
    """The id an event links to its distinct_id, if any (a link to itself links nothing)."""
    key = LINK_PROPERTY.get(e.event)
    other = _string_property(e.properties, key) if key else None
    return None if other == e.distinct_id else other


def _person_ids(history: list[Event]) -> dict[str, str]:
    """Every id of the history (distinct_ids and linked ids) -> the smallest id of its component."""
    neighbours: dict[str, set[str]] = {}
    for e in history:
        neighbours.setdefault(e.distinct_id, set())
        if (other := _linked_id(e)) is not None:
            neighbours[e.distinct_id].add(other)
            neighbours.setdefault(other, set()).add(e.distinct_id)
    person_of: dict[str, str] = {}
    for node in neighbours:
        if node in person_of:
            continue
        component, todo = {node}, [node]
        while todo:
            for n in neighbours[todo.pop()] - component:
                component.add(n)
                todo.append(n)
        person_id = min(component, key=_id_order)
        person_of.update(dict.fromkeys(component, person_id))
    return person_of


def _person_properties(ordered: list[Event]) -> dict:
    """$set: the last event's value per key wins; $set_once: the first one's, for keys never $set."""
    set_values: dict = {}
    once_values: dict = {}
    for e in ordered:
        if isinstance(s := e.properties.get("$set"), dict):
            set_values.update(s)
        if isinstance(o := e.properties.get("$set_once"), dict):
            for key, value in o.items():
                once_values.setdefault(key, value)
    merged = once_values | set_values
    return {key: merged[key] for key in sorted(merged, key=_id_order)}


def persons(
    events: list[Event],
    start: datetime,
    end: datetime,
    *,
    time_field: str = "timestamp",
    event_count: str = "all",
) -> list[dict]:
    """The persons model of the window [start, end) on time_field ("timestamp" or "inserted_at")."""
    assert time_field in ("timestamp", "inserted_at") and event_count in ("all", "range")
    history = sorted((e for e in events if getattr(e, time_field) < end), key=_event_order)
    person_of = _person_ids(history)
    ids: dict[str, list[str]] = defaultdict(list)
    for node, person_id in person_of.items():
        ids[person_id].append(node)
    person_events: dict[str, list[Event]] = defaultdict(list)
    for e in history:
        person_events[person_of[e.distinct_id]].append(e)
    rows = []
    for person_id, evs in person_events.items():
        in_window = [e for e in evs if start <= getattr(e, time_field) < end]
        if not in_window:
            continue
        rows.append(
            {
                "person_id": person_id,
                "distinct_ids": sorted(ids[person_id], key=_id_order),
                "properties": _person_properties(evs),
                "first_seen": min(e.timestamp for e in evs),
                "last_seen": max(e.timestamp for e in evs),
                "event_count": len(evs) if event_count == "all" else len(in_window),
            }
        )
    return sorted(rows, key=lambda r: _id_order(r["person_id"]))


def _session_events(read: list[Event], gap: timedelta) -> list[tuple[str, list[Event]]]:
    """(session_id, its events in order) for every session of the events read (given in order)."""
    by_session_id: dict[str, list[Event]] = {}
    by_gap: list[tuple[str, list[Event]]] = []
    open_by_gap: dict[str, list[Event]] = {}
    for e in read:
        session_id = _string_property(e.properties, "$session_id")
        if session_id is not None:
            by_session_id.setdefault(session_id, []).append(e)
            continue
        current = open_by_gap.get(e.distinct_id)
        if current is None or e.timestamp - current[-1].timestamp > gap:
            current = open_by_gap[e.distinct_id] = []
            by_gap.append((e.uuid, current))
        current.append(e)
    return list(by_session_id.items()) + by_gap


def sessions(events: list[Event], start: datetime, end: datetime, *, gap_minutes: int = 30) -> list[dict]:
    """The sessions model of the window [start, end) (on timestamp) with a gap of gap_minutes: those
    ending in it, and those ending before it that hold an event stored in [start + gap, end + gap)."""
    gap = timedelta(minutes=gap_minutes)
    read = sorted((e for e in events if start - LOOKBACK <= e.timestamp < end + gap), key=_event_order)
    person_of = _person_ids([e for e in events if e.timestamp < end])
    rows = []
    for session_id, evs in _session_events(read, gap):
        first, last = evs[0], evs[-1]
        late = last.timestamp < start and any(start + gap <= e.inserted_at < end + gap for e in evs)
        if not (start <= last.timestamp < end or late):
            continue
        urls = [e.properties["$current_url"] for e in evs if e.properties.get("$current_url") is not None]
        rows.append(
            {
                "session_id": session_id,
                "distinct_id": first.distinct_id,
                "person_id": person_of[first.distinct_id],
                "started_at": first.timestamp,
                "ended_at": last.timestamp,
                "duration_seconds": (last.timestamp - first.timestamp).total_seconds(),
                "event_count": len(evs),
                "pageview_count": sum(e.event == "$pageview" for e in evs),
                "entry_url": _column_value(urls[0]) if urls else None,
                "exit_url": _column_value(urls[-1]) if urls else None,
                **{col: _column_value(first.properties.get(key)) for col, key in FIRST_EVENT_COLUMNS.items()},
            }
        )
    return sorted(rows, key=lambda r: (_id_order(r["session_id"]), r["started_at"]))


# Generated histories: small pools, so that links, ties, gaps and the window's edges all happen.

BASE = datetime(2026, 1, 1, 10, tzinfo=timezone.utc)
DISTINCT_IDS = ["anon-1", "Anon-1", "ann@x.io", "é", "日本", "u-42"]
OTHER_IDS = [*DISTINCT_IDS, "ext-9", "Ω"]
EVENT_NAMES = ["$pageview", "$identify", "$create_alias", "click"]
SET_KEYS = ["plan", "Plan", "email", "ü"]
_MINUTE = timedelta(minutes=1)

_texts = st.text(alphabet="aZé日 /", max_size=3)
_scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([0.5, -2.25, 3.0]) | _texts
_values = _scalars | st.lists(_scalars, max_size=2)
_not_strings = st.sampled_from(["", None, 7, ["s1"], {"a": 1}])
_objects = st.dictionaries(st.sampled_from(SET_KEYS), _values, max_size=3)


@st.composite
def _event(draw: st.DrawFn, i: int, anchors: list[datetime]) -> Event:
    distinct_id = draw(st.sampled_from(DISTINCT_IDS))
    linked = st.sampled_from(OTHER_IDS) | st.just(distinct_id) | _not_strings
    optional = {
        "$session_id": st.sampled_from(["s1", "s2", "S1"]) | _not_strings,
        "$anon_distinct_id": linked,
        "alias": linked,
        "$set": _objects | _not_strings,
        "$set_once": _objects | _not_strings,
        "$current_url": st.sampled_from(["/", "/pricing", "/app", ""]) | _not_strings,
        "$referrer": _texts | _not_strings,
        "utm_source": _values,
        "$browser": st.sampled_from(["Firefox", "Chrome"]) | _not_strings,
        "$os": st.sampled_from(["Linux", "Mac OS X"]),
    }
    timestamp = (
        draw(st.sampled_from(anchors))
        + draw(st.sampled_from([0, 30, 60])) * _MINUTE
        + timedelta(microseconds=draw(st.sampled_from([0, 1, -1]) | st.integers(-3_600_000_000, 3_600_000_000)))
    )
    delay = timedelta(microseconds=draw(st.just(0) | st.integers(0, 7_200_000_000)))
    return Event(
        uuid=f"00000000-0000-4000-8000-{i:012d}",
        event=draw(st.sampled_from(EVENT_NAMES)),
        distinct_id=distinct_id,
        timestamp=timestamp,
        properties=draw(st.fixed_dictionaries({}, optional=optional)),
        inserted_at=timestamp + delay,
    )


@st.composite
def histories(draw: st.DrawFn, max_events: int = 25) -> list[Event]:
    """Event lists of one project: shared timestamps, gaps of exactly 30 minutes +-1 µs, links
    (also to self and to ids that never send events), bad property types; in no particular order."""
    offsets = st.integers(-3 * 3600, 3 * 3600) | st.integers(-26 * 3600, -22 * 3600)
    anchors = [BASE + timedelta(seconds=draw(offsets)) for _ in range(3)]
    n = draw(st.integers(0, max_events))
    return draw(st.permutations([draw(_event(i, anchors)) for i in range(n)]))
