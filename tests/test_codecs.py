"""Which codecs each format offers (test_interop.py proves the readers people use read every offered
one whole): every other is refused with a 422 (API) or exit status 2 (CLI) that names what is
offered; and an export, schedule or stream saved before the rule still lists, then fails or pauses
with that reason when it runs."""

from __future__ import annotations

import subprocess
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from helpers import OFFERED
from service import CLI, Service, create_key
from support import in_process

from analytics_export import Settings
from analytics_export.checks import STORED
from analytics_export.enums import ExportStatus
from analytics_export.models import ExportRequest, ScheduledExport
from analytics_export.runtime.scheduler import Scheduler, Schedules
from analytics_export.runtime.stream_runner import LEASE, StreamRun
from analytics_export.runtime.worker import Worker
from analytics_export.store.jobs import JobStore
from analytics_export.store.streams import StreamStore
from analytics_export.store.tables import exports, schedules, streams
from analytics_export.streaming.spec import StreamSpec

pytestmark = pytest.mark.server  # the service and the CLI

REFUSED = [(f, c) for f in OFFERED for c in ("gzip", "zstd", "snappy", "lz4") if c not in OFFERED[f]]
WINDOW = {"start_date": "2026-10-01", "end_date": "2026-10-08"}
HOOK = {"type": "webhook", "url": "http://127.0.0.1:9/nobody-listens"}


def refusal(fmt: str, codec: str) -> str:
    """The start of the message refusing `codec` for `fmt`: it names the format and what it offers."""
    names = OFFERED[fmt]
    return f"{codec} is not offered for {fmt}: use {', '.join(names[:-1])} or {names[-1]}"


@pytest.fixture(scope="module")
def service(make_service, demo_settings, tmp_path_factory):
    return make_service(tmp_path_factory.mktemp("codecs"), 0, {"ANALYTICS_EXPORT_EVENTS_URL": str(demo_settings.events_path)})


def test_the_api_lists_and_accepts_the_offered_codecs_and_refuses_the_rest_with_a_422(service):
    with service.client(service.key) as c:
        listed = c.get("/api/formats")
        assert listed.status_code == 200
        assert {f["format"]: f["codecs"] for f in listed.json()["items"]} == OFFERED
        for fmt, codecs in OFFERED.items():
            for codec in [None, *codecs]:
                preview = c.post("/api/exports/preview", json={**WINDOW, "format": fmt, "compression": codec})
                assert preview.status_code == 200, (fmt, codec, preview.text)
        for fmt, codec in REFUSED:
            bodies = {
                "/api/exports": {**WINDOW, "format": fmt, "compression": codec},
                "/api/exports/preview": {**WINDOW, "format": fmt, "compression": codec},
                "/api/schedules": {"name": "s", "schedule": "0 2 * * *", "format": fmt, "compression": codec},
                "/api/streams": {"name": "s", "destination": HOOK, "format": fmt, "compression": codec},
            }
            for path, body in bodies.items():
                refused = c.post(path, json=body)
                assert refused.status_code == 422, (path, refused.text)
                assert refusal(fmt, codec) in refused.json()["detail"], (path, refused.text)
        assert c.get("/api/exports").json()["total"] == 0, "nothing refused was queued"
        assert c.get("/api/schedules").json()["total"] == 0 and c.get("/api/streams").json()["total"] == 0


@pytest.mark.parametrize("fmt,codec", REFUSED)
def test_the_cli_refuses_an_unoffered_codec_with_one_line_and_status_2(tmp_path, fmt, codec):
    done = subprocess.run([*CLI, "--data-dir", str(tmp_path), "export", "--format", fmt, "--compression", codec,
                           "--start", "2026-10-01", "--end", "2026-10-02"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and refusal(fmt, codec) in done.stderr, done.stderr
    assert not list(tmp_path.rglob("export_*")), "nothing was written"


def test_rows_saved_before_the_rule_still_list_and_fail_or_pause_with_the_reason(demo_settings, tmp_path):
    settings = Settings(data_dir=tmp_path, events_url=str(demo_settings.events_path))
    jobs = JobStore.for_data_dir(tmp_path)
    jobs.migrate()
    t = datetime(2026, 10, 1, tzinfo=timezone.utc)
    old_export = ExportRequest.model_validate({**WINDOW, "format": "csv", "compression": "snappy"}, context=STORED)
    jobs.create("default", old_export, 100)
    schedule = ScheduledExport(name="old", schedule="0 * * * *", date_range="since_last_run", format="json")
    Schedules(jobs).create("default", schedule, t)
    stream = StreamStore(jobs).create("default", StreamSpec(name="old", destination=HOOK, format="json_lines"))
    with jobs.engine.begin() as db:  # as a release that offered every codec for every format saved them
        db.execute(schedules.update().where(schedules.c.id == schedule.id).values(
            spec={**schedule.model_dump(mode="json"), "compression": "lz4"}))
        db.execute(streams.update().where(streams.c.id == stream.id).values(
            spec={**stream.spec.model_dump(mode="json"), "compression": "snappy"}))

    key = create_key(tmp_path, "default")
    svc = Service(tmp_path, 0, {"ANALYTICS_EXPORT_EVENTS_URL": str(demo_settings.events_path)})
    try:
        with svc.client(key) as c:
            for path in ("/api/exports", "/api/schedules", "/api/streams"):
                listed = c.get(path)
                assert listed.status_code == 200 and listed.json()["total"] == 1, listed.text
            assert c.get(f"/api/schedules/{schedule.id}").status_code == 200
            assert c.get(f"/api/streams/{stream.id}").status_code == 200
            kept = c.patch(f"/api/schedules/{schedule.id}", json={"name": "renamed"})
            assert kept.status_code == 422 and refusal("json", "lz4") in kept.json()["detail"]
    finally:
        svc.close()

    worker = Worker(in_process(settings), jobs)
    assert worker.run_one()
    failed = jobs.get("default", old_export.id)
    assert failed.status is ExportStatus.FAILED and refusal("csv", "snappy") in failed.error, failed.error
    assert failed.attempts == 1, "a refused codec is not retried"
    assert not list(tmp_path.rglob("export_*.csv*")), "nothing was written"

    assert Scheduler(jobs, "s", clock=lambda: t + timedelta(hours=2)).tick() == 0
    view = Schedules(jobs).get("default", schedule.id)
    assert view["status"] == "paused" and refusal("json", "lz4") in view["paused_reason"], view
    with jobs.engine.connect() as db:
        assert db.execute(sa.select(sa.func.count()).select_from(exports)).scalar_one() == 1, "no run was queued"

    store = StreamStore(jobs)
    claimed, = store.claim("w", LEASE, 1)
    StreamRun(settings, jobs, claimed, "w", threading.Event(), 0.5).run()
    after = store.get("default", stream.id)
    assert after.status == "failing" and refusal("json_lines", "snappy") in after.last_error, after
