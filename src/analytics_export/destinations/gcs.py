"""Google Cloud Storage (google-cloud-storage): a resumable upload per file, sent in 8 MiB chunks
while the export runs; the object exists only once the last chunk finalises it, and an aborted
upload's session is cancelled. Honours STORAGE_EMULATOR_HOST (the emulator needs no credentials)."""

from __future__ import annotations

import json
import os
from typing import Iterator
from urllib.parse import urlsplit

from google.api_core import exceptions as api
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import RefreshError
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account

from ..errors import ExportError, NotFound, Rejected, Upload
from . import Destination, Placement, redact
from .guard import check_host
from .specs import GCSDestination as GCSSpec

CHUNK = 8 << 20  # a multiple of 256 KiB, as resumable uploads require


class GCSUpload:
    def __init__(self, gcs: GCS, key: str) -> None:
        self.gcs = gcs
        self.uri = f"gs://{gcs.spec.bucket}/{key}"
        blob = gcs.bucket.blob(key, chunk_size=CHUNK)
        self.writer = gcs.guard(lambda: blob.open("wb", chunk_size=CHUNK, retry=gcs.retry, ignore_flush=True,
                                                  content_type=gcs.placement.content_type))

    def write(self, data: bytes | memoryview) -> int:
        return self.gcs.guard(lambda: self.writer.write(data))

    def commit(self) -> str:
        self.gcs.guard(self.writer.close)
        return self.uri

    def abort(self) -> None:
        try:
            self.writer.terminate()
        except Exception:  # best effort: an unfinished session never becomes an object and expires
            pass


def service_account_credentials(placement: Placement) -> service_account.Credentials:
    """The connection's service account (`service_account_json`); its token_uri, where the credentials
    POST a signed JWT, must pass the SSRF guard."""
    info = json.loads(placement.secrets["service_account_json"])
    if info.get("token_uri"):
        check_host(urlsplit(info["token_uri"]).hostname or "", placement.settings.destination_allow)
    return service_account.Credentials.from_service_account_info(info)


class GCS(Destination):
    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self.spec: GCSSpec = placement.spec
        config = placement.settings.export
        backoff = max(config.upload_backoff_seconds, 0.01)  # google's retries are bounded by time, not count:
        deadline = backoff * 2 ** (config.upload_retries + 1) + 5  # about upload_retries doubling waits
        self.retry = DEFAULT_RETRY.with_delay(initial=backoff, multiplier=2, maximum=30).with_timeout(deadline)
        self.client = self.guard(self._client)
        self.bucket = self.client.bucket(self.spec.bucket)

    def _client(self) -> storage.Client:
        options = {"api_endpoint": self.spec.endpoint_url} if self.spec.endpoint_url else None
        if self.placement.secrets.get("service_account_json"):
            credentials = service_account_credentials(self.placement)
            return storage.Client(project=credentials.project_id, credentials=credentials, client_options=options)
        if os.environ.get("STORAGE_EMULATOR_HOST"):  # an emulator needs no credentials
            return storage.Client(project="analytics-export", credentials=AnonymousCredentials(),
                                  client_options=options)
        return storage.Client(client_options=options)  # application default credentials from the environment

    def guard(self, call):
        """Run a client call; errors become Rejected (fix something) or Upload (retry the export)."""
        try:
            return call()
        except (api.Forbidden, api.Unauthorized) as exc:
            raise Rejected(f"gs://{self.spec.bucket} refused the upload ({exc.code}): check the connection's "
                           "service account and its permission to create objects there") from None
        except api.NotFound:
            raise Rejected(f"gs://{self.spec.bucket} does not exist: create the bucket or fix its name") from None
        except RefreshError:
            raise Rejected(f"gs://{self.spec.bucket}: the service account's token request was refused; check "
                           "the connection's service_account_json") from None
        except Exception as exc:
            if isinstance(exc, ExportError):
                raise
            status = getattr(getattr(exc, "response", None), "status_code", None)  # a resumable upload's
            if status == 404:
                raise Rejected(f"gs://{self.spec.bucket} does not exist: create the bucket or fix its name") from None
            if status in (401, 403):
                raise Rejected(f"gs://{self.spec.bucket} refused the upload ({status}): check the connection's "
                               "service account and its permission to create objects there") from None
            reason = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self.placement.secrets)
            raise Upload(f"upload to gs://{self.spec.bucket} failed: {reason}") from None

    def open(self, name: str) -> GCSUpload:
        return GCSUpload(self, self.placement.key(name))

    def remove(self, name: str) -> None:
        try:
            self.bucket.blob(self.placement.key(name)).delete()
        except Exception:  # best effort after a failed export
            pass

    def read(self, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Ranged downloads of the generation found first (the reloaded blob names it in each): a
        replacement during the read fails it instead of splicing two versions."""
        key = self.placement.key(name)
        blob = self.bucket.blob(key)

        def unless_missing(call, error: ExportError):
            try:
                return call()
            except api.NotFound:
                raise error from None

        missing = NotFound(f"gs://{self.spec.bucket}/{key} does not exist")
        self.guard(lambda: unless_missing(lambda: blob.reload(retry=self.retry), missing))
        changed = Upload(f"gs://{self.spec.bucket}/{key} was replaced or deleted during the read")
        for start in range(0, blob.size, chunk_size):
            end = min(start + chunk_size, blob.size) - 1  # inclusive
            yield self.guard(lambda: unless_missing(lambda: blob.download_as_bytes(
                start=start, end=end, checksum=None, retry=self.retry), changed))

    def location(self, name: str) -> str:
        return f"gs://{self.spec.bucket}/{self.placement.key(name)}"

    def close(self) -> None:
        self.client.close()


def build(placement: Placement) -> GCS:
    return GCS(placement)
