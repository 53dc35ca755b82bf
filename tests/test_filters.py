"""Filter semantics per operator, checked against a plain-Python reference of the documented rules."""

from __future__ import annotations

import operator
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from analytics_export import ExportFilter
from analytics_export.errors import Invalid
from analytics_export.ingest import ingest_file
from analytics_export.sources import EventQuery
from analytics_export.sources.duckdb import DuckDBEventStore
from helpers import write_jsonl

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
END = datetime(2026, 1, 2, tzinfo=timezone.utc)
MISSING = object()
VALUES = [
    0, 1, -1, 2, 10, 10.5, 9.99, 1e15, -3.25, "", "a", "b", "abc", "ABC", "10", "2", "1.0", "true", "null",
    "café", "日本", "x,y", "it's", 'say "hi"', "line\nbreak", "%", "_", "a.b", True, False, None,
    [1, 2], ["a"], {"k": "v"},
]


def reference(props: dict, f: ExportFilter) -> bool:
    """The README's filter semantics, written independently of the SQL."""
    v = props.get(f.property, MISSING)
    op, want = f.operator.value, f.value
    if op.startswith("not_") or op in ("neq", "is_not_set"):
        positive = {"neq": "eq", "not_contains": "contains", "not_in": "in", "is_not_set": "is_set"}[op]
        return not reference(props, ExportFilter(property=f.property, operator=positive, value=want))
    if op == "is_set":
        return v is not MISSING and v is not None
    if op == "in":
        return any(compare(v, "eq", w) for w in want)
    if op == "contains":
        return isinstance(v, str) and want in v
    if op == "regex":
        return isinstance(v, str) and re.search(want, v) is not None
    return compare(v, op, want)


