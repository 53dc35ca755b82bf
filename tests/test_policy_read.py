"""The privacy read from a SQLite job store with sqlite3 (`store/policy_read.py`) is the privacy the job
store's own modules read, or None where only they can give it."""

from __future__ import annotations

import sqlite3

import pytest

from analytics_export.connections import Sealer
from analytics_export.models import ExportRequest
from analytics_export.privacy.rules import PrivacyRules
from analytics_export.store.jobs import JobStore
from analytics_export.store.policies import PrivacyStore
from analytics_export.store.policy_read import sqlite_privacy

SEALER = Sealer(b"k" * 32)
REQUEST = ExportRequest(format="json", start_date="2026-10-01", end_date="2026-10-02",
                        privacy={"deny_properties": ["email"]})


@pytest.fixture()
def store(tmp_path):
    jobs = JobStore.for_data_dir(tmp_path)
    jobs.migrate()
    yield PrivacyStore(jobs, SEALER), tmp_path / "jobs.sqlite"
    jobs.engine.dispose()


def same(a, b) -> None:
    assert (a.rules, a.version, a.secret, a.suppressed) == (b.rules, b.version, b.secret, b.suppressed)


def test_it_reads_what_the_job_store_reads(store):
    policies, path = store
    for project in ("web", "app"):
        policies.set_policy(project, PrivacyRules(deny_properties=["price"], pseudonymize_distinct_id=True))
        policies.set_policy(project, PrivacyRules(pseudonymize_distinct_id=True, pseudonymize_properties=["ip"],
                                                  redact=[{"properties": ["q"], "action": "mask", "mask": "*"}]))
        policies.suppress(project, [f"{project}-b", f"{project}-a"])
    policies.set_policy("plain", PrivacyRules(deny_properties=["price"]))
    for project in ("web", "app", "plain", "none"):
        full = policies.for_export(project, REQUEST)
        quick = sqlite_privacy(path, project, REQUEST.privacy, SEALER.open)
        same(quick, full)
    assert quick.version is None and quick.rules.deny_properties == ["email"], "no policy: the request's rules"
    assert sqlite_privacy(path, "web", REQUEST.privacy, SEALER.open).suppressed == ["web-a", "web-b"]


def test_what_it_cannot_read_goes_the_full_way(store, tmp_path):
    policies, path = store
    policies.set_policy("web", PrivacyRules(pseudonymize_distinct_id=True))
    assert sqlite_privacy(path, "web", None, SEALER.open) is None, "the secret is made the full way"
    policies.secret("web")
    assert sqlite_privacy(path, "web", None, SEALER.open).secret == policies.secret("web")
    with sqlite3.connect(path) as con:
        con.execute("UPDATE alembic_version SET version_num = '0001'")
    assert sqlite_privacy(path, "web", None, SEALER.open) is None, "a schema behind HEAD is migrated first"
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).close()
    assert sqlite_privacy(other, "web", None, SEALER.open) is None
    assert sqlite_privacy(tmp_path / "missing.sqlite", "web", None, SEALER.open) is None
