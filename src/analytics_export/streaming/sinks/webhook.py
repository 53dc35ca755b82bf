"""A stream's batches POSTed to a webhook, signed as webhook exports are (X-Signature over
`{timestamp}.{body}`); `X-Batch-Id` names the batch's range, the same when it is sent again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...destinations import redact
from ...destinations.specs import WebhookDestination
from ...destinations.webhook_client import WebhookClient, pin, signature
from . import Delivery

if TYPE_CHECKING:
    from ...config import Settings
    from ..spec import StreamSpec

class WebhookSink:
    def __init__(self, spec: StreamSpec, settings: Settings, secrets: dict[str, str]) -> None:
        self.stream = spec
        self.destination: WebhookDestination = spec.destination  # type: ignore[assignment]
        self.settings = settings
        self.secrets = secrets
        self.secret = secrets.get("signing_secret", "").encode() or None
        self.client = WebhookClient(settings.export.upload_timeout_seconds)

    def send(self, delivery: Delivery) -> None:
        url = self.destination.url
        pinned = pin(url, self.settings.destination_allow)  # again each batch: a name may move
        headers = {**self.destination.headers, "Content-Type": delivery.content_type, "X-Stream-Id": self.stream.id,
                   "X-Batch-Id": delivery.name}
        if delivery.content_encoding:
            headers["Content-Encoding"] = delivery.content_encoding
        if self.secrets.get("authorization"):
            headers["Authorization"] = self.secrets["authorization"]
        if self.secret is not None:
            headers.update(signature(self.secret, [delivery.body]))
        self.client.deliver(pinned, delivery.body, headers, f"webhook {redact(url, self.secrets)}")

    def close(self) -> None:
        self.client.close()


def build(spec: StreamSpec, project: str, settings: Settings, secrets: dict[str, str]) -> WebhookSink:
    return WebhookSink(spec, settings, secrets)
