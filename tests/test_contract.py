"""The seed's API contract against the real service: the seed's exact request answers 202 with an
ExportRequest body, `properties: []` means all and `jsonl` means json_lines wherever a format is
taken, and a client generated from the served /openapi.json by openapi-python-client runs an export."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from analytics_export import Settings
from conftest import expected, stored_rows, with_demo_events
from helpers import canonical, read_records
from service import Service, create_key, wait_for

pytestmark = pytest.mark.server  # the service

START, END = datetime(2026, 8, 1, tzinfo=timezone.utc), datetime(2026, 11, 1, tzinfo=timezone.utc)
GENERATOR = "openapi-python-client"
GENERATOR_WARNINGS = {("POST /api/events", "Unsupported content type application/x-ndjson"),
                      ("POST /api/projects/{project}/suppressions", "Unsupported content type text/plain")}
"""What openapi-python-client 0.29 cannot generate: request bodies other than JSON, form or binary. The
routes are generated with their JSON body; any other warning is a defect in our schema."""


class SeedFilter(BaseModel):
    property: str
    operator: str
    value: bool | int | float | str | list[bool | int | float | str] | None


class SeedExportRequest(BaseModel):
    """The seed's ExportRequest (its first commit's models.py), every field required: what a client
    written from the seed parses. Fields added since may follow; none of the seed's may be missing."""

    model_config = ConfigDict(extra="ignore")

    id: str
    events: list[str]
    start_date: datetime
    end_date: datetime
    format: Literal["json", "json_lines", "csv", "parquet", "avro"]
    properties: list[str] | None
    filters: list[SeedFilter]
    compression: Literal["gzip", "zstd", "snappy", "lz4"] | None
    destination: dict
    created_at: datetime
    status: Literal["pending", "processing", "completed", "failed", "expired"]


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory):
    data = with_demo_events(tmp_path_factory.mktemp("contract"), 3_000)
    return make_service(data, 1, {"ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]'})


def seed_body(fmt: str, compression: str | None) -> dict:
    """Every field of the seed's ExportRequest, as a client written from the seed sends it."""
    return {"id": "from-the-client", "events": [], "start_date": START.isoformat(), "end_date": END.isoformat(),
            "format": fmt, "properties": [], "filters": [{"property": "plan", "operator": "is_set", "value": None}],
            "compression": compression, "destination": {"type": "download"},
            "created_at": "2001-01-01T00:00:00Z", "status": "completed"}


def assert_seed_shape(body: dict, sent: dict, status: str) -> SeedExportRequest:
    """`body` is the seed's ExportRequest at the top level, holding what `sent` asked for."""
    seed = SeedExportRequest.model_validate(body)
    assert seed.id != sent["id"] and re.fullmatch(r"[0-9a-f-]{36}", seed.id), "the server assigns the id"
    assert seed.status == status
    assert abs(seed.created_at - datetime.now(timezone.utc)) < timedelta(minutes=5), "the server's creation time"
    assert (seed.start_date, seed.end_date) == (START, END)
    assert seed.events == [] and seed.properties is None, "empty means all; all is written null"
    assert seed.format == sent["format"] and seed.compression == sent["compression"]
    assert [f.model_dump() for f in seed.filters] == sent["filters"]
    assert seed.destination == sent["destination"]
    assert "request" not in body and {"progress", "result"} <= body.keys()
    return seed


@pytest.mark.parametrize("fmt, compression", [("csv", "gzip"), ("json_lines", "zstd"), ("parquet", None),
                                              ("avro", None)])
def test_the_seeds_request_answers_202_with_the_seeds_export_request(service, tmp_path, fmt, compression):
    sent = seed_body(fmt, compression)
    with service.client(service.key) as c:
        created = c.post("/api/exports", json=sent)
        assert created.status_code == 202, created.text
        seed = assert_seed_shape(created.json(), sent, "pending")
        listed = {item["id"]: item for item in c.get("/api/exports", params={"limit": 1000}).json()["items"]}
        assert_seed_shape(listed[seed.id], sent, listed[seed.id]["status"])
        done = wait_for(c, seed.id)
        assert_seed_shape(done, sent, "completed")
        assert done["result"]["export_id"] == seed.id and done["progress"]["events"] == done["result"]["total_events"]
        path = tmp_path / "download"
        path.write_bytes(c.get(f"/api/exports/{seed.id}/download").content)
    rows = [r for r in stored_rows(Settings(data_dir=service.data), START, END) if "plan" in r["properties"]]
    assert rows and canonical(read_records(path, fmt, compression)) == canonical(expected(rows, fmt, None)), \
        "`properties: []` exports every property, as one JSON column"


def test_cancel_and_retry_answer_the_same_shape(tmp_path):
    """A cancelled export ends `failed` with the error `cancelled`; its retry is the seed's shape again."""
    sent = seed_body("csv", None)
    idle = Service(tmp_path, 0)  # no worker: an export stays pending until it is cancelled
    try:
        with idle.client(create_key(tmp_path, "default")) as c:
            export_id = c.post("/api/exports", json=sent).json()["id"]
            cancelled = c.post(f"/api/exports/{export_id}/cancel")
            assert cancelled.status_code == 202, cancelled.text
            assert_seed_shape(cancelled.json(), sent, "failed")
            assert cancelled.json()["result"]["error"] == "cancelled"
            retried = c.post(f"/api/exports/{export_id}/retry")
            assert retried.status_code == 202, retried.text
            assert_seed_shape(retried.json(), sent, "pending")
    finally:
        idle.close()


def test_empty_properties_and_jsonl_are_taken_everywhere(service):
    """Exports, schedules, streams and GET /api/events/export take `jsonl` and `properties: []`, and
    answer with the canonical `json_lines` and null."""
    window = {"start_date": START.isoformat(), "end_date": END.isoformat()}
    webhook = {"type": "webhook", "url": "http://127.0.0.1:9/nobody-listens"}
    with service.client(service.key) as c:
        export = c.post("/api/exports", json={**window, "format": "jsonl", "properties": []})
        assert export.status_code == 202, export.text
        schedule = c.post("/api/schedules", json={"name": "contract", "schedule": "0 2 * * *", "format": "jsonl",
                                                  "properties": [], "enabled": False})
        assert schedule.status_code == 201, schedule.text
        stream = c.post("/api/streams", json={"name": "contract", "format": "jsonl", "properties": [],
                                              "destination": webhook})
        assert stream.status_code == 201, stream.text
        made = [export.json(), schedule.json()["schedule"], stream.json()["stream"]]
        assert [(m["format"], m["properties"]) for m in made] == [("json_lines", None)] * 3
        patched = c.patch(f"/api/streams/{stream.json()['stream']['id']}", json={"format": "jsonl",
                                                                                 "properties": ["plan"]})
        assert patched.status_code == 200 and patched.json()["stream"]["format"] == "json_lines", patched.text
        pulled = c.get("/api/events/export", params={"start": START.isoformat(), "end": END.isoformat(),
                                                     "format": "jsonl"})
        assert pulled.status_code == 200 and pulled.headers["content-type"].startswith("application/x-ndjson")
        assert len(pulled.text.splitlines()) == len(stored_rows(Settings(data_dir=service.data), START, END))
        wrong = c.post("/api/exports", json={**window, "format": "xml"})
        assert wrong.status_code == 422 and "use one of json (json), json_lines (jsonl)" in wrong.json()["detail"]


def test_the_schema_takes_jsonl_and_answers_the_seeds_shape(service):
    with service.client(None) as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
    alias = {"type": "string", "const": "jsonl", "description": "the same as `json_lines`"}
    for body in ("ExportCreate", "ScheduleCreate", "StreamCreate"):
        assert schemas[body]["properties"]["format"]["anyOf"] == [{"$ref": "#/components/schemas/ExportFormat"}, alias]
    view = schemas["ExportView"]
    assert view["properties"]["format"]["$ref"] == "#/components/schemas/ExportFormat", "responses say json_lines"
    assert set(SeedExportRequest.model_fields) | {"progress", "result"} <= set(view["required"])


def generator() -> str:
    """openapi-python-client, installed as an isolated uv tool by `scripts/bootstrap --dev` (its typer pin
    would downgrade ours, so it is not a dev dependency)."""
    tools = subprocess.run(["uv", "tool", "dir", "--bin"], capture_output=True, text=True).stdout.strip()
    found = shutil.which(GENERATOR) or shutil.which(GENERATOR, path=tools)
    if found is None:
        pytest.fail(f"{GENERATOR} is not installed: run `scripts/bootstrap --dev`")
    return found


def generate_client(service: Service, folder: Path) -> str:
    """Generate a client package from the served schema into `folder`; its module name."""
    with service.client(None) as c:
        (folder / "openapi.json").write_bytes(c.get("/openapi.json").content)
    (folder / "config.yaml").write_text("post_hooks: []\n")  # no formatter run: the code is used as generated
    done = subprocess.run([generator(), "generate", "--path", "openapi.json", "--output-path", "contract_client",
                           "--meta", "none", "--config", "config.yaml"], cwd=folder, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = set(re.findall(r"WARNING parsing (\S+ \S+) within \S+\.\n+(.+)", done.stderr))
    assert warnings == GENERATOR_WARNINGS and done.stderr.count("WARNING") == len(warnings), done.stderr
    return "contract_client"


def test_a_generated_client_creates_polls_and_downloads(service, tmp_path):
    package = generate_client(service, tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module(package)
        types = importlib.import_module(f"{package}.types")
        api = importlib.import_module(f"{package}.api.default")
        models = importlib.import_module(f"{package}.models")
        create = importlib.import_module(f"{api.__name__}.create_export_api_exports_post")
        get = importlib.import_module(f"{api.__name__}.get_export_api_exports_export_id_get")
        download = importlib.import_module(f"{api.__name__}.download_api_exports_export_id_download_get")

        client = client_module.AuthenticatedClient(base_url=service.url, token=service.key)
        body = models.ExportCreate(start_date=START, end_date=END, format_="jsonl", properties=[],
                                   events=["$pageview"], destination=models.DownloadDestination())
        view = create.sync(client=client, body=body)
        assert isinstance(view, models.ExportView), view
        assert view.status is models.ExportStatus.PENDING and view.format_ is models.ExportFormat.JSON_LINES
        deadline = time.monotonic() + 60
        while (view := get.sync(view.id, client=client)).status is not models.ExportStatus.COMPLETED:
            assert view.status is not models.ExportStatus.FAILED and time.monotonic() < deadline, view
            time.sleep(0.05)
        assert view.result.total_events == view.progress.events > 0
        file = download.sync(view.id, client=client)
        assert isinstance(file, types.File), file
        got = tmp_path / "download.jsonl"
        got.write_bytes(file.payload.read())
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
            del sys.modules[name]
    rows = stored_rows(Settings(data_dir=service.data), START, END, ["$pageview"])
    assert canonical(read_records(got, "json_lines", None)) == canonical(expected(rows, "json_lines", None))
    assert view.result.total_events == len(rows) and view.result.file_size == got.stat().st_size
