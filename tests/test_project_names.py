"""A key stored for a project name that is no longer accepted (made before names were checked) opens
nothing: its project would name folders outside the data dir."""

from __future__ import annotations

import pytest
from service import Service

from analytics_export.store.jobs import JobStore, hash_key, now
from analytics_export.store.tables import api_keys

pytestmark = pytest.mark.server  # the service


def test_a_key_for_an_unchecked_project_is_refused(tmp_path):
    data = tmp_path / "data"
    jobs = JobStore.for_data_dir(data)
    jobs.migrate()
    good = jobs.create_key("default")
    with jobs.engine.begin() as c:  # as `keys create --project ../../../tmp/x` stored it before
        c.execute(api_keys.insert().values(key_hash=hash_key("aek_old"), id="old0key0", project="../../../tmp/x", created_at=now()))
    jobs.engine.dispose()
    svc = Service(data, 0)
    try:
        body = {"start_date": "2026-01-01", "end_date": "2026-01-02", "format": "json"}
        with svc.client("aek_old") as client:
            for answer in (client.post("/api/exports", json=body), client.get("/api/exports")):
                assert answer.status_code == 403, answer.text
                assert "is not a valid project name" in answer.json()["detail"]
        with svc.client(good) as client:
            assert client.get("/api/exports").status_code == 200
    finally:
        svc.close()
    assert not (tmp_path / "tmp").exists()
