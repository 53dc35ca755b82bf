"""Privacy inside every export: detectors and rules on adversarial values, denied properties absent
from every format's bytes, suppressed users absent, pseudonyms stable per project."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from pathlib import Path

import polars as pl
import pytest
from helpers import decompress, read_records, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics_export import Settings, export, open_store
from analytics_export.connections import Sealer
from analytics_export.ingest import ingest_file
from analytics_export.privacy.redaction import PATTERNS, Redactor
from analytics_export.privacy.rules import PrivacyRules, RedactionRule
from analytics_export.store.jobs import JobStore
from analytics_export.store.policies import PrivacyStore

FORMATS = ["json", "json_lines", "csv", "parquet", "avro"]
DETECTORS = ["email", "ipv4", "ipv6", "phone", "credit_card"]
ALL = Redactor([RedactionRule(detector=d) for d in DETECTORS])
WITH_PATTERNS = Redactor([*ALL.rules, RedactionRule(pattern="(?i)^secret"), RedactionRule(pattern=r"\s{2}", action="drop")])


def redact(rules: Redactor, values: list) -> list:
    texts = [json.dumps(v, ensure_ascii=False) for v in values]
    return [json.loads(t) for t in rules.json(pl.Series(texts, dtype=pl.String)).to_list()]


@pytest.mark.parametrize("value, kept", [
    ("write to ada@example.com today", "write to [REDACTED] today"),
    ("josé.müller@bücher.de", "[REDACTED]"),
    ("from 192.168.1.20:8080", "from [REDACTED]:8080"),
    ("999.1.1.1 is no address", "999.1.1.1 is no address"),
    ("v6 2001:db8::8a2e:370:7334 and ::1", "v6 [REDACTED] and [REDACTED]"),
    ("fe80:0:0:0:202:b3ff:fe1e:8329", "[REDACTED]"),
    ("call +44 20 7946 0958", "call [REDACTED]"),
    ("call (555) 123-4567", "call [REDACTED]"),
    ("order 1234567890123", "order 1234567890123"),  # not Luhn-valid, not a phone format
    ("card 4111 1111 1111 1111", "card [REDACTED]"),
    ("card 5500-0000-0000-0004", "card [REDACTED]"),
    ("card 4111 1111 1111 1112", "card 4111 1111 1111 1112"),  # fails Luhn
    ("🚀 ada@example.com 🎉", "🚀 [REDACTED] 🎉"),
    ("line\nada@example.com", "line\n[REDACTED]"),
    ('quote "ada@example.com"', 'quote "[REDACTED]"'),
    ("back\\slash\\ada@example.com", "back\\slash\\[REDACTED]"),
])
def test_each_detector_on_strings(value, kept):
    assert redact(ALL, [{"v": value}]) == [{"v": kept}]
    assert ALL.text(pl.Series([value])).to_list() == [kept]


def test_nested_arrays_keys_and_escapes():
    texts = [
        '{"a":{"b":["x","ada@example.com",{"c":"10.0.0.1"}]},"n":4111111111111111}',
        '{"hidden":"ada\\u0040example.com","pair":"\\ud83d\\ude80 ada@example.com","esc":"\\nada@example.com"}',
        '{"ada@example.com":{"k":1},"lone":"\\udc00 ada@example.com"}',
        '{"number":1e+5551234567,"s":"ok"}',
    ]
    out = [json.loads(t) for t in ALL.json(pl.Series(texts)).to_list()]
    assert out[0] == {"a": {"b": ["x", "[REDACTED]", {"c": "[REDACTED]"}]}, "n": "[REDACTED]"}, "a card stored as a number"
    assert out[1] == {"hidden": "[REDACTED]", "pair": "🚀 [REDACTED]", "esc": "\n[REDACTED]"}
    assert out[2] == {"[REDACTED]": {"k": 1}, "lone": "\ufffd [REDACTED]"}
    assert out[3] == {"number": 1e+5551234567, "s": "ok"}  # only card numbers are looked for in numbers
    assert json.loads(texts[3]) and ALL.json(pl.Series(texts)).to_list()[3] == texts[3], "untouched rows stay byte for byte"


def test_drop_removes_values_and_keys_and_custom_patterns():
    rules = Redactor([RedactionRule(detector="email", action="drop"),
                      RedactionRule(pattern=r"(?i)secret-\d+", mask="***")])
    out = redact(rules, [{"to": "ada@example.com", "list": ["a", "b@c.io"], "ada@example.com": 1,
                          "note": "id SECRET-42 here", "esc": "x\tsecret-7"}])
    assert out == [{"to": None, "list": ["a", None], "note": "id *** here", "esc": "x\t***"}]
    # a pattern that reaches across a quote cannot tear the JSON: that row takes the exact path
    sneaky = Redactor([RedactionRule(pattern='a","b')])
    assert redact(sneaky, [{"x": "a", "b": "c"}]) == [{"x": "a", "b": "c"}]


def test_custom_patterns_see_each_decoded_string():
    rules = Redactor([RedactionRule(pattern=r"^\d{9}$"), RedactionRule(pattern='password: "[^"]*"'),
                      RedactionRule(pattern=r"token\s\w+"), RedactionRule(pattern="(?i)^drop me$", action="drop")])
    value = {"ssn": "123456789", "note": 'password: "hunter2" ok', "t": "token\tabc", "n": 123456789,
             "list": ["drop me", "keep me"], "nested": {"DROP ME": 1, "x": "a\nb"}}
    assert redact(rules, [value]) == [{"ssn": "[REDACTED]", "note": "[REDACTED] ok", "t": "[REDACTED]", "n": 123456789,
                                       "list": [None, "keep me"], "nested": {"x": "a\nb"}}]
    assert rules.text(pl.Series(["123456789", "x token abc"])).to_list() == ["[REDACTED]", "x [REDACTED]"]


def test_a_request_rule_cannot_break_up_what_a_detector_finds():
    policy = PrivacyRules(redact=[RedactionRule(detector="credit_card"), RedactionRule(detector="phone")])
    request = PrivacyRules(redact=[RedactionRule(pattern="-", mask="~~"), RedactionRule(pattern=r"\(", mask="~~")])
    rules = Redactor(policy.stricter(request).redact)
    assert redact(rules, [{"c": "4111-1111-1111-1111", "p": "(555) 123-4567"}]) == [{"c": "[REDACTED]", "p": "[REDACTED]"}]


@pytest.mark.parametrize("value", ["4111 1111 1111 1111 123", "1 4111 1111 1111 1111", "4111 1111 1111 1111 12/25",
                                   "4111-1111-1111-1111-99", "ref 378282246310005 paid"])
def test_a_card_inside_a_longer_run_of_digits_is_found(value):
    [out] = redact(ALL, [{"v": value}])
    assert "4111" not in out["v"] and "3782" not in out["v"], out


def test_digits_inside_a_hex_digest_are_no_card_even_beside_one():
    """A pseudonym (HMAC-SHA256 hex) may hold a Luhn-valid run of 13+ digits between letters: redacting
    it broke the join with the pseudonymised distinct_id whenever the row also held a real card."""
    digest = "a2eb59e93e9899829671862c572cade1ea9c3510e44cec8bf9e39a0d39f87b1e"  # 9899829671862 passes Luhn
    assert redact(ALL, [{"user_id": digest, "note": "card 4111 1111 1111 1111"}]) == \
        [{"user_id": digest, "note": "card [REDACTED]"}]
    assert ALL.text(pl.Series([digest, f"{digest} 4111111111111111"])).to_list() == [digest, f"{digest} [REDACTED]"]


def test_a_column_value_that_only_looks_like_json_is_redacted_as_text():
    rules = Redactor([RedactionRule(detector="email", action="drop")])
    assert rules.values(pl.Series(["[mail ada@example.com now]", '["ada@example.com", 1]', "plain"])).to_list() == \
        [None, "[null, 1]", "plain"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
    | st.sampled_from(["ada@example.com", "10.1.2.3", "+1 555 123 4567", "4111-1111-1111-1111", "::1", "\\", '"',
                       "\u0000", "a\nb@c.de", "Secret  x", "secret", "a  b"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(objects=st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=5), min_size=1, max_size=8),
       ascii_escaped=st.booleans())
def test_fast_path_equals_exact_path_and_leaves_nothing_detectable(objects, ascii_escaped):
    texts = [json.dumps(o, ensure_ascii=ascii_escaped) for o in objects]
    fast = ALL.json(pl.Series(texts, dtype=pl.String)).to_list()
    exact = ALL._exact(texts)
    assert [json.loads(t) for t in WITH_PATTERNS.json(pl.Series(texts, dtype=pl.String)).to_list()] == \
        [json.loads(t) for t in WITH_PATTERNS._exact(texts)], "custom patterns: the vectorised path is the exact one"
    for text, f, e in zip(texts, fast, exact):
        assert json.loads(f) == json.loads(e), text
        leftover = []
        _strings(json.loads(f), leftover)
        found = pl.Series(leftover, dtype=pl.String).str.contains("|".join(
            f"(?:{PATTERNS[d]})" for d in ("email", "ipv4", "ipv6", "phone")))
        assert not found.any(), [s for s, hit in zip(leftover, found) if hit]


def _strings(value, out: list) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            out.append(k)
            _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)
    elif isinstance(value, str):
        out.append(value)


# --- through the pipeline and the job store -------------------------------------------------------

EVENTS = [
    {"event": "signup", "distinct_id": f"user-{i}", "timestamp": f"2026-03-01T00:00:{i:02d}Z",
     "properties": {"email": f"person{i}@example.com", "ssn": f"SSN-{i:04d}-SECRETVALUE", "plan": "PLANVALUE",
                    "note": f"reach me at p{i}@mail.example or 10.0.{i}.1", "user_id": f"user-{i}",
                    "nested": {"cards": ["4111 1111 1111 1111"]}}}
    for i in range(30)
]
counter = itertools.count()


@pytest.fixture()
def project_data(tmp_path: Path):
    def make(project: str = "default") -> Settings:
        data = tmp_path / f"d{next(counter)}"
        settings_ = Settings(data_dir=data, project=project)
        store = open_store(settings_, read_only=False)
        try:
            ingest_file(store, write_jsonl(tmp_path / f"in{next(counter)}.jsonl", EVENTS), project)
        finally:
            store.close()
        return settings_
    return make


def policies(settings_: Settings) -> PrivacyStore:
    jobs = JobStore.for_data_dir(settings_.data_dir)
    jobs.migrate()
    return PrivacyStore(jobs, Sealer(settings_.signing_key()))


POLICY = PrivacyRules(
    deny_properties=["ssn"],
    redact=[RedactionRule(detector="email"), RedactionRule(detector="ipv4"), RedactionRule(detector="credit_card"),
            RedactionRule(properties=["plan"], action="drop")],
    pseudonymize_distinct_id=True, pseudonymize_properties=["user_id"],
)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("selected", [None, ["ssn", "email", "note", "user_id", "plan"]])
def test_denied_and_redacted_values_never_reach_the_bytes(project_data, tmp_path, fmt, selected):
    settings_ = project_data()
    store = policies(settings_)
    version = store.set_policy("default", POLICY)
    store.suppress("default", ["user-3", "user-4"])
    out = tmp_path / f"out.{fmt}"
    result = export(settings=settings_, output=out, format=fmt, start_date="2026-03-01", end_date="2026-03-02",
                    properties=selected, compression="gzip" if fmt in ("json", "csv") else None)
    raw = decompress(out.read_bytes(), "gzip" if fmt in ("json", "csv") else None)
    for secret in (b"SECRETVALUE", b"ssn", b"@example.com", b"@mail.example", b"10.0.", b"4111 1111", b"user-", b"PLANVALUE"):
        assert secret not in raw, (secret, fmt)
    assert result.privacy_policy_version == version
    assert result.dropped_properties == (["ssn"] if selected else [])
    assert result.total_events == 28, "two suppressed users"
    rows = read_records(out, fmt, "gzip" if fmt in ("json", "csv") else None)
    secret = policies(settings_).secret("default")
    pseudonym = hmac.new(secret, b"user-5", hashlib.sha256).hexdigest()
    by_id = {r["distinct_id"]: r for r in rows}
    assert pseudonym in by_id, "distinct_id is HMAC-SHA256 under the project's secret"
    row = by_id[pseudonym]
    props = row["properties"] if "properties" in row else row
    user_id = props["user_id"]
    assert user_id == pseudonym, "a pseudonymised property joins with the pseudonymised distinct_id"
    if selected is None:
        assert "plan" not in props and props["email"] == "[REDACTED]"
        assert props["nested"] == {"cards": ["[REDACTED]"]}
        assert props["note"] == "reach me at [REDACTED] or [REDACTED]"
    else:
        assert props.get("plan") in (None, "") and props["email"] == "[REDACTED]"


def test_pseudonyms_stable_across_exports_and_different_across_projects(project_data, tmp_path):
    a, b = project_data("alpha"), project_data("beta")
    b = Settings(data_dir=a.data_dir, project="beta")  # one job store, one event store, two projects
    store = open_store(b, read_only=False)
    try:
        ingest_file(store, write_jsonl(tmp_path / "beta.jsonl", EVENTS), "beta")
    finally:
        store.close()
    rules = PrivacyRules(pseudonymize_distinct_id=True)
    ids = {}
    for name, s in (("alpha", a), ("beta", b)):
        policies(s).set_policy(name, rules)
        runs = []
        for n in range(2):
            out = tmp_path / f"{name}{n}.jsonl"
            export(settings=s, output=out, format="json_lines", start_date="2026-03-01", end_date="2026-03-02")
            runs.append(sorted(r["distinct_id"] for r in read_records(out, "json_lines", None)))
        assert runs[0] == runs[1], "stable across exports"
        ids[name] = set(runs[0])
    assert len(ids["alpha"]) == 30 and not ids["alpha"] & ids["beta"], "each project has its own secret"


def test_request_rules_add_protection_and_cannot_remove_it(project_data, tmp_path):
    settings_ = project_data()
    policies(settings_).set_policy("default", PrivacyRules(deny_properties=["ssn"]))
    out = tmp_path / "out.jsonl"
    loose = PrivacyRules(allow_properties=["ssn", "plan", "email"], redact=[RedactionRule(detector="email")])
    result = export(settings=settings_, output=out, format="json_lines", start_date="2026-03-01",
                    end_date="2026-03-02", privacy=loose.model_dump())
    props = [r["properties"] for r in read_records(out, "json_lines", None)]
    assert props[0] == {"email": "[REDACTED]", "plan": "PLANVALUE"}, "the request's allow-list cannot let ssn out"
    assert result.privacy_policy_version == 1


@pytest.mark.parametrize("rules", [PrivacyRules(deny_properties=["ssn"]), PrivacyRules(allow_properties=["plan"]),
                                   PrivacyRules(pseudonymize_properties=["ssn"]),
                                   PrivacyRules(redact=[RedactionRule(properties=["ssn"])])])
def test_a_filter_on_a_protected_property_is_refused(project_data, tmp_path, rules):
    from analytics_export.errors import Invalid

    settings_ = project_data()
    policies(settings_).set_policy("default", rules)
    with pytest.raises(Invalid, match="filter on property 'ssn'.*remove the filter"):
        export(settings=settings_, output=tmp_path / "x.jsonl", format="json_lines", start_date="2026-03-01",
               end_date="2026-03-02", filters=[{"property": "ssn", "operator": "is_set"}])
    assert not (tmp_path / "x.jsonl").exists()
    result = export(settings=settings_, output=tmp_path / "y.jsonl", format="json_lines", start_date="2026-03-01",
                    end_date="2026-03-02", filters=[{"property": "plan", "operator": "eq", "value": "PLANVALUE"}])
    assert result.total_events == 30, "a filter on an unprotected property works"


def test_with_detectors_a_text_search_filter_is_refused(project_data, tmp_path):
    from analytics_export.errors import Invalid

    settings_ = project_data()
    policies(settings_).set_policy("default", PrivacyRules(redact=[RedactionRule(detector="email")]))
    for operator, value in (("regex", "^p"), ("contains", "person1"), ("lt", "person2")):
        with pytest.raises(Invalid, match="spell a redacted value out"):
            export(settings=settings_, output=tmp_path / "x.jsonl", format="json_lines", start_date="2026-03-01",
                   end_date="2026-03-02", filters=[{"property": "email", "operator": operator, "value": value}])
    result = export(settings=settings_, output=tmp_path / "y.jsonl", format="json_lines", start_date="2026-03-01",
                    end_date="2026-03-02", filters=[{"property": "email", "operator": "eq", "value": "person1@example.com"}])
    assert result.total_events == 1


def test_a_property_named_like_a_fixed_column_stays_apart():
    from datetime import datetime, timezone

    import pyarrow as pa

    from analytics_export.privacy.policy import Privacy
    from analytics_export.sources import EventQuery

    query = EventQuery(project="p", start=datetime(2026, 1, 1, tzinfo=timezone.utc),
                       end=datetime(2026, 2, 1, tzinfo=timezone.utc), properties=("event", "distinct_id"),
                       property_columns=True)
    fields = [pa.field("event", pa.string()), pa.field("distinct_id", pa.string()), pa.field("timestamp", pa.string()),
              pa.field("event", pa.string()), pa.field("distinct_id", pa.string())]
    batch = pa.RecordBatch.from_arrays([pa.array([x]) for x in ("signup", "u1", "t", "ada@example.com", "p2")],
                                       schema=pa.schema(fields))
    [out] = Privacy(PrivacyRules(redact=[RedactionRule(detector="email")])).apply([batch], query)
    assert [c[0].as_py() for c in out.columns] == ["signup", "u1", "t", "[REDACTED]", "p2"]
