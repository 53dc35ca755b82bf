"""API keys: listed without their secret, revoked from the CLI or the API (the caller's project only),
and refused by every API process within seconds of a revoke."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from service import CLI, Service, cli

from analytics_export.store.jobs import KEY_CACHE_SECONDS, MIGRATIONS, JobStore


def keys(data: Path, *args: str) -> list[dict]:
    return [json.loads(line) for line in cli(data, "keys", "list", *args).splitlines()]


def fresh_requests(url: str, key: str, n: int = 16) -> list[int]:
    """`n` requests, each on a new connection, so both API processes answer some of them."""
    codes = []
    for _ in range(n):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            codes.append(c.get("/api/exports").status_code)
    return codes


def refused_within(url: str, seconds: float, *keys: str) -> None:
    """Every API process refuses each of `keys` (401 on each of a round of fresh connections) within `seconds`."""
    deadline = time.monotonic() + seconds
    while (codes := {c for key in keys for c in fresh_requests(url, key)}) != {401}:
        assert time.monotonic() < deadline, f"still answered {codes} after {seconds} s"
        time.sleep(0.2)


@pytest.mark.server
def test_cli_lists_keys_without_their_secret_and_revokes(tmp_path):
    first = cli(tmp_path, "keys", "create", "--project", "p")
    second = cli(tmp_path, "keys", "create", "--project", "q")
    listed = keys(tmp_path)
    assert [(k["project"], k["prefix"]) for k in listed] == [("p", first[:8]), ("q", second[:8])]
    assert set(listed[0]) == {"id", "prefix", "project", "created_at", "last_used_at", "revoked_at"}
    text = cli(tmp_path, "keys", "list")
    for secret in (first, second, hashlib.sha256(first.encode()).hexdigest()):
        assert secret not in text
    assert [k["project"] for k in keys(tmp_path, "--project", "q")] == ["q"]
    revoked = json.loads(cli(tmp_path, "keys", "revoke", listed[1]["id"]))
    assert revoked["revoked_at"] and revoked["id"] == listed[1]["id"]
    assert [bool(k["revoked_at"]) for k in keys(tmp_path)] == [False, True]
    unknown = subprocess.run([*CLI, "--data-dir", str(tmp_path), "keys", "revoke", "nope"], capture_output=True,
                             text=True, timeout=120)
    assert unknown.returncode == 2 and "no key nope" in unknown.stderr


def test_keys_made_before_ids_get_one_and_keep_working(tmp_path):
    jobs = JobStore.for_data_dir(tmp_path)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with jobs.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0010")
        connection.execute(sa.text("INSERT INTO api_keys (key_hash, project, created_at) VALUES "
                                   "(:h, 'old', '2026-01-01 00:00:00')"), {"h": hashlib.sha256(b"aek_old").hexdigest()})
    jobs.migrate()
    [key] = jobs.list_keys(None)
    assert key.id and key.prefix is None and key.project == "old"
    assert jobs.project_for_key("aek_old") == "old"


@pytest.mark.server
def test_a_revoke_reaches_every_api_process_within_seconds(tmp_path):
    jobs = JobStore.for_data_dir(tmp_path)
    jobs.migrate()
    own, spare, other = (jobs.create_key(p) for p in ("p", "p", "q"))
    svc = Service(tmp_path, 0, None, "--api-processes", "2")
    try:
        assert set(fresh_requests(svc.url, own)) == {200}
        assert set(fresh_requests(svc.url, spare)) == {200}, "both processes now trust both keys"
        with svc.client(own) as c:
            listed = c.get("/api/keys").json()
            assert [k["project"] for k in listed] == ["p", "p"], "only the caller's project's keys"
            assert own not in json.dumps(listed) and hashlib.sha256(own.encode()).hexdigest() not in json.dumps(listed)
            own_id, spare_id = (next(k["id"] for k in listed if k["prefix"] == key[:8]) for key in (own, spare))
            other_id = next(k.id for k in jobs.list_keys("q"))
            refused = c.delete(f"/api/keys/{other_id}")
            assert refused.status_code == 404 and other_id in refused.json()["detail"]
            assert c.delete("/api/keys/nope").status_code == 404
            assert c.delete(f"/api/keys/{spare_id}").status_code == 204
            assert c.delete(f"/api/keys/{spare_id}").status_code == 204, "revoking twice is harmless"
        refused_within(svc.url, KEY_CACHE_SECONDS + 1, spare)  # what any process trusted has aged out
        assert set(fresh_requests(svc.url, other)) == {200}, "another project's key is untouched"
        with svc.client(own) as c:
            assert c.delete(f"/api/keys/{own_id}").status_code == 204, "a key may revoke itself"
        jobs.revoke_key(other_id, None)  # as `keys revoke` does, from another process
        refused_within(svc.url, KEY_CACHE_SECONDS + 1, own, other)  # `other`: a revoke from outside the API
        used = {k.id: k.last_used_at for k in jobs.list_keys(None)}
        assert used[own_id] and used[other_id], "last use is recorded"
    finally:
        svc.close()