def compare(v: object, op: str, want: object) -> bool:
    fn = {"eq": operator.eq, "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}[op]
    if isinstance(want, bool):
        return isinstance(v, bool) and fn(v, want)
    if isinstance(want, (int, float)):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and fn(float(v), float(want))
    return isinstance(v, str) and fn(v, want)


@pytest.fixture(scope="module")
def filter_store(tmp_path_factory) -> tuple[DuckDBEventStore, dict[str, dict]]:
    """One event per value under property `a` (plus `b` and events without `a`), keyed by distinct_id."""
    events, by_id = [], {}
    for i, value in enumerate(VALUES + [MISSING, MISSING]):
        props = {"b": i} if value is MISSING else {"a": value, "b": i}
        uid = f"u{i}"
        by_id[uid] = props
        events.append({"event": "e", "distinct_id": uid, "timestamp": "2026-01-01T12:00:00Z", "properties": props})
    path = tmp_path_factory.mktemp("filters")
    store = DuckDBEventStore(path / "events.duckdb", read_only=False)
    ingest_file(store, write_jsonl(path / "events.jsonl", events), "p")
    yield store, by_id
    store.close()


def matched(store: DuckDBEventStore, *filters: ExportFilter) -> set[str]:
    query = EventQuery(project="p", start=START, end=END, filters=filters)
    return {d for batch in store.batches(query, 1024) for d in batch.column("distinct_id").to_pylist()}


scalars = st.sampled_from([v for v in VALUES if isinstance(v, (str, int, float)) and not isinstance(v, bool)]) | st.text(max_size=4) | st.integers(-20, 20) | st.floats(-20, 20, allow_nan=False)
filters = st.one_of(
    st.builds(lambda op, v: ExportFilter(property="a", operator=op, value=v),
              st.sampled_from(["eq", "neq"]), scalars | st.booleans()),
    st.builds(lambda op, v: ExportFilter(property="a", operator=op, value=v),
              st.sampled_from(["gt", "gte", "lt", "lte"]), scalars),
    st.builds(lambda op, v: ExportFilter(property="a", operator=op, value=v),
              st.sampled_from(["contains", "not_contains"]), st.text(max_size=3) | st.sampled_from(["a", "%", "_", "'", "\n"])),
    st.builds(lambda op, v: ExportFilter(property="a", operator=op, value=v),
              st.sampled_from(["in", "not_in"]), st.lists(scalars | st.booleans(), min_size=1, max_size=4)),
    st.builds(lambda op, v: ExportFilter(property="a", operator=op, value=v),
              st.just("regex"), st.sampled_from(["^a", "b$", "[0-9]+", "^$", "é", "(?i)abc", ".", "\\.", "x|y"])),
    st.builds(lambda op: ExportFilter(property=op[1], operator=op[0]),
              st.tuples(st.sampled_from(["is_set", "is_not_set"]), st.sampled_from(["a", "b", "zzz"]))),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(f=filters)
def test_pushdown_matches_reference(filter_store, f):
    store, by_id = filter_store
    assert matched(store, f) == {uid for uid, props in by_id.items() if reference(props, f)}


def test_filters_combine_with_and(filter_store):
    store, by_id = filter_store
    fs = [ExportFilter(property="b", operator="gte", value=3), ExportFilter(property="a", operator="is_set")]
    assert matched(store, *fs) == {u for u, p in by_id.items() if all(reference(p, f) for f in fs)}


@pytest.mark.parametrize("op, value, expected_values", [
    ("eq", 10, [10]),                      # numbers compare numerically ...
    ("eq", 10.0, [10]),
    ("eq", "10", ["10"]),                  # ... strings only with strings
    ("gt", 9.99, [10, 10.5, 1e15]),
    ("lt", "b", ["", "a", "abc", "ABC", "10", "2", "1.0", "%", "_", "a.b"]),
    ("eq", True, [True]),
    ("contains", "b", ["b", "abc", "a.b", "line\nbreak"]),
    ("in", ["a", 2, False], ["a", 2, False]),
    ("regex", "^a", ["a", "abc", "a.b"]),
])
def test_operator_examples(filter_store, op, value, expected_values):
    store, by_id = filter_store
    got = {by_id[u].get("a", MISSING) for u in matched(store, ExportFilter(property="a", operator=op, value=value))}
    assert sorted(map(repr, got)) == sorted(map(repr, expected_values))


def test_negations_include_missing_properties(filter_store):
    store, by_id = filter_store
    got = matched(store, ExportFilter(property="a", operator="neq", value="a"))
    assert {u for u, p in by_id.items() if "a" not in p} <= got


@pytest.mark.parametrize("payload", [
    "x' OR 1=1 --", "'; DROP TABLE events; --", "\" OR \"\"=\"", "$1", "?", "\\", "%' OR '%'='",
])
def test_injection_in_values_is_data(filter_store, payload):
    store, by_id = filter_store
    for op in ("eq", "contains", "in"):
        value = [payload] if op == "in" else payload
        assert matched(store, ExportFilter(property="a", operator=op, value=value)) == set()
    assert len(matched(store)) == len(by_id), "table intact"


@pytest.mark.parametrize("name", ["a'b", 'a"b', "a;DROP TABLE events", "a)--", "", "a[0]", "a\\b", "a\nb", "ab\n"])
def test_injection_in_property_names_is_rejected(name):
    with pytest.raises(ValidationError, match="plain key"):
        ExportFilter(property=name, operator="eq", value=1)


@pytest.mark.parametrize("kwargs, message", [
    ({"operator": "eq"}, "needs a single value"),
    ({"operator": "in", "value": []}, "non-empty list"),
    ({"operator": "in", "value": "a"}, "non-empty list"),
    ({"operator": "is_set", "value": 1}, "takes no value"),
    ({"operator": "contains", "value": 3}, "needs a string"),
    ({"operator": "gt", "value": True}, "not booleans"),
    ({"operator": "regex", "value": "("}, "invalid regular expression"),
    ({"operator": "like", "value": "a"}, "Input should be"),
])
def test_bad_filters_say_what_to_fix(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        ExportFilter(property="a", **kwargs)


def test_regex_the_store_rejects_is_invalid_input(filter_store):
    store, _ = filter_store
    with pytest.raises(Invalid, match="invalid input"):
        matched(store, ExportFilter(property="a", operator="regex", value="(?=a)"))


def test_dotted_and_dollar_names_are_top_level_keys(tmp_path: Path):
    store = DuckDBEventStore(tmp_path / "e.duckdb", read_only=False)
    events = [{"event": "e", "distinct_id": "1", "timestamp": "2026-01-01T01:00:00Z",
               "properties": {"a.b": 1, "a": {"b": 2}, "$browser": "Chrome"}}]
    ingest_file(store, write_jsonl(tmp_path / "e.jsonl", events), "p")
    assert matched(store, ExportFilter(property="a.b", operator="eq", value=1)) == {"1"}
    assert matched(store, ExportFilter(property="a.b", operator="eq", value=2)) == set()
    assert matched(store, ExportFilter(property="$browser", operator="eq", value="Chrome")) == {"1"}
    store.close()
