"""The reference persons and sessions models: docs/models.md's worked example, its rules one by one,
and invariants over generated histories."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from reference_models import BASE, LOOKBACK, Event, _linked_id, histories, persons, sessions

DAY_START = BASE.replace(hour=0)
DAY_END = DAY_START + timedelta(days=1)
US = timedelta(microseconds=1)


def at(hh_mm: str) -> datetime:
    hours, minutes = hh_mm.split(":")
    return DAY_START + timedelta(hours=int(hours), minutes=int(minutes))


def uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def ev(n: int, when: datetime, name: str, distinct_id: str, inserted_at: datetime | None = None, **props) -> Event:
    return Event(uuid(n), name, distinct_id, when, props, inserted_at or when)


EXAMPLE = [
    ev(
        1,
        at("10:00"),
        "$pageview",
        "anon-1",
        **{"$current_url": "/", "utm_source": "ads", "$set_once": {"plan": "free"}},
    ),
    ev(2, at("10:10"), "$pageview", "anon-1", **{"$current_url": "/pricing"}),
    ev(3, at("10:12"), "$identify", "ann@x.io", **{"$anon_distinct_id": "anon-1", "$set": {"email": "ann@x.io"}}),
    ev(4, at("11:00"), "$pageview", "ann@x.io", **{"$current_url": "/app", "$set": {"plan": "pro"}}),
    ev(5, at("11:05"), "$create_alias", "ann@x.io", alias="u-42"),
]


def test_worked_example_persons() -> None:
    assert persons(EXAMPLE[::-1], DAY_START, DAY_END) == [
        {
            "person_id": "ann@x.io",
            "distinct_ids": ["ann@x.io", "anon-1", "u-42"],
            "properties": {"email": "ann@x.io", "plan": "pro"},
            "first_seen": at("10:00"),
            "last_seen": at("11:05"),
            "event_count": 5,
        }
    ]


def test_worked_example_sessions() -> None:
    rows = sessions(EXAMPLE[::-1], DAY_START, DAY_END, gap_minutes=30)
    columns = ["session_id", "distinct_id", "person_id", "started_at", "ended_at", "event_count", "pageview_count"]
    columns += ["entry_url", "exit_url", "utm_source", "duration_seconds"]
    assert [tuple(r[c] for c in columns) for r in rows] == [
        (uuid(1), "anon-1", "ann@x.io", at("10:00"), at("10:10"), 2, 2, "/", "/pricing", "ads", 600.0),
        (uuid(3), "ann@x.io", "ann@x.io", at("10:12"), at("10:12"), 1, 0, None, None, None, 0.0),
        (uuid(4), "ann@x.io", "ann@x.io", at("11:00"), at("11:05"), 2, 1, "/app", "/app", None, 300.0),
    ]
    assert all(r[c] is None for r in rows for c in ["referrer", "utm_medium", "browser", "os"])


def test_chain_of_links_in_any_order_is_one_person_named_by_its_smallest_id() -> None:
    links = [
        ev(1, at("10:03"), "$identify", "b", **{"$anon_distinct_id": "a"}),
        ev(2, at("10:02"), "$create_alias", "c", alias="b"),
        ev(3, at("10:01"), "$identify", "d", **{"$anon_distinct_id": "c"}),
    ]
    for order in itertools.permutations(links):
        [row] = persons(list(order), DAY_START, DAY_END)
        assert (row["person_id"], row["distinct_ids"], row["event_count"]) == ("a", ["a", "b", "c", "d"], 3)


def test_ids_sort_by_utf8_bytes() -> None:
    events = [ev(1, at("10:00"), "$identify", "é", **{"$anon_distinct_id": "Z"}), ev(2, at("10:00"), "click", "ÿ")]
    rows = persons(events, DAY_START, DAY_END)
    assert [(r["person_id"], r["distinct_ids"]) for r in rows] == [("Z", ["Z", "é"]), ("ÿ", ["ÿ"])]


def test_set_last_wins_set_once_first_wins_ties_by_uuid() -> None:
    events = [
        ev(2, at("10:00"), "click", "a", **{"$set": {"k": "second"}, "$set_once": {"o": "second"}}),
        ev(1, at("10:00"), "click", "a", **{"$set": {"k": "first"}, "$set_once": {"o": "first", "k": "once"}}),
        ev(3, at("10:01"), "click", "a", **{"$set": "not an object", "$set_once": ["nor", "this"]}),
    ]
    [row] = persons(events, DAY_START, DAY_END)
    assert row["properties"] == {"k": "second", "o": "first"}
    assert list(row["properties"]) == ["k", "o"]


def test_link_to_itself_links_nothing() -> None:
    events = [
        ev(1, at("10:00"), "$identify", "a", **{"$anon_distinct_id": "a"}),
        ev(2, at("10:01"), "$create_alias", "b", alias=""),
        ev(3, at("10:02"), "$identify", "c", **{"$anon_distinct_id": 7}),
        ev(4, at("10:03"), "click", "d", alias="a"),
    ]
    rows = persons(events, DAY_START, DAY_END)
    assert [(r["person_id"], r["distinct_ids"]) for r in rows] == [(x, [x]) for x in "abcd"]


def test_a_gap_of_exactly_the_gap_continues_the_session_one_microsecond_more_splits() -> None:
    t = at("10:00")
    same = sessions([ev(1, t, "click", "a"), ev(2, t + timedelta(minutes=30), "click", "a")], DAY_START, DAY_END)
    assert [(r["session_id"], r["event_count"], r["duration_seconds"]) for r in same] == [(uuid(1), 2, 1800.0)]
    later = t + timedelta(minutes=30) + US
    split = sessions([ev(1, t, "click", "a"), ev(2, later, "click", "a")], DAY_START, DAY_END)
    assert [(r["session_id"], r["started_at"], r["event_count"]) for r in split] == [
        (uuid(1), t, 1),
        (uuid(2), later, 1),
    ]


def test_session_id_spans_distinct_ids_and_other_events_go_by_gap() -> None:
    events = [
        ev(1, at("10:00"), "$pageview", "x", **{"$session_id": "s", "$current_url": "/a", "$os": "Linux"}),
        ev(2, at("10:05"), "click", "x"),
        ev(3, at("12:00"), "$pageview", "y", **{"$session_id": "s", "$current_url": None}),
        ev(4, at("12:01"), "click", "y", **{"$session_id": "", "$current_url": 5}),
    ]
    rows = sessions(events, DAY_START, DAY_END)
    assert [(r["session_id"], r["distinct_id"], r["person_id"], r["event_count"]) for r in rows] == [
        (uuid(2), "x", "x", 1),
        (uuid(4), "y", "y", 1),
        ("s", "x", "x", 2),
    ]
    assert (rows[1]["entry_url"], rows[2]["exit_url"], rows[2]["os"]) == ("5", "/a", "Linux")


def test_property_values_are_their_text_or_json_text() -> None:
    props = {"$referrer": "", "utm_source": ["a", 1], "utm_medium": {"k": "é"}, "utm_term": True, "$os": None}
    [row] = sessions([ev(1, at("10:00"), "click", "a", **props)], DAY_START, DAY_END)
    assert (row["referrer"], row["utm_source"], row["utm_medium"]) == ("", '["a",1]', '{"k":"é"}')
    assert (row["utm_term"], row["utm_campaign"], row["os"]) == ("true", None, None)


def test_a_session_ending_after_the_window_is_left_out() -> None:
    end = at("12:00")
    events = [
        ev(1, end - timedelta(minutes=1), "click", "a"),
        ev(2, end + timedelta(minutes=10), "click", "a"),
        ev(3, end - timedelta(minutes=1), "click", "b"),
        ev(4, end + timedelta(minutes=30), "click", "b", **{"$session_id": "late"}),
        ev(5, end - timedelta(minutes=1), "click", "c", **{"$session_id": "s"}),
        ev(6, end + timedelta(minutes=30) + US, "click", "c", **{"$session_id": "s"}),
    ]
    assert [(r["session_id"], r["event_count"]) for r in sessions(events, DAY_START, end)] == [
        (uuid(3), 1),
        ("s", 1),
    ]


def test_events_before_start_minus_24_hours_are_not_read() -> None:
    start = at("12:00")
    events = [
        ev(1, start - LOOKBACK - US, "click", "a", **{"$session_id": "s"}),
        ev(2, start - LOOKBACK, "click", "a", **{"$session_id": "t"}),
        ev(3, start + timedelta(minutes=1), "click", "a", **{"$session_id": "s"}),
        ev(4, start + timedelta(minutes=1), "click", "a", **{"$session_id": "t"}),
    ]
    rows = sessions(events, start, DAY_END, gap_minutes=1440)
    assert [(r["session_id"], r["started_at"], r["event_count"]) for r in rows] == [
        ("s", start + timedelta(minutes=1), 1),
        ("t", start - LOOKBACK, 2),
    ]


def test_session_person_is_as_of_the_window_end() -> None:
    events = [
        ev(1, at("10:00"), "click", "z"),
        ev(2, at("12:00"), "$identify", "z", **{"$anon_distinct_id": "a"}),
    ]
    assert [r["person_id"] for r in sessions(events, at("09:00"), at("11:00"))] == ["z"]
    assert [r["person_id"] for r in sessions(events, at("09:00"), at("13:00"))] == ["a", "a"]


def test_event_count_all_or_range() -> None:
    events = [ev(1, at("08:00"), "click", "a"), ev(2, at("10:00"), "click", "a"), ev(3, at("13:00"), "click", "a")]
    [all_] = persons(events, at("09:00"), at("12:00"))
    [range_] = persons(events, at("09:00"), at("12:00"), event_count="range")
    assert (all_["event_count"], range_["event_count"]) == (2, 1)
    assert (all_["first_seen"], all_["last_seen"]) == (at("08:00"), at("10:00"))
    assert persons(events, at("11:00"), at("12:00")) == []


def test_time_field_inserted_at_picks_and_reads_by_insertion() -> None:
    events = [
        ev(1, at("08:00"), "click", "a", inserted_at=at("10:00")),
        ev(2, at("10:00"), "click", "b", inserted_at=at("13:00")),
        ev(3, at("10:30"), "$identify", "a", inserted_at=at("13:00"), **{"$anon_distinct_id": "b"}),
    ]
    rows = persons(events, at("09:00"), at("12:00"), time_field="inserted_at")
    assert [(r["person_id"], r["distinct_ids"], r["first_seen"], r["event_count"]) for r in rows] == [
        ("a", ["a"], at("08:00"), 1)
    ]
    rows = persons(events, at("09:00"), at("12:00"))
    assert [(r["person_id"], r["distinct_ids"], r["event_count"]) for r in rows] == [("a", ["a", "b"], 3)]


def _reorderings(events: list[Event], data: st.DataObject) -> list[list[Event]]:
    """The events by uuid, by uuid descending (ties in timestamp read both ways) and in a drawn order."""
    by_uuid = sorted(events, key=lambda e: e.uuid)
    return [by_uuid, by_uuid[::-1], data.draw(st.permutations(events))]


windows = st.tuples(
    st.integers(-4 * 60, 3 * 60).map(lambda m: BASE + timedelta(minutes=m)),
    st.integers(0, 6 * 60).map(lambda m: timedelta(minutes=m)),
).map(lambda t: (t[0], t[0] + t[1]))


@settings(max_examples=300, deadline=None)
@given(
    histories(), windows, st.sampled_from(["timestamp", "inserted_at"]), st.sampled_from(["all", "range"]), st.data()
)
def test_persons_invariants(events, window, time_field, event_count, data) -> None:
    start, end = window
    rows = persons(events, start, end, time_field=time_field, event_count=event_count)
    history = [e for e in events if getattr(e, time_field) < end]
    row_of = {}
    for r in rows:
        assert r["person_id"] == r["distinct_ids"][0]
        assert r["distinct_ids"] == sorted(set(r["distinct_ids"]), key=str.encode)
        assert r["first_seen"] <= r["last_seen"]
        for i in r["distinct_ids"]:
            assert row_of.setdefault(i, r) is r, "an id in two persons"
        counted = [e for e in history if e.distinct_id in r["distinct_ids"]]
        if event_count == "range":
            counted = [e for e in counted if start <= getattr(e, time_field)]
        assert r["event_count"] == len(counted) > 0
    assert {e.distinct_id for e in history if start <= getattr(e, time_field)} <= row_of.keys()
    for e in history:
        if (other := _linked_id(e)) is not None:
            assert row_of.get(e.distinct_id) is row_of.get(other)
    for reordered in _reorderings(events, data):
        assert persons(reordered, start, end, time_field=time_field, event_count=event_count) == rows


def _session_id(e: Event) -> bool:
    return isinstance(sid := e.properties.get("$session_id"), str) and sid != ""


def _events_of_sessions_ending_in(events: list[Event], start: datetime, end: datetime, gap: timedelta) -> int:
    """Events read whose session ends in [start, end), found backwards: an event's session ends where
    the next event of its session does, or at the event itself when none follows."""
    read = sorted(
        (e for e in events if start - LOOKBACK <= e.timestamp < end + gap), key=lambda e: (e.timestamp, e.uuid)
    )
    streams: dict[object, list[Event]] = defaultdict(list)
    for e in read:
        streams[("id", e.properties["$session_id"]) if _session_id(e) else ("gap", e.distinct_id)].append(e)
    count = 0
    for (kind, _), stream in streams.items():
        ends_at = stream[-1].timestamp
        for e, nxt in zip(stream[::-1], [None, *stream[::-1]]):
            if kind == "gap" and nxt is not None and nxt.timestamp - e.timestamp > gap:
                ends_at = e.timestamp
            count += start <= ends_at < end
    return count


@settings(max_examples=300, deadline=None)
@given(histories(), windows, st.sampled_from([1, 30, 60]), st.data())
def test_sessions_invariants(events, window, gap_minutes, data) -> None:
    start, end = window
    every = sessions(events, start, end, gap_minutes=gap_minutes)
    rows = [r for r in every if r["ended_at"] >= start]
    for r in every:
        if r["ended_at"] < start:  # ended in an earlier window; events stored since it was final bring it again
            late = [e for e in events if start + timedelta(minutes=gap_minutes) <= e.inserted_at
                    < end + timedelta(minutes=gap_minutes) and start - LOOKBACK <= e.timestamp < start]
            assert late and r["started_at"] >= start - LOOKBACK
    assert sum(r["event_count"] for r in rows) == _events_of_sessions_ending_in(
        events, start, end, timedelta(minutes=gap_minutes)
    )
    gap = timedelta(minutes=gap_minutes)
    read = [e for e in events if start - LOOKBACK <= e.timestamp < end + gap]
    by_session_id = Counter(e.properties["$session_id"] for e in read if _session_id(e))
    by_gap = {e.uuid: e for e in read if not _session_id(e)}
    for r in rows:
        assert start <= r["ended_at"] < end and r["started_at"] <= r["ended_at"]
        assert r["duration_seconds"] == (r["ended_at"] - r["started_at"]).total_seconds()
        assert 0 <= r["pageview_count"] <= r["event_count"]
        if r["session_id"] in by_session_id:
            assert r["event_count"] == by_session_id[r["session_id"]]
            continue
        first = by_gap[r["session_id"]]
        assert (first.distinct_id, first.timestamp) == (r["distinct_id"], r["started_at"])
        for e in by_gap.values():
            if e.distinct_id == first.distinct_id:
                assert not r["started_at"] - gap <= e.timestamp < r["started_at"], "the gap before a session"
                assert not r["ended_at"] < e.timestamp <= r["ended_at"] + gap, "the gap after a session"
    for reordered in _reorderings(events, data):
        assert sessions(reordered, start, end, gap_minutes=gap_minutes) == every
