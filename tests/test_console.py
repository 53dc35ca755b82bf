"""The web console end to end: a real `analytics-export serve` (API and a worker) driven by headless
Chromium through Playwright: sign-in, an export made through the form and downloaded, a real export to a slow
webhook watched while it runs and cancelled, deleting a finished export, preview, the API's own errors,
schedules with their cron preview, backfill and run history, keyboard use and phone width."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from analytics_export import Settings, open_store
from analytics_export.demo import generate
from helpers import ARGS, CHROMIUM
from service import wait_for

MAX_RANGE_DAYS = 40

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not at /usr/bin/chromium "
                                "(scripts/bootstrap --dev installs it); no browser is downloaded")

if CHROMIUM.exists():
    from playwright.sync_api import expect, sync_playwright


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory):
    """20k demo events in the 90 days up to now (the form's presets are relative to now)."""
    data = tmp_path_factory.mktemp("console")
    store = open_store(Settings(data_dir=data), read_only=False)
    try:
        generate(store, 20_000, "default")
    finally:
        store.close()
    return make_service(data, 1, {"ANALYTICS_EXPORT_EXPORT__MAX_RANGE_DAYS": str(MAX_RANGE_DAYS),
                                  "ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]',
                                  "ANALYTICS_EXPORT_EXPORT__UPLOAD_RETRIES": "0",
                                  "ANALYTICS_EXPORT_EXPORT__MAX_ATTEMPTS": "1"})


@dataclass(frozen=True)
class Batch:
    export_id: str
    path: str
    index: int
    count: int
    events: int
    at: float  # time.monotonic() when the request came in


class SlowWebhook:
    """A webhook receiver on 127.0.0.1 that takes `delay` seconds over every request (then answers 200)
    and records them."""

    def __init__(self, delay: float) -> None:
        self.received: list[Batch] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.received.append(Batch(  # an export's batch, or a stream's (which is one)
                        self.headers.get("X-Export-Id") or self.headers["X-Stream-Id"], self.path,
                        int(self.headers.get("X-Batch-Index", "1")), int(self.headers.get("X-Batch-Count", "1")),
                        body.count(b"\n"), time.monotonic()))
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def batches(self, export_id: str) -> list[Batch]:
        with self.lock:
            return sorted((b for b in self.received if b.export_id == export_id), key=lambda b: b.at)

    def wait_for(self, export_id: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.batches(export_id):
            assert time.monotonic() < deadline, f"no request of export {export_id} came in"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook():
    receiver = SlowWebhook(delay=0.3)
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, service):
    """A fresh tab (UTC, en-US) that fails the test on a script error or a Content-Security-Policy violation."""
    context = browser.new_context(base_url=service.url, viewport={"width": 1280, "height": 900},
                                  timezone_id="UTC", locale="en-US", accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=service.url)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    tab.on("console", lambda msg: "Content Security Policy" in msg.text and problems.append(msg.text))
    yield tab
    context.close()
    assert not problems


def shot(page, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "screenshots"
    folder.mkdir(exist_ok=True)
    page.screenshot(path=folder / f"{name}.png", full_page=True)


def sign_in(page, key: str) -> None:
    page.goto("/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Exports", level=1)).to_be_visible()


def tab_to(page, selector: str, text: str | None = None, limit: int = 60) -> None:
    """Press Tab until the focused element matches `selector` (and has `text`, if given)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("([s, t]) => document.activeElement.matches(s) && (t === null || "
                         "document.activeElement.textContent.trim() === t)", [selector, text]):
            return
    raise AssertionError(f"Tab never reached {selector} {text or ''}")


def test_console_files_are_served_with_a_strict_policy(service):
    index = httpx.get(f"{service.url}/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    policy = index.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert index.headers["cache-control"] == "no-cache"
    script = httpx.get(f"{service.url}/console/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{service.url}/console/app.css").headers["content-type"].startswith("text/css")
    again = httpx.get(f"{service.url}/console/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304
    for path in ("/console/nope.js", "/console/..%2Fapi%2Fconsole.py", "/console/%2E%2E%2Fmodels.py"):
        assert httpx.get(f"{service.url}{path}").status_code == 404, path
    assert re.search(r"<script [^>]*src=", index.text) and "<style" not in index.text and " style=" not in index.text


def test_sign_in_by_keyboard_rejects_a_bad_key_and_signs_out(page, service, tmp_path):
    page.goto("/")
    key = page.get_by_label("API key")
    expect(key).to_be_focused()
    page.keyboard.type("aek_not_a_key")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("not accepted")
    expect(key).to_be_focused()
    shot(page, tmp_path, "sign-in")
    page.keyboard.press("Control+A")
    page.keyboard.type(service.key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Exports", level=1)).to_be_focused()
    assert page.evaluate("sessionStorage.getItem('analytics-export.key')") == service.key
    assert service.key not in page.url
    page.reload()
    expect(page.get_by_role("heading", name="Exports", level=1)).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_export_made_by_keyboard_shows_progress_downloads_and_copies_its_link(page, service, tmp_path):
    sign_in(page, service.key)
    page.evaluate("window.sameDocument = true")
    tab_to(page, "a", "New export")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="New export")).to_be_visible()
    tab_to(page, "[role=combobox]")
    page.keyboard.type("pagev")
    expect(page.get_by_role("option", name=re.compile(r"^\$pageview"))).to_be_visible()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(page.get_by_role("list", name="Chosen events").get_by_role("listitem")).to_have_text(["$pageview×"])
    tab_to(page, "button", "Last week")
    page.keyboard.press("Enter")
    tab_to(page, "select[name=format]")
    page.keyboard.type("CSV")
    tab_to(page, "select[name=compression]")
    page.keyboard.type("gzip")
    assert page.eval_on_selector("select[name=format]", "s => s.value") == "csv"
    assert page.eval_on_selector("select[name=compression]", "s => s.value") == "gzip"
    tab_to(page, "input[value=uuid]")
    page.keyboard.press("Space")
    shot(page, tmp_path, "new-export")
    tab_to(page, "button", "Create export")
    page.keyboard.press("Enter")

    expect(page.get_by_role("heading", name="Exports", level=1)).to_be_visible()
    row = page.locator("tbody tr").first
    export_id = row.get_attribute("data-id")
    expect(row.locator(".badge")).to_have_text("completed", timeout=30_000)
    expect(row.locator("progress")).to_have_js_property("value", 1)
    expect(row).to_contain_text("100%")
    assert page.evaluate("window.sameDocument"), "the list updated without reloading the page"
    shot(page, tmp_path, "exports")

    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        view = api.get(f"/api/exports/{export_id}").json()
    with page.expect_download() as download:
        row.get_by_role("link", name=re.compile("Download")).click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == f"{Path(view['result']['destination_path']).name}" and saved.name.endswith(".csv.gz")
    rows = list(csv.DictReader(io.StringIO(gzip.decompress(saved.read_bytes()).decode("utf-8"), newline="")))
    assert len(rows) == view["result"]["total_events"] > 0
    assert view["csv_formula_guard"] is True, "the console's CSV is for spreadsheets"
    assert view["include"] == ["uuid"] and len({r["uuid"] for r in rows}) == len(rows)
    assert {r["event"] for r in rows} == {"$pageview"}
    week_ago = datetime.now(timezone.utc) - timedelta(days=7, minutes=5)
    assert all(datetime.fromisoformat(r["timestamp"]) >= week_ago for r in rows)
    assert all(isinstance(json.loads(r["properties"]), dict) for r in rows)

    row.get_by_role("button", name=re.compile("Copy download link")).click()
    expect(page.get_by_role("status")).to_have_text("Download link copied")
    link = page.evaluate("navigator.clipboard.readText()")
    assert link.startswith(f"{service.url}/api/exports/{export_id}/download?expires=") and "signature=" in link
    assert httpx.get(link).content == saved.read_bytes(), "the copied link works without a key"


def running_row(page, export_id: str) -> dict:
    """The row of `export_id` the first time it shows a running export with a known share: its badge, bar
    value, progress text and whether its Cancel button is there, read at one instant."""
    handle = page.wait_for_function("""id => {
        const tr = document.querySelector(`tr[data-id="${id}"]`);
        const text = tr?.querySelector("td[data-label=Progress] div")?.textContent ?? "";
        if (tr?.querySelector(".badge").textContent !== "processing" || !/^\\d+% .* left$/.test(text)) return null;
        return {value: tr.querySelector("progress").value, text,
                cancel: !!tr.querySelector(`button[aria-label="Cancel export ${id.slice(0, 8)}"]`)};
    }""", arg=export_id, timeout=30_000, polling=100)
    return handle.json_value()


def test_export_to_a_slow_webhook_shows_its_real_share_rate_and_time_left(page, service, webhook, tmp_path):
    """A real export made through the form, sent in batches of 500 events to a receiver that takes 0.3 s
    per request: the row shows its share, rate and time left while it runs, then completes."""
    sign_in(page, service.key)
    page.evaluate("window.sameDocument = true")
    page.get_by_role("main").get_by_role("link", name="New export").click()
    page.get_by_role("button", name="Last month").click()
    page.get_by_label("Send to").select_option("webhook")
    page.get_by_label("URL (required)").fill(f"{webhook.url}/form")
    page.get_by_label("Events per request (at most)").fill("500")
    page.get_by_role("button", name="Create export").click()

    expect(page.get_by_role("heading", name="Exports", level=1)).to_be_visible()
    row = page.locator("tbody tr").first
    export_id = row.get_attribute("data-id")
    seen = running_row(page, export_id)
    shot(page, tmp_path, "running-export")
    share = int(seen["text"].split("%")[0])
    assert 0 < share < 100 and abs(seen["value"] * 100 - share) <= 0.5, seen
    assert re.fullmatch(r"\d+% · [\d,]+ events · [\d.]+ [KM]?B · [\d,]+ events/s · about \d+ (s|min \d+ s) left",
                        seen["text"]), seen
    assert seen["cancel"], "a running export can be cancelled"

    expect(row.locator(".badge")).to_have_text("completed", timeout=30_000)
    expect(row.locator("progress")).to_have_js_property("value", 1)
    assert page.evaluate("window.sameDocument"), "the row updated without reloading the page"
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        view = api.get(f"/api/exports/{export_id}").json()
    assert view["destination"] == {"type": "webhook", "url": f"{webhook.url}/form", "headers": {},
                                              "connection": None, "batch_max_events": 500, "batch_max_bytes": None}
    batches = webhook.batches(export_id)
    total = view["result"]["total_events"]
    assert total > 2_000 and len(batches) == -(-total // 500), "several seconds of requests"
    assert [b.index for b in batches] == list(range(1, len(batches) + 1))
    assert {b.count for b in batches} == {len(batches)} and {b.path for b in batches} == {"/form"}
    assert all(b.events == 500 for b in batches[:-1]) and sum(b.events for b in batches) == total


def test_cancel_stops_an_export_to_a_slow_webhook(page, service, webhook, tmp_path):
    """A real export (through the API) cancelled from its row once the receiver got its first batch: the row
    ends failed with `cancelled` (the API has no cancelled status) and the receiver gets no more requests."""
    now = datetime.now(timezone.utc)
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        made = api.post("/api/exports", json={
            "start_date": (now - timedelta(days=14)).isoformat(), "end_date": now.isoformat(),
            "destination": {"type": "webhook", "url": f"{webhook.url}/api", "batch_max_events": 300}})
        assert made.status_code == 202, made.text
    export_id = made.json()["id"]
    sign_in(page, service.key)
    page.evaluate("window.sameDocument = true")
    row = page.locator(f'tbody tr[data-id="{export_id}"]')
    running_row(page, export_id)
    webhook.wait_for(export_id)
    with page.expect_response(lambda r: r.url.endswith(f"/api/exports/{export_id}/cancel")) as answer:
        row.get_by_role("button", name=f"Cancel export {export_id[:8]}").click()
    cancelled_at = time.monotonic()
    assert answer.value.status == 202
    expect(page.get_by_role("status")).to_have_text(f"Cancelling export {export_id[:8]}")
    shot(page, tmp_path, "cancelling-export")

    badge = row.locator(".badge")
    expect(badge).not_to_have_text(re.compile("^(pending|processing)$"), timeout=30_000)
    expect(badge).to_have_text("failed", timeout=1_000)
    expect(row.locator(".error-text")).to_have_text("cancelled")
    assert page.evaluate("window.sameDocument"), "the row updated without reloading the page"
    time.sleep(1.5)
    batches = webhook.batches(export_id)
    assert batches and len(batches) < batches[0].count, "the export stopped before its last batch"
    late = [round(b.at - cancelled_at, 2) for b in batches if b.at > cancelled_at + 1.0]
    assert not late, f"requests came in these seconds after the cancel: {late}"


def test_finished_export_is_deleted_after_confirmation(page, service, tmp_path):
    now = datetime.now(timezone.utc)
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        made = api.post("/api/exports", json={"start_date": (now - timedelta(days=1)).isoformat(),
                                              "end_date": now.isoformat(), "events": ["$pageview"],
                                              "format": "csv"})
        assert made.status_code == 202, made.text
        export_id = made.json()["id"]
        file = Path(wait_for(api, export_id)["result"]["destination_path"])
        assert file.is_file()
        sign_in(page, service.key)
        page.evaluate("window.sameDocument = true")
        row = page.locator(f'tbody tr[data-id="{export_id}"]')
        short = export_id[:8]
        dialog = page.get_by_role("dialog", name=f"Delete export {short}?")
        row.get_by_role("button", name=f"Delete export {short}").click()
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("with its file")
        expect(dialog.get_by_role("button", name="Keep it")).to_be_focused()
        shot(page, tmp_path, "delete-export")
        dialog.get_by_role("button", name="Keep it").click()
        expect(dialog).to_be_hidden()
        expect(row).to_be_visible()
        assert api.get(f"/api/exports/{export_id}").status_code == 200 and file.is_file()

        row.get_by_role("button", name=f"Delete export {short}").click()
        dialog.get_by_role("button", name="Delete", exact=True).click()
        expect(dialog).to_be_hidden()
        expect(page.get_by_role("status")).to_have_text(f"Export {short} deleted")
        expect(row).to_have_count(0)
        assert api.get(f"/api/exports/{export_id}").status_code == 404
    assert not file.exists()
    assert page.evaluate("window.sameDocument"), "the row went without reloading the page"


def test_failed_export_to_a_webhook_shows_its_error_and_retries(page, service):
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        made = api.post("/api/connections", json={"name": "hooks", "type": "webhook",
                                                  "secrets": {"signing_secret": "s3cret"}})
        assert made.status_code == 201, made.text
    sign_in(page, service.key)
    page.goto("/#/exports/new")
    page.get_by_label("Send to").select_option("webhook")
    page.get_by_role("button", name="Create export").click()
    expect(page.get_by_role("alert")).to_contain_text("url is required")
    page.get_by_label("URL (required)").fill("http://127.0.0.1:9/nobody-listens")
    connection = page.get_by_label("Saved connection (credentials)")
    expect(connection.locator("option")).to_have_text(["None (server credentials)", "hooks (signing_secret)"])
    connection.select_option("hooks")
    page.get_by_role("button", name="Create export").click()

    row = page.locator("tbody tr").first
    expect(row.locator(".badge")).to_have_text("failed", timeout=30_000)
    expect(row.locator(".error-text")).to_contain_text("ConnectError")
    expect(row).to_contain_text("→ webhook")
    row.get_by_role("button", name=re.compile("^Retry")).click()
    expect(page.get_by_role("status")).to_have_text(re.compile("queued again|is pending|is processing"))
    expect(row.locator(".badge")).to_have_text("failed", timeout=30_000)


def test_preview_and_the_apis_own_errors_next_to_the_form(page, service, tmp_path):
    sign_in(page, service.key)
    page.goto("/#/exports/new")
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    page.get_by_label("Start (inclusive)").fill("2026-11-20T10:00")
    page.get_by_label("End (exclusive)").fill("2026-11-19T10:00")
    page.get_by_role("button", name="Create export").click()
    expect(page.get_by_role("alert")).to_have_text("The end must be after the start")
    expect(page.get_by_label("End (exclusive)")).to_have_attribute("aria-invalid", "true")
    assert posts == [], "the form checks the range before asking the API"

    page.get_by_role("combobox", name="Event name").fill("pagev")
    page.get_by_role("option", name=re.compile(r"^\$pageview")).click()
    page.get_by_role("button", name="Last month").click()
    page.get_by_role("checkbox", name="$browser").check()
    page.get_by_role("checkbox", name="price").check()
    page.get_by_role("button", name="Add filter").click()
    page.get_by_label("Property").fill("price")
    page.get_by_label("Operator").select_option("gte")
    page.get_by_label("Value").fill("true")
    page.get_by_role("button", name="Preview").click()
    expect(page.get_by_role("alert")).to_contain_text("compares numbers or text")
    page.get_by_label("Value").fill("100")
    page.get_by_role("button", name="Preview").click()
    table = page.locator(".preview-table")
    expect(table.locator("caption")).to_contain_text("the first 20 rows")
    assert table.locator("thead th").all_text_contents() == ["event", "distinct_id", "timestamp", "properties"]
    cells = table.locator("tbody tr td:nth-child(4)").all_inner_texts()
    assert len(cells) == 20
    for text in cells:
        props = json.loads(text)
        assert set(props) == {"$browser", "price"} and props["price"] >= 100
    shot(page, tmp_path, "preview")

    long_ago = datetime.now(timezone.utc) - timedelta(days=MAX_RANGE_DAYS + 20)
    page.get_by_label("Start (inclusive)").fill(long_ago.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Create export").click()
    expect(page.get_by_role("alert")).to_contain_text(f"the most is {MAX_RANGE_DAYS}: split the range")
    expect(page.get_by_role("heading", name="New export")).to_be_visible()


def created_export(page, create) -> tuple[str, dict]:
    """Clicks `create` (the form's Create export) and gives the new export's id and the body the form sent."""
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/api/exports")) as sent:
        create.click()
    expect(page.get_by_role("heading", name="Exports", level=1)).to_be_visible()
    row = page.locator("tbody tr").first
    expect(row).to_have_attribute("data-id", re.compile(".+"))
    return row.get_attribute("data-id"), sent.value.post_data_json


def downloaded_rows(page, service, export_id: str, tmp_path: Path) -> tuple[list[dict], dict]:
    """The JSON Lines rows of a finished export, downloaded through its row's link, and its view."""
    row = page.locator(f'tbody tr[data-id="{export_id}"]')
    expect(row.locator(".badge")).to_have_text("completed", timeout=60_000)
    with page.expect_download() as download:
        row.get_by_role("link", name=re.compile("Download")).click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        view = api.get(f"/api/exports/{export_id}").json()
    return [json.loads(line) for line in saved.read_text("utf-8").splitlines()], view


def test_persons_and_sessions_exports_from_the_console(page, service, tmp_path):
    """The Model select: persons and sessions hide the event selections and send the model and its option
    (an events body has no model), the API's 422 for an open sessions window is shown, and both exports
    complete and download with their own columns."""
    sign_in(page, service.key)
    page.get_by_role("main").get_by_role("link", name="New export").click()
    model = page.get_by_label("Model", exact=True)
    combobox = page.get_by_label("Event name", exact=True)
    expect(model).to_have_value("events")
    expect(page.get_by_label("Session gap (minutes)")).to_be_hidden()
    expect(page.get_by_label("Event count")).to_be_hidden()
    model.select_option("persons")
    for hidden in (combobox, page.get_by_role("button", name="Add filter"), page.locator("input[value=uuid]"),
                   page.get_by_role("button", name="Preview"), page.get_by_label("Session gap (minutes)")):
        expect(hidden).to_be_hidden()
    page.get_by_label("Event count").select_option(label="this window")
    # From before the first demo event: no person merged away nor session updated late, so the export is one
    # file and no manifest (a manifest, when there is one, is what the download link serves).
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(days=95)
    end = start + timedelta(days=35)
    page.get_by_label("Start (inclusive)").fill(start.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_label("End (exclusive)").fill(end.strftime("%Y-%m-%dT%H:%M"))
    shot(page, tmp_path, "new-persons-export")
    persons_id, body = created_export(page, page.get_by_role("button", name="Create export"))
    assert body["model"] == "persons" and body["person_event_count"] == "range"
    assert not {"events", "filters", "properties", "include", "session_gap_minutes"} & set(body)
    expect(page.locator(f'tr[data-id="{persons_id}"] .model-label')).to_have_text("Persons")
    rows, view = downloaded_rows(page, service, persons_id, tmp_path)
    assert len(rows) == view["result"]["total_events"] > 0
    assert all(isinstance(r["person_id"], str) and r["person_id"] in r["distinct_ids"] for r in rows)
    assert all(r["event_count"] >= 1 for r in rows)
    expect(page.locator(f'tr[data-id="{persons_id}"]')).to_contain_text("persons (event count: this window)")

    page.get_by_role("main").get_by_role("link", name="New export").click()
    model.select_option("sessions")
    expect(page.get_by_label("Event count")).to_be_hidden()
    page.get_by_label("Session gap (minutes)").fill("0")
    page.get_by_role("button", name="Create export").click()
    expect(page.get_by_role("alert")).to_contain_text("from 1 to 1440")
    page.get_by_label("Session gap (minutes)").fill("45")
    page.get_by_role("button", name="Create export").click()  # the last day, up to now: sessions still open
    expect(page.get_by_role("alert")).to_contain_text("the sessions of a window are known only once the gap "
                                                      "has passed after it")
    expect(page.get_by_role("heading", name="New export")).to_be_visible()
    page.get_by_label("Start (inclusive)").fill(start.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_label("End (exclusive)").fill(end.strftime("%Y-%m-%dT%H:%M"))
    sessions_id, body = created_export(page, page.get_by_role("button", name="Create export"))
    assert body["model"] == "sessions" and body["session_gap_minutes"] == 45
    assert not {"events", "filters", "properties", "include", "person_event_count"} & set(body)
    expect(page.locator(f'tr[data-id="{sessions_id}"] .model-label')).to_have_text("Sessions")
    rows, view = downloaded_rows(page, service, sessions_id, tmp_path)
    assert view["session_gap_minutes"] == 45 and len(rows) == view["result"]["total_events"] > 0
    assert all(r["session_id"] and r["duration_seconds"] >= 0 and r["event_count"] >= 1 for r in rows)
    assert all(start <= datetime.fromisoformat(r["ended_at"]) < end for r in rows)
    shot(page, tmp_path, "model-exports")

    page.get_by_role("main").get_by_role("link", name="New export").click()
    model.select_option("sessions")
    model.select_option("events")
    expect(combobox).to_be_visible()
    expect(page.get_by_role("button", name="Preview")).to_be_visible()
    events_id, body = created_export(page, page.get_by_role("button", name="Create export"))
    assert set(body) == {"start_date", "end_date", "events", "properties", "filters", "format", "compression",
                         "destination", "csv_formula_guard", "include"}, "an events body is as it was"
    expect(page.locator(f'tr[data-id="{events_id}"]')).to_contain_text("all events")
    expect(page.locator(f'tr[data-id="{events_id}"] .model-label')).to_have_count(0)


def test_a_sessions_schedule_shows_its_model_and_can_become_persons(page, service):
    """A schedule made with model sessions is labelled so in the list (an events one is not); its edit form
    loads the model and switching it saves (the hidden selections cleared, then events again)."""
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        made = api.post("/api/schedules", json={"name": "events-hourly", "schedule": "0 * * * *",
                                                "events": ["$pageview"], "include": ["uuid"],
                                                "filters": [{"property": "price", "operator": "is_set"}]})
        assert made.status_code == 201, made.text
    sign_in(page, service.key)
    page.get_by_role("link", name="Schedules").click()
    page.get_by_role("link", name="New schedule").click()
    page.get_by_label("Name", exact=True).fill("sessions-daily")
    page.get_by_label("Model", exact=True).select_option("sessions")
    expect(page.get_by_label("Event name", exact=True)).to_be_hidden()
    page.get_by_label("Session gap (minutes)").fill("60")
    page.get_by_role("button", name="Create schedule").click()
    row = page.locator("tbody tr", has_text="sessions-daily")
    expect(row.locator(".model-label")).to_have_text("Sessions")
    expect(page.locator("tbody tr", has_text="events-hourly").locator(".model-label")).to_have_count(0)
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        spec = next(v["schedule"] for v in api.get("/api/schedules").json()["items"]
                    if v["schedule"]["name"] == "sessions-daily")
    assert (spec["model"], spec["session_gap_minutes"], spec["events"]) == ("sessions", 60, [])

    row.get_by_role("link", name="Edit sessions-daily").click()
    expect(page.get_by_label("Model", exact=True)).to_have_value("sessions")
    expect(page.get_by_label("Session gap (minutes)")).to_have_value("60")
    page.get_by_label("Model", exact=True).select_option("persons")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("tbody tr", has_text="sessions-daily").locator(".model-label")).to_have_text("Persons")

    page.locator("tbody tr", has_text="sessions-daily").get_by_role("link", name="Edit sessions-daily").click()
    expect(page.get_by_label("Event count")).to_be_visible()
    page.get_by_label("Model", exact=True).select_option("events")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("tbody tr", has_text="sessions-daily").locator(".model-label")).to_have_count(0)

    page.locator("tbody tr", has_text="events-hourly").get_by_role("link", name="Edit events-hourly").click()
    expect(page.get_by_role("list", name="Chosen events").get_by_role("listitem")).to_have_text(["$pageview×"])
    page.get_by_label("Model", exact=True).select_option("persons")
    page.get_by_role("button", name="Save changes").click()  # the stored selections are cleared, not kept
    expect(page.locator("tbody tr", has_text="events-hourly").locator(".model-label")).to_have_text("Persons")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        specs = {v["schedule"]["name"]: v["schedule"] for v in api.get("/api/schedules").json()["items"]}
    assert {k: specs["events-hourly"][k] for k in ("model", "events", "filters", "include", "properties")} == {
        "model": "persons", "events": [], "filters": [], "include": [], "properties": None}
    assert specs["sessions-daily"]["model"] == "events"


def test_the_form_offers_only_the_codecs_of_the_chosen_format(page, service):
    sign_in(page, service.key)
    page.goto("/#/exports/new")
    codec = page.get_by_label("Compression")
    offered = lambda: codec.locator("option").evaluate_all("os => os.map(o => o.value)")  # noqa: E731
    expect(codec.locator("option")).to_have_count(3)  # JSON Lines, the default: none, gzip, zstd
    assert offered() == ["", "gzip", "zstd"]
    page.get_by_label("Format").select_option("parquet")
    expect(codec.locator("option")).to_have_count(5)
    assert offered() == ["", "gzip", "zstd", "snappy", "lz4"]
    codec.select_option("lz4")
    page.get_by_label("Format").select_option("avro")
    expect(codec.locator("option")).to_have_count(4)
    assert offered() == ["", "gzip", "zstd", "snappy"]
    assert codec.input_value() == "", "a codec the new format does not offer is dropped, not sent"
    page.get_by_label("Format").select_option("csv")
    expect(codec.locator("option")).to_have_count(3)


def test_the_test_button_tries_the_destination_before_saving(page, service, webhook):
    """The export and schedule forms' Test button: the server tries the destination as filled in and the
    form lists each step, or the step that failed and why; nothing is saved."""
    sign_in(page, service.key)
    page.get_by_role("main").get_by_role("link", name="New export").click()
    page.get_by_label("Send to").select_option("webhook")
    page.get_by_label("URL (required)").fill(f"{webhook.url}/probe")
    page.get_by_role("button", name="Test destination").click()
    result = page.locator(".test-result")
    expect(result).to_contain_text("The destination works.", timeout=20_000)
    expect(result.get_by_role("list", name="Test steps").get_by_role("listitem")).to_have_count(4)
    expect(result).to_contain_text("send — unsigned (no signing_secret); answered HTTP 200")
    assert [b.path for b in webhook.batches("destination-test")] == ["/probe"]
    page.get_by_label("URL (required)").fill("http://127.0.0.1:9/probe")
    page.get_by_role("button", name="Test destination").click()
    expect(result).to_contain_text('The destination failed at "send"', timeout=20_000)
    expect(result).to_contain_text("cannot send")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        before = api.get("/api/exports").json()["total"]

    page.get_by_role("link", name="Schedules").click()
    page.get_by_role("link", name="New schedule").click()
    page.get_by_role("button", name="Test destination").click()  # the download folder of this server
    expect(page.locator(".test-result")).to_contain_text("The destination works.", timeout=20_000)
    expect(page.locator(".test-result")).not_to_contain_text(str(service.data))
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        assert api.get("/api/exports").json()["total"] == before


def test_a_stream_is_tested_created_delivered_and_paused_from_the_console(page, service, webhook):
    """The Streams page: a stream's destination tried with the Test button (streams' types only), the stream
    created from the form, its events delivered and counted in its row, then paused there."""
    sign_in(page, service.key)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Streams").click()
    page.get_by_role("link", name="New stream").click()
    kinds = page.get_by_label("Send to").locator("option")
    expect(kinds).not_to_have_count(0)
    offered = kinds.evaluate_all("options => options.map(o => o.value)")
    assert "download" not in offered and "sftp" not in offered and {"webhook", "nats", "s3"} <= set(offered)
    page.get_by_label("Send to").select_option("webhook")
    page.get_by_label("URL (required)").fill(f"{webhook.url}/stream")
    page.get_by_role("button", name="Test destination").click()
    expect(page.locator(".test-result")).to_contain_text("The destination works.", timeout=20_000)
    page.get_by_label("Name").fill("to the webhook")
    page.get_by_label("Seconds per batch (at most)").fill("0.2")
    page.get_by_role("button", name="Create stream").click()

    expect(page.get_by_role("heading", name="Streams", level=1)).to_be_visible()
    row = page.locator("tbody tr", has_text="to the webhook")
    stream_id = row.get_attribute("data-id")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        now = datetime.now(timezone.utc).isoformat()
        assert api.post("/api/events", json=[{"event": "streamed", "distinct_id": f"u{i}", "timestamp": now}
                                             for i in range(7)]).status_code == 200
        deadline = time.monotonic() + 30
        while api.get(f"/api/streams/{stream_id}").json()["delivered_events"] < 7:
            assert time.monotonic() < deadline, "the stream delivered the events"
            time.sleep(0.1)
    expect(row).to_contain_text("7 events", timeout=10_000)
    assert sum(b.events for b in webhook.received if b.path == "/stream") == 7
    row.get_by_role("button", name="Pause to the webhook").click()
    expect(row.locator(".badge")).to_have_text("paused")
    row.get_by_role("button", name="Resume to the webhook").click()
    expect(row.locator(".badge")).to_have_text("active")


def test_schedule_with_cron_preview_pause_backfill_and_run_history(page, service, tmp_path):
    sign_in(page, service.key)
    page.get_by_role("link", name="Schedules").click()
    page.get_by_role("link", name="New schedule").click()
    page.get_by_label("Name", exact=True).fill("nightly")
    runs = page.get_by_role("list", name="Next 5 runs").get_by_role("listitem")
    expect(runs).to_have_count(5)
    cron = page.get_by_label("Cron expression")
    cron.fill("every day")
    expect(page.locator(".cron-preview")).to_contain_text("not a cron expression")
    cron.fill("30 3 * * *")
    expect(page.locator(".cron-preview strong")).to_contain_text("03:30")
    expect(runs).to_have_count(5)
    first = datetime.fromisoformat(runs.first.locator("time").get_attribute("datetime"))
    assert (first.hour, first.minute) == (3, 30) and first > datetime.now(timezone.utc)
    assert all("03:30" in text for text in runs.all_inner_texts())
    page.get_by_label("Format").select_option("parquet")
    shot(page, tmp_path, "schedule-form")
    page.get_by_role("button", name="Create schedule").click()

    expect(page.get_by_role("heading", name="Schedules")).to_be_visible()
    row = page.locator("tbody tr", has_text="nightly")
    expect(row.locator(".badge")).to_have_text("active")
    row.get_by_role("button", name="Pause").click()
    expect(row.locator(".badge")).to_have_text("paused")
    row.get_by_role("button", name="Resume").click()
    expect(row.locator(".badge")).to_have_text("active")
    shot(page, tmp_path, "schedules")

    row.get_by_role("button", name="Backfill…").click()
    dialog = page.get_by_role("dialog", name="Backfill “nightly”")
    expect(dialog).to_be_visible()
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    dialog.get_by_label("From", exact=True).fill((today - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M"))
    dialog.get_by_label("To", exact=True).fill(today.strftime("%Y-%m-%dT%H:%M"))
    dialog.get_by_role("button", name="Start backfill").click()
    expect(page.get_by_role("status")).to_contain_text("3 windows queued, 0 skipped")
    expect(dialog).to_be_hidden()

    row.get_by_role("link", name="Run history of nightly").click()
    expect(page.get_by_role("heading", name="Run history: nightly")).to_be_visible()
    badges = page.locator("tbody .badge")
    expect(badges).to_have_text(["completed"] * 3, timeout=30_000)
    bars = page.locator(".chart svg rect.bar")
    expect(bars).to_have_count(3)
    assert all(int(b.get_attribute("height").split(".")[0]) >= 1 for b in bars.all())
    assert "events" in bars.first.locator("title").text_content()
    shot(page, tmp_path, "run-history")

    page.get_by_role("link", name="All schedules").click()
    page.locator("tbody tr", has_text="nightly").get_by_role("link", name="Edit nightly").click()
    expect(page.get_by_label("Cron expression")).to_have_value("30 3 * * *")
    expect(page.get_by_label("Each run exports")).to_be_disabled()
    page.get_by_label("Name", exact=True).fill("nightly-csv")
    page.get_by_label("Format").select_option("csv")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("tbody tr", has_text="nightly-csv")).to_be_visible()


def test_phone_width_has_no_horizontal_scroll(page, service, tmp_path):
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, service.key)
    for route, name in [("#/exports", "exports"), ("#/schedules", "schedules"), ("#/exports/new", "new-export")]:
        page.goto(f"/{route}")
        expect(page.locator("h1")).to_be_visible()
        page.wait_for_load_state("networkidle")
        if name == "new-export":
            page.get_by_role("button", name="Add filter").click()
            page.get_by_label("Property").fill("price")
            page.get_by_label("Operator").select_option("is_set")
            page.get_by_role("button", name="Preview").click()
            expect(page.locator(".preview-table")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), route
        shot(page, tmp_path, f"phone-{name}")


def test_editing_a_schedule_keeps_what_the_form_does_not_show(page, service):
    """Settings the form has no input for (webhook headers) and string filter values that look like
    numbers or booleans come back from a save as they were."""
    destination = {"type": "webhook", "url": "http://127.0.0.1:9/hook", "headers": {"X-Team": "growth"},
                   "batch_max_bytes": 1_000_000}
    filters = [{"property": "plan", "operator": "eq", "value": "42"},
               {"property": "flag", "operator": "in", "value": ["true", "x"]},
               {"property": "price", "operator": "gt", "value": 10}]
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
        made = api.post("/api/schedules", json={"name": "kept", "schedule": "0 4 * * *", "destination": destination,
                                                "filters": filters})
        assert made.status_code == 201, made.text
        schedule_id = made.json()["schedule"]["id"]
        sign_in(page, service.key)
        page.goto(f"/#/schedules/{schedule_id}/edit")
        expect(page.get_by_label("Cron expression")).to_have_value("0 4 * * *")
        page.get_by_label("Name", exact=True).fill("kept-renamed")
        page.get_by_role("button", name="Save changes").click()
        expect(page.locator("tbody tr", has_text="kept-renamed")).to_be_visible()
        saved = api.get(f"/api/schedules/{schedule_id}").json()["schedule"]
    assert saved["destination"]["headers"] == {"X-Team": "growth"}
    assert saved["destination"]["batch_max_bytes"] == 1_000_000
    assert [f["value"] for f in saved["filters"]] == ["42", ["true", "x"], 10]


def test_the_alerts_page_lists_an_alert_its_delivery_and_the_channels(page, service, tmp_path):
    """A real export to a closed port fails for good; the channel is told, and the Alerts page shows both."""
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}) as api:
            made = api.post("/api/alert-channels", json={
                "name": "ops-room", "type": "webhook", "kinds": ["export_failed"],
                "url": f"http://127.0.0.1:{receiver.server_port}/alerts"})
            assert made.status_code == 201, made.text
            export = api.post("/api/exports", json={"start_date": "2026-10-01", "end_date": "2026-10-02",
                                                    "destination": {"type": "webhook",
                                                                    "url": "http://127.0.0.1:9/nobody-listens"}})
            export_id = export.json()["id"]
            deadline = time.monotonic() + 60
            while not any(export_id.encode() in body for body in received):
                assert time.monotonic() < deadline, "the alert never came"
                time.sleep(0.1)
        sign_in(page, service.key)
        page.get_by_role("link", name="Alerts").click()
        expect(page.get_by_role("heading", name="Alerts", level=1)).to_be_focused()
        row = page.locator("tbody tr", has_text=export_id)
        expect(row).to_contain_text("Export failed for good")
        expect(row.locator(".error-text")).to_contain_text("ConnectError")
        expect(row.locator("td[data-label=Status] .badge")).to_have_text("open")
        expect(row.locator(".delivery")).to_contain_text("ops-room · opened")
        expect(row.locator(".delivery .badge")).to_have_text("sent")
        channels = page.get_by_role("table", name="Channels")
        expect(channels).to_contain_text("ops-room")
        expect(channels).to_contain_text("Export failed for good")
        shot(page, tmp_path, "alerts")
        page.once("dialog", lambda dialog: dialog.accept())
        channels.get_by_role("button", name="Delete ops-room").click()
        expect(page.get_by_role("status")).to_have_text("Channel ops-room deleted")
        expect(channels).to_contain_text("No channels yet.")
    finally:
        receiver.shutdown()
        receiver.server_close()
