"""Webhooks: the export POSTed to a URL, optionally as several requests of at most N events or about
M bytes, each a valid document on its own.

Each request's body is spooled, as a range of one temporary file, while the export runs (memory
stays bounded whatever its size, one file is open however many batches), then the requests are
sent in order once the export is complete, so each can carry X-Batch-Index / X-Batch-Count and be
retried on its own. A receiver verifies
`X-Signature: sha256=HEX` as HMAC-SHA256(secret, f"{X-Signature-Timestamp}." + body).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from email.utils import parsedate_to_datetime
from typing import BinaryIO, Callable, Iterator

import httpx

from ..errors import Cancelled, Rejected, Upload, os_error
from . import Destination, Placement, Probe, redact
from .specs import WebhookDestination as WebhookSpec
from .webhook_client import RETRY_STATUSES, Pinned, WebhookClient, permanent_hint, pin, signature

READ_SIZE = 1 << 20


class SpooledBody:
    """One request body: a range of the export's spool file, appended while the body is written."""

    def __init__(self, spool: BinaryIO, folder: str, name: str) -> None:
        self.name = name
        self.spool = spool
        self.folder = folder
        self.start = spool.seek(0, os.SEEK_END)
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        try:
            written = self.spool.write(data)
        except OSError as exc:
            raise os_error(exc, self.folder) from exc
        self.size += written
        return written

    def commit(self) -> str:
        try:
            self.spool.flush()
        except OSError as exc:
            raise os_error(exc, self.folder) from exc
        return self.name

    def abort(self) -> None:
        """Nothing to release: the bytes stay in the spool, which the destination closes."""

    def chunks(self) -> Iterator[bytes]:
        offset, end = self.start, self.start + self.size
        while offset < end and (chunk := os.pread(self.spool.fileno(), min(READ_SIZE, end - offset), offset)):
            offset += len(chunk)
            yield chunk


class Webhook(Destination):
    manifest = False

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self.spec: WebhookSpec = placement.spec
        self.secret = placement.secrets.get("signing_secret", "").encode() or None
        folder = placement.settings.data_dir / "spool"
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = str(folder)
        self.bodies: dict[str, SpooledBody] = {}
        self.spool: BinaryIO | None = None

    def open(self, name: str) -> SpooledBody:
        """A body appended to the export's one spool file: the pipeline writes its parts one after
        another, so a thousand small batches hold one file open, not a thousand."""
        if self.spool is None:
            try:
                self.spool = tempfile.TemporaryFile(dir=self.folder)
            except OSError as exc:
                raise os_error(exc, self.folder) from exc
        body = self.bodies[name] = SpooledBody(self.spool, self.folder, name)
        return body

    def remove(self, name: str) -> None:
        self.bodies.pop(name, None)

    def finish(self, uris: list[str], should_stop: Callable[[], bool]) -> str:  # "URIs": the bodies' part names
        """Send every body, in order, until `should_stop()`; a receiver may see a retried batch twice
        (same X-Batch-Index), and a cancelled export's first batches without the rest."""
        export_id = self.placement.export_id
        headers = {**self.spec.headers, "Content-Type": self.placement.content_type, "X-Export-Id": export_id,
                   "X-Batch-Count": str(len(uris))}
        if self.placement.content_encoding:
            headers["Content-Encoding"] = self.placement.content_encoding
        if self.placement.secrets.get("authorization"):
            headers["Authorization"] = self.placement.secrets["authorization"]
        pinned = pin(self.spec.url, self.placement.settings.destination_allow)
        with WebhookClient(self.placement.settings.export.upload_timeout_seconds) as client:
            for index, name in enumerate(uris, start=1):
                if should_stop():
                    raise Cancelled(f"export {export_id} was cancelled after {index - 1} of {len(uris)} batches")
                body = self.bodies[name]
                batch = {**headers, "X-Batch-Index": str(index), "Content-Length": str(body.size)}
                self.send(client, pinned, body, batch, index, len(uris))
        return self.spec.url

    def send(self, client: WebhookClient, pinned: Pinned, body: SpooledBody, headers: dict, index: int,
             count: int) -> None:
        """POST one body, retrying transient failures with exponential backoff and jitter."""
        config = self.placement.settings.export
        where = f"webhook {redact(self.spec.url, self.placement.secrets)} (batch {index} of {count})"
        for attempt in range(config.upload_retries + 1):
            wait = config.upload_backoff_seconds * 2 ** attempt * random.uniform(0.5, 1.5)
            if self.secret is not None:
                headers.update(signature(self.secret, body.chunks()))
            try:
                response = client.post(pinned, body.chunks(), headers)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}"
            else:
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code not in RETRY_STATUSES:
                    raise Rejected(f"{where} answered {problem}: {permanent_hint(response.status_code)}")
                wait = max(wait, retry_after(response))
            if attempt < config.upload_retries:
                time.sleep(min(wait, 60))
        raise Upload(f"{where} failed after {config.upload_retries + 1} attempts: {problem}")

    def probe(self, probe: Probe) -> None:
        """One request as an export's would be sent (signed, with its headers and authorization), marked
        `X-Destination-Test: true` (as batch 1 of 1 of export `destination-test`), its body `{"test": true}`;
        any answer below 300 passes."""
        body = json.dumps({"test": True, "sent_by": "analytics-export"}).encode()
        headers = {**self.spec.headers, "Content-Type": "application/json", "X-Destination-Test": "true",
                   "X-Export-Id": self.placement.export_id or "destination-test", "X-Batch-Index": "1",
                   "X-Batch-Count": "1"}
        if self.placement.secrets.get("authorization"):
            headers["Authorization"] = self.placement.secrets["authorization"]
        if self.secret is not None:
            headers.update(signature(self.secret, [body]))
        where = f"webhook {redact(self.spec.url, self.placement.secrets)}"
        with probe.step("send", "signed" if self.secret is not None else "unsigned (no signing_secret)") as notes:
            pinned = pin(self.spec.url, self.placement.settings.destination_allow)
            with WebhookClient(self.placement.settings.export.upload_timeout_seconds) as client:
                response = client.deliver(pinned, body, headers, where)
            notes.append(f"answered HTTP {response.status_code}")

    def close(self) -> None:
        self.bodies.clear()
        if self.spool is not None:
            try:
                self.spool.close()
            except OSError:
                pass  # flushing the rest on a full disk, which the failed write reported: it is discarded
            self.spool = None


def retry_after(response: httpx.Response) -> float:
    """Seconds a 429/503 asks to wait (delta seconds or an HTTP date); 0 when absent."""
    value = response.headers.get("Retry-After", "")
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 0.0


def build(placement: Placement) -> Webhook:
    return Webhook(placement)
