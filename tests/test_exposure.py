"""What the service shows to whoever asks: /metrics behind a token, API errors without server paths,
and /docs served from the service itself (it renders on a machine without internet)."""

from __future__ import annotations

import pytest

from analytics_export import Settings
from service import Service, cli

TOKEN = "metrics-token-for-tests"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("exposure")
    svc = Service(data, 0, {"ANALYTICS_EXPORT_METRICS_TOKEN": TOKEN,
                            "ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]'})
    svc.data = data
    svc.key = cli(data, "keys", "create", "--project", "tenant-a")
    yield svc
    svc.close()


def test_metrics_need_the_token_which_shows_streams(service):
    with service.client(service.key) as c:
        stream = c.post("/api/streams", json={"name": "metered", "destination": {
            "type": "webhook", "url": "http://127.0.0.1:9/nobody-listens"}})
        assert stream.status_code == 201, stream.text
        stream_id = stream.json()["stream"]["id"]
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
