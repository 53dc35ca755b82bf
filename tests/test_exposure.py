"""What the service shows to whoever asks: /metrics behind a token, API errors without server paths,
and /docs served from the service itself (it renders on a machine without internet)."""

from __future__ import annotations

import re

import pytest

from analytics_export import Settings
from helpers import ARGS, CHROMIUM
from service import create_idle_stream

TOKEN = "metrics-token-for-tests"


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory):
    return make_service(tmp_path_factory.mktemp("exposure"), 0, {"ANALYTICS_EXPORT_METRICS_TOKEN": TOKEN,
                                                                 "ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]'},
                        projects=("tenant-a",))


def test_metrics_need_the_token_which_shows_streams(service):
    with service.client(service.key) as c:
        stream_id = create_idle_stream(c, "metered")
        assert c.get("/metrics").status_code == 401, "an API key is not the metrics token"
    with service.client(None) as anonymous:
        refused = anonymous.get("/metrics")
        assert refused.status_code == 401 and "ANALYTICS_EXPORT_METRICS_TOKEN" in refused.json()["detail"]
        assert stream_id not in refused.text
    with service.client(TOKEN + "x") as wrong:
        assert wrong.get("/metrics").status_code == 401
    with service.client(TOKEN) as metrics:
        shown = metrics.get("/metrics")
        assert shown.status_code == 200 and 'analytics_export_exports{status="completed"}' in shown.text
        assert f'analytics_export_stream_lag_seconds{{project="tenant-a",stream="{stream_id}"}}' in shown.text


@pytest.mark.parametrize("kind, body", [
    ("application/json", b"{not json"),
    ("application/x-ndjson", b"\xff\xfe{}"),
    ("application/json", b"[1, 2]"),
    ("application/json", b'[{"event": "x"}]'),
    ("application/json", b""),
    ("application/x-ndjson", b'{"event": "x", "distinct_id": "a", "timestamp": "nope"}\n'),
    ("application/json", b'[{"event": "x", "distinct_id": "a", "timestamp": "2026-01-01", "uuid": "zz"}]'),
    ("application/json", b'[{"event": "x", "distinct_id": "a", "timestamp": "2026-01-01", "properties": 5}]'),
    ("application/x-ndjson", b'{"event": "x", "distinct_id": "a", "timestamp": "2026-01-01"}\n{"event": "x",'),
])
def test_ingest_errors_name_the_body_never_a_server_path(service, kind, body):
    with service.client(service.key) as c:
        r = c.post("/api/events", content=body, headers={"content-type": kind})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("body: ")
    for leak in (str(service.data), str(service.data.resolve()), "inbox", "/tmp"):
        assert leak not in r.text, r.text


def test_store_errors_answer_with_data_dir_not_its_path(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    message = f"cannot open event store {settings.events_path.absolute()} is busy"
    assert settings.hide_paths(message) == "cannot open event store DATA_DIR/events.duckdb is busy"


def test_docs_reference_only_local_files_which_answer(service):
    with service.client(None) as c:
        page = c.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
        assert len(urls) >= 4 and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        for url in urls:
            assert c.get(url).status_code == 200, url
        assert c.get("/docs/assets/index.html").status_code == 404, "only the files the page loads"
        assert c.get("/redoc").status_code == 404, "ReDoc would load from a CDN"


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not at /usr/bin/chromium")
def test_docs_render_in_chromium_with_no_request_leaving_the_machine(service):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            tab = browser.new_page()
            requests: list[str] = []
            problems: list[str] = []
            tab.on("request", lambda r: requests.append(r.url))
            tab.on("pageerror", lambda exc: problems.append(str(exc)))
            tab.on("console", lambda msg: msg.type == "error" and problems.append(msg.text))
            tab.goto(f"{service.url}/docs")
            expect(tab.locator(".opblock-summary-path", has_text="/api/exports/{export_id}/download").first) \
                .to_be_visible(timeout=30_000)
            outside = [u for u in requests if not u.startswith(service.url) and not u.startswith("data:")]
            assert not outside and not problems, (outside, problems)
        finally:
            browser.close()
