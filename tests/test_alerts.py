"""Alerts end to end: a real `analytics-export serve`, HTTP receivers made here, and an aiosmtpd server that
speaks STARTTLS with a certificate made here. Every alert comes of a real failure: an export to a closed
port failing for good, schedule runs failing until it pauses, a scheduler that was not running at a
firing, a stream whose receiver refuses then takes its batches, an archive that no longer verifies."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import ipaddress
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from servers import free_port
from service import CLI, Service, cli, wait_for

from analytics_export import Settings, open_store
from analytics_export.demo import generate
from analytics_export.models import RetentionPolicy, ScheduledExport
from analytics_export.runtime.alerts import Dispatcher
from analytics_export.runtime.retention import Interrupted, Retention, run_due, set_policy
from analytics_export.runtime.scheduler import Scheduler, Schedules
from analytics_export.store.jobs import JobStore

HOST = "127.0.0.1"
SECRET = "alert-signing-secret"
ENV = {"ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]', "ANALYTICS_EXPORT_EXPORT__MAX_ATTEMPTS": "3",
       "ANALYTICS_EXPORT_EXPORT__RETRY_BACKOFF_SECONDS": "0.1", "ANALYTICS_EXPORT_EXPORT__UPLOAD_RETRIES": "0",
       "ANALYTICS_EXPORT_EXPORT__UPLOAD_TIMEOUT_SECONDS": "5", "ANALYTICS_EXPORT_ALERTS__BACKOFF_SECONDS": "0.3",
       "ANALYTICS_EXPORT_ALERTS__MAX_ATTEMPTS": "3", "ANALYTICS_EXPORT_ALERTS__TIMEOUT_SECONDS": "4",
       "ANALYTICS_EXPORT_ALERTS__POLL_SECONDS": "0.2", "ANALYTICS_EXPORT_PUBLIC_URL": "https://console.example.test",
       "ANALYTICS_EXPORT_STREAM_SETTLE_SECONDS": "0.2"}
WINDOW = {"start_date": "2026-10-01T00:00:00Z", "end_date": "2026-10-02T00:00:00Z"}
EVENTS = [{"event": "signup", "distinct_id": f"u{i}", "timestamp": "2026-10-01T12:00:00Z", "properties": {"i": i}}
          for i in range(5)]


class Receiver(http.server.ThreadingHTTPServer):
    """An HTTP receiver on 127.0.0.1 (`port`: 0 for any) that records each POST's headers and JSON body
    and answers `status`, after first refusing `refuse` requests with 503."""

    def __init__(self, port: int = 0, refuse: int = 0, status: int = 200) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.refuse, self.status = refuse, status
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if server.refuse > 0:
                    server.refuse -= 1
                    status = 503
                else:
                    status = server.status
                    if status < 300:
                        server.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__((HOST, port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://{HOST}:{self.server_address[1]}{path}"

    def bodies(self) -> list[dict]:
        return [json.loads(body) for _, body in self.posts]

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class Mailbox:
    """Messages an SMTP handler took."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str, bool]] = []  # from, to, text, over TLS

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content.decode(),
                              session.ssl is not None))
        return "250 OK"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def smtp(tls: tuple[Path, Path]) -> Iterator[tuple[Mailbox, int]]:
    """aiosmtpd on 127.0.0.1: STARTTLS required, a login (alerts / hunter2) required after it."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls)
    mailbox = Mailbox()

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> AuthResult:
        return AuthResult(success=auth.login == b"alerts" and auth.password == b"hunter2")

    port = free_port()
    controller = Controller(mailbox, hostname=HOST, port=port, tls_context=context, require_starttls=True,
                            auth_required=True, authenticator=authenticate)
    controller.start()
    yield mailbox, port
    controller.stop()


@pytest.fixture(scope="module")
def svc(make_service: Callable[..., Service], tmp_path_factory: pytest.TempPathFactory,
        tls: tuple[Path, Path]) -> Service:
    return make_service(tmp_path_factory.mktemp("alerts"), 1, {**ENV, "SSL_CERT_FILE": str(tls[0])},
                        projects=("exports", "schedules", "streams", "other"))


def client(svc: Service, project: str) -> httpx.Client:
    return svc.client(svc.keys[project])


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def channel(c: httpx.Client, **spec: Any) -> dict:
    made = c.post("/api/alert-channels", json=spec)
    assert made.status_code == 201, made.text
    return made.json()


def verify(headers: dict[str, str], body: bytes) -> None:
    """The signature export webhooks carry: HMAC-SHA256(secret, f"{timestamp}." + body)."""
    mac = hmac.new(SECRET.encode(), f"{headers['x-signature-timestamp']}.".encode() + body, hashlib.sha256)
    assert headers["x-signature"] == f"sha256={mac.hexdigest()}"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- channels: the API


def test_channel_crud_bounds_and_isolation(svc):
    hook = Receiver()
    try:
        with client(svc, "other") as c, client(svc, "exports") as mine:
            made = channel(c, name="ops", type="webhook", url=hook.url(), kinds=["export_failed"])
            assert made["kinds"] == ["export_failed"] and made["enabled"] and made["stream_failing_minutes"] == 5
            slack = channel(c, name="chat", type="slack", url=hook.url("/services/T000/B000/SECRETPART"))
            assert "SECRETPART" not in json.dumps(slack) and slack["url"].endswith("/…"), "a slack URL is a secret"
            listed = c.get("/api/alert-channels").json()
            assert listed["total"] == 2 and [i["name"] for i in listed["items"]] == ["ops", "chat"]
            assert len(c.get("/api/alert-channels", params={"limit": 1}).json()["items"]) == 1
            patched = c.patch(f"/api/alert-channels/{made['id']}", json={"kinds": ["stream_failing"],
                                                                        "stream_failing_minutes": 0.5})
            assert patched.status_code == 200 and patched.json()["kinds"] == ["stream_failing"]
            assert c.get(f"/api/alert-channels/{made['id']}").json()["stream_failing_minutes"] == 0.5
            for call in (mine.get, mine.delete):
                assert call(f"/api/alert-channels/{made['id']}").status_code == 404, "another project's"
            assert mine.patch(f"/api/alert-channels/{made['id']}", json={"enabled": False}).status_code == 404
            assert made["id"] not in json.dumps(mine.get("/api/alert-channels").json())
            for body, message in [
                ({"name": "x", "type": "slack"}, "needs `url`"),
                ({"name": "x", "type": "email", "to": ["a@example.com"]}, "needs `connection`"),
                ({"name": "x", "type": "email", "connection": "nope", "to": ["a@example.com"]}, "no smtp connection"),
                ({"name": "x", "type": "webhook", "url": "http://10.1.2.3/h"}, "not public"),
                ({"name": "x", "type": "webhook", "url": hook.url(), "kinds": ["everything"]}, "kinds"),
                ({"name": "x", "type": "webhook", "url": hook.url(), "stream_failing_minutes": 99999}, "1440"),
                ({"name": "x", "type": "email", "connection": "m", "to": ["not-an-address"]}, "to"),
                ({"name": "x" * 101, "type": "webhook", "url": hook.url()}, "name"),
                ({"name": "x", "type": "pager", "url": hook.url()}, "type"),
            ]:
                bad = c.post("/api/alert-channels", json=body)
                assert bad.status_code == 422 and message in bad.text, (body, bad.text)
            bad = c.patch(f"/api/alert-channels/{made['id']}", json={"url": None})
            assert bad.status_code == 422 and "needs `url`" in bad.text
            assert c.delete(f"/api/alert-channels/{made['id']}").status_code == 204
            assert c.get(f"/api/alert-channels/{made['id']}").status_code == 404
            assert c.delete(f"/api/alert-channels/{slack['id']}").status_code == 204
            secret = c.post("/api/connections", json={"name": "mail", "type": "smtp", "secrets": {
                "host": HOST, "port": "25", "from_address": "alerts@example.com", "username": "u", "password": "pw"}})
            assert secret.status_code == 201 and "pw" not in secret.text
            assert c.post("/api/connections", json={"name": "plain", "type": "smtp", "secrets": {
                "host": HOST, "from_address": "a@example.com", "username": "u", "password": "p",
                "starttls": "false"}}).status_code == 422, "no password in clear"
            assert c.get("/api/alerts").json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
            made = [channel(c, name=f"c{n}", type="webhook", url=hook.url())["id"] for n in range(50)]
            full = c.post("/api/alert-channels", json={"name": "one-more", "type": "webhook", "url": hook.url()})
            assert full.status_code == 422 and "the most is 50" in full.text
            for channel_id in made:
                assert c.delete(f"/api/alert-channels/{channel_id}").status_code == 204
    finally:
        hook.close()


# ---------------------------------------------------------------- an export failing for good


def test_export_failing_for_good_alerts_each_channel_once_then_on_recovery(svc, smtp):
    mailbox, smtp_port = smtp
    hook, chat = Receiver(refuse=1), Receiver()  # the webhook refuses its first alert: the retry is recorded
    silent = socket.create_server((HOST, 0))  # takes connections, never answers: each send times out
    target = closed_port()
    try:
        with client(svc, "exports") as c:
            assert c.post("/api/events", json=EVENTS).status_code in (200, 202)
            assert c.post("/api/connections", json={"name": "signed", "type": "webhook",
                                                    "secrets": {"signing_secret": SECRET}}).status_code == 201
            assert c.post("/api/connections", json={"name": "mail", "type": "smtp", "secrets": {
                "host": HOST, "port": str(smtp_port), "from_address": "alerts@example.com", "username": "alerts",
                "password": "hunter2"}}).status_code == 201
            webhook = channel(c, name="ops", type="webhook", url=hook.url(), connection="signed",
                              kinds=["export_failed"])
            slack = channel(c, name="chat", type="slack", url=chat.url("/services/T/B/x"))
            email = channel(c, name="oncall", type="email", connection="mail", to=["oncall@example.com"])
            down = channel(c, name="down", type="webhook", url=f"http://{HOST}:{silent.getsockname()[1]}/hook")

            started = time.monotonic()
            export = c.post("/api/exports", json={**WINDOW, "format": "json_lines", "destination": {
                "type": "webhook", "url": f"http://{HOST}:{target}/export"}})
            assert export.status_code == 202, export.text
            export_id = export.json()["id"]
            failed = wait_until(lambda: (e := c.get(f"/api/exports/{export_id}").json())["status"] == "failed" and e,
                                60, "the export to fail for good")
            assert "ConnectError" in failed["result"]["error"]

            def sent(name: str) -> dict | None:
                items = c.get("/api/alerts").json()["items"]
                return next((d for i in items for d in i["deliveries"]
                             if d["channel"] == name and d["status"] in ("sent", "failed")), None)

            # a channel that hangs does not hold exports up: a download export runs while its sends time out
            wait_until(lambda: sent("ops"), 60, "the first alert")
            quick = c.post("/api/exports", json={**WINDOW, "format": "csv"}).json()["id"]
            wait_for(c, quick, timeout=30)
            assert sent("down") is None, "the hanging channel was still being tried when the export completed"
            wait_until(lambda: all(sent(n) for n in ("ops", "chat", "oncall", "down")), 60, "every channel's alert")
            assert time.monotonic() - started < 90

            history = c.get("/api/alerts").json()
            assert history["total"] == 1, "one incident for three failed attempts"
            incident = history["items"][0]
            assert (incident["kind"], incident["object_type"], incident["object_id"]) == \
                   ("export_failed", "export", export_id)
            assert incident["status"] == "open" and incident["attempts"] == 3 and "ConnectError" in incident["error"]
            by_channel = {d["channel"]: d for d in incident["deliveries"]}
            assert by_channel["ops"]["status"] == "sent" and by_channel["ops"]["attempts"] == 2
            assert "503" in by_channel["ops"]["last_error"], "the refused attempt is recorded"
            assert by_channel["down"]["status"] == "failed" and by_channel["down"]["attempts"] == 3
            assert "ReadTimeout" in by_channel["down"]["last_error"]
            assert {d["event"] for d in incident["deliveries"]} == {"opened"}

            headers, body = hook.posts[0]
            verify(headers, body)
            alert = json.loads(body)
            assert alert["object"] == {"type": "export", "id": export_id} and alert["attempts"] == 3
            assert alert["event"] == "opened" and alert["kind"] == "export_failed" and "ConnectError" in alert["error"]
            assert alert["link"] == "https://console.example.test/#/exports" and alert["project"] == "exports"
            text = chat.bodies()[0]["text"]
            assert export_id in text and "failed for good" in text and "after 3 attempt(s)" in text
            sender, to, message, over_tls = mailbox.messages[-1]
            assert (sender, to, over_tls) == ("alerts@example.com", ["oncall@example.com"], True)
            assert export_id in message and "https://console.example.test/#/exports" in message

            # a retry that fails again is the same incident: no second alert
            assert c.post(f"/api/exports/{export_id}/retry").status_code == 202
            wait_until(lambda: c.get(f"/api/exports/{export_id}").json()["status"] == "failed", 60, "failing again")
            time.sleep(1.5)
            assert len(hook.posts) == 1 and len(chat.posts) == 1 and c.get("/api/alerts").json()["total"] == 1

            # the destination comes up; the retried export completes: one recovery alert per channel told
            receiver = Receiver(port=target)
            try:
                assert c.post(f"/api/exports/{export_id}/retry").status_code == 202
                wait_for(c, export_id, timeout=60)
                wait_until(lambda: len(hook.posts) == 2 and len(chat.posts) == 2, 30, "the recovery alerts")
            finally:
                receiver.close()
            verify(*hook.posts[1])
            recovered = json.loads(hook.posts[1][1])
            assert recovered["event"] == "resolved" and recovered["object"]["id"] == export_id
            assert "RESOLVED" in chat.bodies()[1]["text"]
            wait_until(lambda: sum("RESOLVED" in m[2] for m in mailbox.messages) == 1, 30, "the recovery email")
            incident = c.get("/api/alerts").json()["items"][0]
            assert incident["status"] == "resolved" and incident["resolved_at"]
            assert sorted(d["event"] for d in incident["deliveries"] if d["channel"] == "ops") == ["opened", "resolved"]
            with client(svc, "other") as other:
                assert export_id not in other.get("/api/alerts").text, "another project sees none of it"
            for made in (webhook, slack, email, down):
                assert c.delete(f"/api/alert-channels/{made['id']}").status_code == 204
    finally:
        hook.close()
        chat.close()
        silent.close()


def test_an_export_whose_worker_died_on_its_last_attempt_alerts(tmp_path):
    """Two workers die holding the export (their leases run out unrenewed); the next worker fails it."""
    settings = Settings(data_dir=tmp_path, destination_allow=["127.0.0.1"], export={"max_attempts": 2})
    jobs = JobStore.for_data_dir(tmp_path)
    jobs.migrate()
    hook = Receiver()
    try:
        from analytics_export.alerts import ChannelSpec
        from analytics_export.models import ExportRequest
        from analytics_export.runtime.worker import Worker
        from analytics_export.store.alerts import AlertStore

        AlertStore(jobs).create_channel("p", ChannelSpec(name="ops", type="webhook", url=hook.url()))
        request = ExportRequest(**WINDOW, format="csv")
        jobs.create("p", request, 4)
        for attempt in (1, 2):
            assert jobs.claim(f"dead-{attempt}", timedelta(milliseconds=1)).attempts == attempt
            time.sleep(0.05)
        assert not Worker(settings, jobs, name="live").run_one()
        assert jobs.get("p", request.id).status.value == "failed"
        Dispatcher(settings, jobs).send_due()
        alert = hook.bodies()[0]
        assert alert["object"] == {"type": "export", "id": request.id} and alert["attempts"] == 2
        assert "the worker running this export died (worker dead-2" in alert["error"]
    finally:
        hook.close()


# ---------------------------------------------------------------- a schedule that auto-pauses


def test_schedule_auto_paused_after_failed_runs_alerts_and_resume_resolves(svc):
    hook = Receiver()
    try:
        with client(svc, "schedules") as c:
            channel(c, name="ops", type="webhook", url=hook.url(), kinds=["schedule_paused"])
            made = c.post("/api/schedules", json={
                "name": "nightly", "schedule": "0 2 * * *", "date_range": "last_day", "max_failures": 2,
                "destination": {"type": "webhook", "url": f"http://{HOST}:{closed_port()}/hook"}})
            assert made.status_code == 201, made.text
            sid = made.json()["schedule"]["id"]
            filled = c.post(f"/api/schedules/{sid}/backfill", json={"start": "2026-10-01", "end": "2026-10-03"})
            assert filled.status_code == 202, filled.text
            paused = wait_until(lambda: (v := c.get(f"/api/schedules/{sid}").json())["status"] == "paused" and v,
                                90, "the schedule to pause")
            assert "2 consecutive failed runs" in paused["paused_reason"]
            wait_until(lambda: hook.posts, 30, "the alert")
            alert = hook.bodies()[0]
            assert alert["kind"] == "schedule_paused" and alert["object"] == {"type": "schedule", "id": sid}
            assert alert["link"] == f"https://console.example.test/#/schedules/{sid}/runs"
            assert "consecutive failed runs" in alert["error"]
            assert c.post(f"/api/schedules/{sid}/resume").json()["status"] == "active"
            wait_until(lambda: len(hook.posts) == 2, 30, "the recovery alert")
            assert hook.bodies()[1]["event"] == "resolved" and hook.bodies()[1]["resolution"] == "resumed"
            items = c.get("/api/alerts").json()["items"]
            assert sorted(i["kind"] for i in items) == ["export_failed", "export_failed", "schedule_paused"]
            assert all(not i["deliveries"] for i in items if i["kind"] == "export_failed"), "not subscribed to"
    finally:
        hook.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_schedule_that_missed_its_firing_alerts_and_an_on_time_run_resolves(tmp_path, engine, request):
    """The scheduler was not running at a firing (its clock jumps past it); the next on-time run resolves.
    On both job stores: the incident's one-open-per-key insert is each dialect's own."""
    settings = Settings(data_dir=tmp_path, destination_allow=["127.0.0.1"],
                        alerts={"backoff_seconds": 0, "poll_seconds": 0.1})
    jobs = JobStore.for_data_dir(tmp_path, request.getfixturevalue("pg_url") if engine == "postgresql" else None)
    jobs.migrate()
    hook = Receiver()
    try:
        from analytics_export.alerts import ChannelSpec
        from analytics_export.store.alerts import AlertStore

        AlertStore(jobs).create_channel("p", ChannelSpec(name="ops", type="webhook", url=hook.url(),
                                                         kinds=["schedule_missed"]))
        t0 = datetime(2026, 10, 1, 0, 30, tzinfo=timezone.utc)
        spec = ScheduledExport(name="hourly", schedule="0 * * * *", date_range="last_hour", delay_seconds=0,
                               catch_up="latest")
        Schedules(jobs).create("p", spec, t0)  # next run 01:00
        clock = [t0.replace(hour=3, minute=0, second=5)]  # down from 00:30 to 03:00
        scheduler = Scheduler(jobs, "s1", clock=lambda: clock[0])
        assert scheduler.tick() == 1
        Dispatcher(settings, jobs).send_due()
        alert = hook.bodies()[0]
        assert alert["kind"] == "schedule_missed" and "missed its run at 2026-10-01T01:00:00Z" in alert["error"]
        assert "skipped (catch_up latest)" in alert["error"]
        clock[0] = t0.replace(hour=4, minute=0, second=1)
        scheduler.tick()
        Dispatcher(settings, jobs).send_due()
        assert [b["event"] for b in hook.bodies()] == ["opened", "resolved"]
        assert hook.bodies()[1]["resolution"] == "ran on time at 2026-10-01T04:00:00Z"
    finally:
        hook.close()


# ---------------------------------------------------------------- a stream that breaks, then recovers


def test_stream_failing_then_recovering_alerts_once_each_way(svc):
    hook, sink = Receiver(), Receiver(status=503)
    try:
        with client(svc, "streams") as c:
            fast = channel(c, name="ops", type="webhook", url=hook.url(), kinds=["stream_failing"],
                           stream_failing_minutes=0)
            patient = channel(c, name="patient", type="webhook", url=hook.url("/patient"), kinds=["stream_failing"],
                              stream_failing_minutes=60)
            made = c.post("/api/streams", json={"name": "s", "destination": {"type": "webhook", "url": sink.url()},
                                                "max_batch_events": 10, "max_batch_seconds": 0.2,
                                                "failing_after_seconds": 1})
            assert made.status_code == 201, made.text
            stream_id = made.json()["stream"]["id"]
            assert c.post("/api/events", json=EVENTS).status_code in (200, 202)
            wait_until(lambda: hook.posts, 60, "the failing alert")
            alert = hook.bodies()[0]
            assert alert["kind"] == "stream_failing" and alert["object"] == {"type": "stream", "id": stream_id}
            assert "503" in alert["error"] and alert["link"] == "https://console.example.test/#/streams"
            time.sleep(2)  # the stream goes on failing, retrying: still one alert
            assert len(hook.posts) == 1
            sink.status = 200
            wait_until(lambda: len(hook.posts) == 2, 60, "the recovery alert")
            assert hook.bodies()[1]["event"] == "resolved"
            assert all(h["host"].endswith(str(hook.server_address[1])) for h, _ in hook.posts)
            incident = c.get("/api/alerts").json()["items"][0]
            by_channel = {(d["channel"], d["event"]): d["status"] for d in incident["deliveries"]}
            assert by_channel == {("ops", "opened"): "sent", ("ops", "resolved"): "sent",
                                  ("patient", "opened"): "skipped"}, "recovered within the patient one's hour"
            assert len(sink.posts) >= 1
            for made in (fast, patient):
                c.delete(f"/api/alert-channels/{made['id']}")
            c.delete(f"/api/streams/{stream_id}")
    finally:
        hook.close()
        sink.close()


# ---------------------------------------------------------------- retention whose archive fails verification


def test_retention_verification_failure_alerts(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", destination_allow=["127.0.0.1"], alerts={"backoff_seconds": 0})
    store = open_store(settings, read_only=False)
    try:
        generate(store, 300, "default", end=datetime(2026, 6, 1, tzinfo=timezone.utc))
    finally:
        store.close()
    jobs = JobStore.for_data_dir(settings.data_dir)
    jobs.migrate()
    hook = Receiver()
    try:
        from analytics_export.alerts import ChannelSpec
        from analytics_export.store.alerts import AlertStore

        AlertStore(jobs).create_channel("default", ChannelSpec(name="ops", type="webhook", url=hook.url(),
                                                               kinds=["retention_failed"]))
        policy = RetentionPolicy(days=30)

        def stop(step: str) -> None:  # a run killed once its first archive was written
            if step == "archived":
                raise Interrupted(step)

        with pytest.raises(Interrupted):
            Retention(settings, jobs, "default", stop).run(policy)
        archives = (settings.data_dir / "archive" / "default").glob("date=*/*.parquet")
        written = {path: path.read_bytes() for path in archives}
        for path, data in written.items():
            path.write_bytes(data[:-9] + b"corrupted")  # the storage changed it meanwhile
        set_policy(jobs, "default", policy, 300)
        assert run_due(settings, jobs, at=datetime.now(timezone.utc) + timedelta(days=2)) == 1
        Dispatcher(settings, jobs).send_due()
        alert = hook.bodies()[0]
        assert alert["kind"] == "retention_failed" and alert["object"] == {"type": "retention", "id": "default"}
        assert "another checksum" in alert["error"] and alert["attempts"] == 1
        for path, data in written.items():  # restored from the storage's own copy: the next run verifies it
            path.write_bytes(data)
        set_policy(jobs, "default", policy, 300)
        assert run_due(settings, jobs, at=datetime.now(timezone.utc) + timedelta(days=2)) == 1
        Dispatcher(settings, jobs).send_due()
        assert [b["event"] for b in hook.bodies()] == ["opened", "resolved"]
    finally:
        hook.close()


# ---------------------------------------------------------------- the CLI


def test_cli_channels_and_alert_list(tmp_path):
    hook = Receiver()
    env = {"ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]'}
    try:
        made = json.loads(cli(tmp_path, "alerts", "channels", "create", "--name", "ops", "--type", "webhook",
                              "--url", hook.url(), "--kind", "export_failed", env=env))
        assert made["name"] == "ops" and made["kinds"] == ["export_failed"]
        assert json.loads(cli(tmp_path, "alerts", "channels", "list", env=env))["id"] == made["id"]
        bad = subprocess.run([*CLI, "--data-dir", str(tmp_path), "alerts", "channels", "create", "--name", "x",
                              "--type", "slack"], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "needs `url`" in bad.stderr
        assert cli(tmp_path, "alerts", "list", env=env) == ""
        cli(tmp_path, "alerts", "channels", "delete", made["id"], env=env)
        assert cli(tmp_path, "alerts", "channels", "list", env=env) == ""
    finally:
        hook.close()

