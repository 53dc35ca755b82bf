"""Sending one alert to one channel: a signed webhook (signed like export webhooks), a Slack-compatible
incoming webhook (`{"text": ...}`) or an email over SMTP with STARTTLS. Every address passes the SSRF
guard first and every send is bounded by `alerts.timeout_seconds`."""

from __future__ import annotations

import json
import smtplib
import ssl
from datetime import datetime
from email.message import EmailMessage
from typing import Any

from ..alerts import ChannelSpec
from ..config import Settings
from ..destinations.guard import check_host
from ..destinations.webhook_client import WebhookClient, pin, signature
from ..errors import Invalid, Rejected, Upload
from ..store.jobs import aware

TITLES = {"export_failed": "export failed for good", "schedule_paused": "schedule auto-paused",
          "schedule_missed": "schedule missed its window", "stream_failing": "stream failing",
          "retention_failed": "retention run failed verification"}


def console_link(settings: Settings, incident: Any) -> str:
    """The console page of the incident's object (pages without one of their own: the alerts page)."""
    base = settings.public_url.rstrip("/")
    if incident.object_type == "export":
        return f"{base}/#/exports"
    if incident.object_type == "schedule":
        return f"{base}/#/schedules/{incident.object_id}/runs"
    if incident.object_type == "stream":
        return f"{base}/#/streams"
    return f"{base}/#/alerts"


def alert_body(settings: Settings, incident: Any, event: str, delivery_id: str) -> dict[str, Any]:
    """What every channel is told: the object, the error, the attempt count and the console link."""
    def iso(value: datetime | None) -> str | None:
        return aware(value).isoformat() if value is not None else None

    return {"id": delivery_id, "event": event, "incident_id": incident.id, "project": incident.project,
            "kind": incident.kind, "object": {"type": incident.object_type, "id": incident.object_id},
            "error": incident.error, "attempts": incident.attempts, "opened_at": iso(incident.opened_at),
            "resolved_at": iso(incident.resolved_at), "resolution": incident.resolution,
            "link": console_link(settings, incident)}


def alert_text(body: dict[str, Any]) -> str:
    """One line a person reads (Slack, the email's subject and first line)."""
    what = f"{body['object']['type']} {body['object']['id']}"
    title = TITLES[body["kind"]]
    if body["event"] == "resolved":
        return f"[{body['project']}] RESOLVED {title}: {what} ({body['resolution']}) {body['link']}"
    attempts = f" after {body['attempts']} attempt(s)" if body["attempts"] else ""
    return f"[{body['project']}] {title}: {what}{attempts}: {body['error']} {body['link']}"


def send(settings: Settings, spec: ChannelSpec, secrets: dict[str, str], body: dict[str, Any]) -> None:
    """Send `body` over the channel; Upload for a failure worth retrying, Invalid or Rejected otherwise."""
    timeout = settings.alerts.timeout_seconds
    if spec.type == "email":
        send_email(settings, secrets, spec.to or [], body, timeout)
        return
    url = str(spec.url)
    if spec.type == "slack":
        content, headers = json.dumps({"text": alert_text(body)}).encode(), {"Content-Type": "application/json"}
    else:
        content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "X-Alert-Id": body["id"], "X-Alert-Event": body["event"]}
        if secrets.get("authorization"):
            headers["Authorization"] = secrets["authorization"]
        if secrets.get("signing_secret"):
            headers.update(signature(secrets["signing_secret"].encode(), [content]))
    where = f"{spec.type} channel {spec.name!r}"
    with WebhookClient(timeout) as client:
        client.deliver(pin(url, settings.destination_allow), content, headers, where)


class PinnedSMTP(smtplib.SMTP):
    """SMTP to an address the SSRF guard checked, with STARTTLS verifying the certificate against the
    configured host name (smtplib would check it against the address it connected to)."""

    def __init__(self, host: str, address: str, port: int, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.connect(address, port)
        self._host = host  # the name STARTTLS's certificate is checked against


def send_email(settings: Settings, secrets: dict[str, str], to: list[str], body: dict[str, Any],
               timeout: float) -> None:
    host, port = secrets["host"], int(secrets.get("port", "587"))
    address = check_host(host, settings.destination_allow)[0]
    message = EmailMessage()
    message["Subject"] = " ".join(alert_text(body).split())[:200]  # one line: errors may span several
    message["From"] = secrets["from_address"]
    message["To"] = ", ".join(to)
    message.set_content(alert_text(body) + "\n\n" + json.dumps(body, indent=2))
    try:
        with PinnedSMTP(host, address, port, timeout) as smtp:
            if secrets.get("starttls", "true").lower() == "true":
                smtp.starttls(context=ssl.create_default_context())
            if secrets.get("username"):
                smtp.login(secrets["username"], secrets["password"])
            smtp.send_message(message)
    except smtplib.SMTPAuthenticationError:
        raise Rejected(f"SMTP server {host}:{port} refused the username and password; fix the smtp "
                       "connection") from None
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
        raise Rejected(f"SMTP server {host}:{port} refused the message: {exc}") from None
    except ssl.SSLError as exc:
        raise Upload(f"SMTP server {host}:{port}: STARTTLS failed ({exc.reason or exc})") from None
    except smtplib.SMTPNotSupportedError:
        raise Invalid(f"SMTP server {host}:{port} does not offer STARTTLS; set the connection's starttls to "
                      "false only for a server on a trusted network") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise Upload(f"SMTP server {host}:{port}: {type(exc).__name__}: {exc}") from None
