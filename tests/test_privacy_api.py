"""The privacy API end to end through a real uvicorn server: the versioned policy, the suppression
list, tenant isolation, and an export run under a policy."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from conftest import with_demo_events
from service import wait_for

# The demo events lie in 2026-08..2026-11; the events these tests ingest lie in March 2025, so an
# export of this window holds exactly them.
WINDOW = {"start_date": "2025-03-01", "end_date": "2025-04-01"}
USERS = [f"cust-{i:02d}" for i in range(10)]
EVENTS_PER_USER = 2
SUPPRESSED = "cust-03"
HEX64 = re.compile(r"[0-9a-f]{64}")

POLICY_A = {"deny_properties": ["ssn", "tax_id"], "pseudonymize_distinct_id": True}
POLICY_B = {"allow_properties": ["plan", "email"],
            "redact": [{"detector": "email", "action": "mask", "mask": "***"},
                       {"properties": ["plan"], "action": "drop"}],
            "pseudonymize_properties": ["user_id"]}
EMPTY_RULES = {"deny_properties": [], "allow_properties": None, "redact": [], "pseudonymize_distinct_id": False,
               "pseudonymize_properties": []}


def full_rules(rules: dict) -> dict:
    """`rules` as the API echoes them: every field, redaction rules with their defaults."""
    redact = [{"properties": [], "detector": None, "pattern": None, "action": "mask", "mask": "[REDACTED]", **r}
              for r in rules.get("redact", [])]
    return {**EMPTY_RULES, **rules, "redact": redact}


def email(user: str) -> str:
    return f"{user.replace('-', '.')}@example.com"


def ssn(user: str, n: int) -> str:
    return f"123-45-{int(user[-2:]) * 10 + n:04d}"


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory):
    return make_service(with_demo_events(tmp_path_factory.mktemp("privacy-svc"), 2_000), 1,
                        projects=("default", "other", "lifecycle", "checks", "lists"))


def test_policy_lifecycle_is_versioned(service):
    with service.client(service.keys["lifecycle"]) as c:
        path = "/api/projects/lifecycle/privacy"
        before = c.get(path)
        assert before.status_code == 200, before.text
        assert before.json() == {"project": "lifecycle", "version": 0, "updated_at": None, "rules": EMPTY_RULES,
                                 "suppressed_users": 0}

        first = c.put(path, json=POLICY_A)
        assert first.status_code == 200, first.text
        assert first.json()["version"] == 1 and first.json()["rules"] == full_rules(POLICY_A)
        assert first.json()["project"] == "lifecycle" and first.json()["updated_at"] is not None

        second = c.put(path, json=POLICY_B)
        assert second.status_code == 200, second.text
        assert second.json()["version"] == 2 and second.json()["rules"] == full_rules(POLICY_B)
        assert c.get(path).json() == second.json(), "GET shows the current version"

        old = c.get(path, params={"version": 1})
        assert old.status_code == 200, old.text
        assert old.json()["version"] == 1 and old.json()["rules"] == full_rules(POLICY_A)
        assert old.json()["updated_at"] == first.json()["updated_at"]

        cleared = c.delete(path)
        assert cleared.status_code == 200, cleared.text
        assert cleared.json()["version"] == 3 and cleared.json()["rules"] == EMPTY_RULES
        assert c.get(path).json()["version"] == 3
        assert c.get(path, params={"version": 2}).json()["rules"] == full_rules(POLICY_B), "kept for audit"

        missing = c.get(path, params={"version": 99})
        assert missing.status_code == 404 and "version 99" in missing.json()["detail"], missing.text
        assert c.get(path, params={"version": 0}).status_code == 422


@pytest.mark.parametrize("body, where", [
    ({"deny_properties": ["ssn"], "deny_propertys": ["x"]}, "deny_propertys: Extra inputs are not permitted"),
    ({"redact": [{"detector": "email", "pattern": "@"}]},
     "redact.0: a redaction rule names exactly one of `properties`, `detector` or `pattern`"),
    ({"redact": [{"action": "mask"}]},
     "redact.0: a redaction rule names exactly one of `properties`, `detector` or `pattern`"),
    ({"redact": [{"pattern": "(?<=a)b"}]}, "pattern '(?<=a)b' is not a valid regular expression"),
    ({"redact": [{"pattern": "(?<=a)b"}]}, "look-around, including look-ahead and look-behind, is not supported"),
    ({"redact": [{"pattern": "a*"}]}, "pattern 'a*' matches the empty string"),
    ({"redact": [{"pattern": "a(b"}]}, "redact.0: pattern 'a(b' is not a valid regular expression"),
    ({"redact": [{"properties": ["email"], "mask": 'x"y'}]}, "redact.0.mask: mask must not contain quotes"),
    ({"redact": [{"properties": ["email"], "mask": "123"}]}, "redact.0.mask: mask must not contain quotes"),
    ({"redact": [{"detector": "passport"}]}, "redact.0.detector: Input should be 'email', 'ipv4'"),
    ({"redact": [{"properties": ["email"], "action": "hash"}]}, "redact.0.action: Input should be 'mask' or 'drop'"),
    ({"deny_properties": ["x'); drop"]}, "deny_properties: property name \"x'); drop\" is not a plain key"),
    ({"pseudonymize_properties": "email"}, "pseudonymize_properties: Input should be a valid list"),
    ([], "Input should be a valid dictionary"),
])
def test_bad_policies_are_422_saying_what_is_wrong(service, body, where):
    with service.client(service.keys["checks"]) as c:
        r = c.put("/api/projects/checks/privacy", json=body)
        assert r.status_code == 422, r.text
        assert where in r.json()["detail"], r.text
        assert c.get("/api/projects/checks/privacy").json()["version"] == 0, "a refused policy is no version"


def test_bad_policy_json_is_422(service):
    with service.client(service.keys["checks"]) as c:
        r = c.put("/api/projects/checks/privacy", content=b'{"deny_properties": [', headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text


def test_a_key_only_reaches_its_own_project(service):
    with service.client(service.keys["other"]) as b, service.client(service.keys["default"]) as a:
        before = a.get("/api/projects/default/privacy").json()
        listed = a.get("/api/projects/default/suppressions").json()
        calls = [("GET", "/privacy", {}), ("GET", "/privacy?version=1", {}), ("PUT", "/privacy", {"json": POLICY_A}),
                 ("DELETE", "/privacy", {}), ("GET", "/suppressions", {}),
                 ("POST", "/suppressions", {"json": {"distinct_ids": ["intruder"]}}),
                 ("POST", "/suppressions", {"content": b"intruder\n", "headers": {"content-type": "text/plain"}}),
                 ("DELETE", f"/suppressions/{SUPPRESSED}", {})]
        for method, path, kwargs in calls:
            r = b.request(method, f"/api/projects/default{path}", **kwargs)
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["detail"] == "this API key belongs to project 'other', not 'default'"
        assert a.get("/api/projects/default/privacy").json() == before, "nothing changed"
        assert a.get("/api/projects/default/suppressions").json() == listed
    with service.client(None) as anonymous:
        assert anonymous.get("/api/projects/default/privacy").status_code == 401
        assert anonymous.post("/api/projects/default/suppressions", json={"distinct_ids": ["x"]}).status_code == 401


def test_suppression_list_uploads_paging_and_removal(service):
    path = "/api/projects/lists/suppressions"
    with service.client(service.keys["lists"]) as c:
        assert c.get(path).json() == {"items": [], "total": 0, "limit": 1000, "offset": 0}

        first = c.post(path, json={"distinct_ids": ["u3", "u1", "u2", "u1"]})
        assert first.status_code == 200, first.text
        assert first.json() == {"added": 3, "total": 3}

        text = "u2\r\nu4\n\n  u5  \nu4\nu1\n"
        second = c.post(path, content=text.encode(), headers={"content-type": "text/plain; charset=utf-8"})
        assert second.status_code == 200, second.text
        assert second.json() == {"added": 2, "total": 5}, "u1, u2 were listed; u4 came twice"
        again = c.post(path, json={"distinct_ids": ["u5"]})
        assert again.json() == {"added": 0, "total": 5}

        page1 = c.get(path, params={"limit": 2, "offset": 0}).json()
        assert page1 == {"items": ["u1", "u2"], "total": 5, "limit": 2, "offset": 0}
        page2 = c.get(path, params={"limit": 2, "offset": 2}).json()
        assert page2["items"] == ["u3", "u4"]
        page3 = c.get(path, params={"limit": 2, "offset": 4}).json()
        assert page3["items"] == ["u5"]
        assert c.get(path, params={"limit": 2, "offset": 6}).json()["items"] == []
        assert c.get("/api/projects/lists/privacy").json()["suppressed_users"] == 5

        assert c.delete(f"{path}/u3").status_code == 204
        gone = c.delete(f"{path}/u3")
        assert gone.status_code == 404 and "'u3' is not on the suppression list" in gone.json()["detail"], gone.text
        assert c.get(path).json()["items"] == ["u1", "u2", "u4", "u5"]
        assert c.get(path).json()["total"] == 4

        wrong = c.post(path, content=b"<ids/>", headers={"content-type": "application/xml"})
        assert wrong.status_code == 415, wrong.text
        assert "text/plain" in wrong.json()["detail"]
        empty = c.post(path, content=b"\n  \n", headers={"content-type": "text/plain"})
        assert empty.status_code == 422 and "no distinct_id" in empty.json()["detail"], empty.text
        none = c.post(path, json={"distinct_ids": []})
        assert none.status_code == 422 and "distinct_ids" in none.json()["detail"], none.text
        blank = c.post(path, json={"distinct_ids": [""]})
        assert blank.status_code == 422 and "distinct_ids.0" in blank.json()["detail"], blank.text
        extra = c.post(path, json={"distinct_ids": ["u9"], "ids": ["u9"]})
        assert extra.status_code == 422 and "ids: Extra inputs are not permitted" in extra.json()["detail"], extra.text
        broken = c.post(path, content=b'{"distinct_ids": [', headers={"content-type": "application/json"})
        assert broken.status_code == 422, broken.text
        assert c.get(path).json()["total"] == 4, "refused uploads add nothing"
        assert c.get(path, params={"limit": 0}).status_code == 422


def test_an_export_applies_the_policy(service):
    events = [{"event": "purchase", "distinct_id": user, "timestamp": f"2025-03-{10 + n:02d}T12:00:00Z",
               "properties": {"email": email(user), "ssn": ssn(user, n), "user_id": int(user[-2:]), "plan": "pro"}}
              for user in USERS for n in range(EVENTS_PER_USER)]
    policy = {"deny_properties": ["ssn"], "redact": [{"detector": "email"}], "pseudonymize_distinct_id": True}
    body = {**WINDOW, "format": "json_lines", "events": ["purchase"], "properties": ["ssn", "email"]}
    with service.client(service.keys["default"]) as c:
        ingested = c.post("/api/events", json=events)
        assert ingested.status_code == 200 and ingested.json() == {"ingested": len(events)}, ingested.text

        plain = wait_for(c, c.post("/api/exports", json=body).json()["id"])
        assert plain["result"]["total_events"] == len(events)
        assert plain["result"]["privacy_policy_version"] is None and plain["result"]["dropped_properties"] == []

        put = c.put("/api/projects/default/privacy", json=policy)
        assert put.status_code == 200, put.text
        version = put.json()["version"]
        assert version >= 1
        added = c.post("/api/projects/default/suppressions", json={"distinct_ids": [SUPPRESSED]})
        assert added.status_code == 200 and added.json()["added"] == 1, added.text

        created = c.post("/api/exports", json=body)
        assert created.status_code == 202, created.text
        export_id = created.json()["id"]
        done = wait_for(c, export_id)
        result = done["result"]
        assert result["privacy_policy_version"] == version
        assert result["dropped_properties"] == ["ssn"]
        assert result["total_events"] == len(events) - EVENTS_PER_USER, "the suppressed user's events are out"

        got = c.get(f"/api/exports/{export_id}/download")
        assert got.status_code == 200, got.text
        raw = got.content
        assert len(raw) == result["file_size"]
        for user in USERS:
            assert user.encode() not in raw, f"raw distinct_id {user} leaked"
            assert email(user).encode() not in raw
            for n in range(EVENTS_PER_USER):
                assert ssn(user, n).encode() not in raw
        assert b"@example.com" not in raw and b"ssn" not in raw and b"123-45-" not in raw

        rows = [json.loads(line) for line in raw.decode().splitlines()]
        assert len(rows) == len(events) - EVENTS_PER_USER == result["total_events"]
        assert all(HEX64.fullmatch(r["distinct_id"]) for r in rows), rows[0]
        per_user = Counter(r["distinct_id"] for r in rows)
        assert len(per_user) == len(USERS) - 1 and set(per_user.values()) == {EVENTS_PER_USER}, \
            "one stable pseudonym per remaining user"
        assert all(r["properties"] == {"email": "[REDACTED]"} for r in rows), rows[0]
        assert {r["event"] for r in rows} == {"purchase"}

        # the pseudonyms are stable across exports of the same policy
        again = wait_for(c, c.post("/api/exports", json=body).json()["id"])
        raw_again = c.get(f"/api/exports/{again['id']}/download").content
        assert Counter(json.loads(line)["distinct_id"] for line in raw_again.decode().splitlines()) == per_user

        refused = c.post("/api/exports", json={**body, "filters": [{"property": "ssn", "operator": "eq",
                                                                    "value": ssn(USERS[0], 0)}]})
        assert refused.status_code == 422, refused.text
        assert "'ssn'" in refused.json()["detail"] and f"version {version}" in refused.json()["detail"], refused.text

        only_denied = c.post("/api/exports", json={**body, "properties": ["ssn"]})
        assert only_denied.status_code == 422 and "ssn" in only_denied.json()["detail"], only_denied.text
