"""The alert dispatcher: a worker thread that sends due deliveries, each in a bounded time, retries a
failed one with doubling backoff up to `alerts.max_attempts` and records every attempt. It runs beside
the exports, never in their path: a channel that is down delays other alerts, never an export."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from urllib.parse import urlsplit

from ..alerts import ChannelSpec

from ..config import Settings
from ..connections import Sealer
from ..destinations.guard import check_host
from ..errors import ExportError, Invalid, Rejected
from ..store.alerts import AlertStore, Delivery
from ..store.jobs import JobStore, now
from .notify import alert_body, send

log = logging.getLogger(__name__)
BATCH = 20


def check_channel(settings: Settings, jobs: JobStore, project: str, spec: ChannelSpec) -> None:
    """Invalid, saying what to fix, unless the channel can be sent to: complete for its type, its URL's
    host public (or allowed), its connection a project's connection of the right type. The dispatcher
    checks the host again at each send (a name may resolve elsewhere by then)."""
    problem = spec.problem()
    if problem is not None:
        raise Invalid(problem)
    if spec.url is not None:
        check_host(urlsplit(str(spec.url)).hostname or "", settings.destination_allow)
    if spec.connection is not None:
        wanted = "smtp" if spec.type == "email" else "webhook"
        row = jobs.connection(project, spec.connection)
        if row is None or row.type != wanted:
            raise Invalid(f"connection: no {wanted} connection {spec.connection!r} in this project; create it with "
                          "POST /api/connections")
        if wanted == "smtp":
            check_host(Sealer(settings.signing_key()).open(row.sealed)["host"], settings.destination_allow)


class Dispatcher:
    def __init__(self, settings: Settings, jobs: JobStore) -> None:
        self.settings = settings
        self.jobs = jobs
        self.store = AlertStore(jobs)
        self.sealer = Sealer(settings.signing_key())

    def run(self, stop: threading.Event) -> None:
        """Send due alerts until `stop` is set; a job store error is logged and tried again."""
        while not stop.wait(self.settings.alerts.poll_seconds):
            try:
                while self.send_due() == BATCH and not stop.is_set():
                    pass
            except Exception:
                log.exception("alert dispatcher error")

    def send_due(self) -> int:
        """Send the deliveries due now (at most BATCH); returns how many were claimed."""
        claimed = self.store.claim(BATCH)
        for delivery in claimed:
            self.deliver(delivery)
        return len(claimed)

    def secrets(self, delivery: Delivery) -> dict[str, str]:
        """The channel's connection's secrets (a webhook's signing secret, an SMTP login); Invalid if it is
        gone or of another type."""
        spec = delivery.channel.spec
        if spec.connection is None:
            return {}
        row = self.jobs.connection(delivery.channel.project, spec.connection)
        wanted = "smtp" if spec.type == "email" else "webhook"
        if row is None or row.type != wanted:
            raise Invalid(f"the channel's connection {spec.connection!r} is not a {wanted} connection of this "
                          "project; create it with POST /api/connections")
        return self.sealer.open(row.sealed)

    def deliver(self, delivery: Delivery) -> None:
        channel = delivery.channel
        if channel is None or not channel.spec.enabled:
            self.store.skip(delivery.id, "the channel was deleted" if channel is None else "the channel is disabled")
            return
        config = self.settings.alerts
        attempt = delivery.attempts + 1
        try:
            send(self.settings, channel.spec, self.secrets(delivery),
                 alert_body(self.settings, delivery.incident, delivery.event, delivery.id))
        except ExportError as exc:
            error = self.settings.hide_paths(str(exc))
            again = attempt < config.max_attempts and not isinstance(exc, (Invalid, Rejected))
            wait = config.backoff_seconds * 2 ** (attempt - 1)
            self.store.record(delivery.id, error, now() + timedelta(seconds=wait) if again else None)
            log.warning("alert %s to channel %s: attempt %d failed (%s)%s", delivery.id, channel.id, attempt, error,
                        f"; again in {wait:.1f}s" if again else "; not sent")
        except Exception as exc:  # a bug: recorded, the dispatcher goes on
            log.exception("alert %s to channel %s failed unexpectedly", delivery.id, channel.id)
            self.store.record(delivery.id, f"internal error ({type(exc).__name__}); see the worker log", None)
        else:
            self.store.record(delivery.id, None, None)
            log.info("alert %s (%s %s) sent to channel %s", delivery.id, delivery.incident.kind, delivery.event,
                     channel.id)
