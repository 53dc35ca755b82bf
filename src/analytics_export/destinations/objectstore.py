"""Uploads to object stores through obstore (S3, Azure Blob): one streaming multipart put per file.

The writer's bytes go to a thread running `obstore.put` over a bounded queue, which uploads parts
of PART_SIZE while the export runs and completes the object only when the queue ends. On abort the
iterator raises, and obstore aborts the multipart upload: no object, no orphaned parts.
"""

from __future__ import annotations

import queue
import re
import threading
from datetime import timedelta
from typing import Callable, Iterator

import obstore
from obstore.exceptions import NotFoundError, PermissionDeniedError, PreconditionError, UnauthenticatedError

from ..errors import NotFound, Rejected, Upload
from . import Destination, Placement, redact

PART_SIZE = 8 << 20
QUEUED_CHUNKS = 1  # writer chunks are a batch each (~5 MB): one waits while obstore fills a part
READ_WINDOW = 64 << 20  # bytes per ranged GET of `read`: the request timeout bounds each, not the object


class Aborted(Exception):
    """Raised into obstore's iterator to make it abort the multipart upload."""


def retry_config(placement: Placement) -> dict:
    """obstore's retries (exponential backoff with jitter on 5xx, 429, timeouts and resets) from ExportConfig."""
    config = placement.settings.export
    return {"max_retries": config.upload_retries,
            "backoff": {"init_backoff": timedelta(seconds=config.upload_backoff_seconds),
                        "max_backoff": timedelta(seconds=30), "base": 2},
            "retry_timeout": timedelta(seconds=config.upload_timeout_seconds * (config.upload_retries + 1))}


def client_options(placement: Placement, url: str | None) -> dict:
    timeout = timedelta(seconds=placement.settings.export.upload_timeout_seconds)
    return {"allow_http": bool(url and url.startswith("http://")), "timeout": timeout, "connect_timeout": timeout}


class ObjectUpload:
    def __init__(self, store: obstore.store.ObjectStore, key: str, uri: str, explain: Callable[[Exception], Exception],
                 attributes: dict | None) -> None:
        self.uri = uri
        self.explain = explain
        self.chunks: queue.Queue = queue.Queue(maxsize=QUEUED_CHUNKS)
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._put, args=(store, key, attributes), name="object-put", daemon=True)
        self.thread.start()

    def _stream(self) -> Iterator[bytes]:
        while (chunk := self.chunks.get()) is not None:
            if isinstance(chunk, Aborted):
                raise chunk
            yield chunk

    def _put(self, store, key: str, attributes: dict | None) -> None:
        try:
            obstore.put(store, key, self._stream(), chunk_size=PART_SIZE, max_concurrency=2,
                        attributes=attributes)
        except Aborted:
            pass
        except Exception as exc:  # raised by the writer's next write, or by commit
            self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise self.explain(self.error) from None  # the original may quote request URLs

    def _offer(self, item: bytes | Aborted | None) -> None:
        """Queue `item` for the put thread, unless that thread has ended (it failed)."""
        while self.thread.is_alive():
            try:
                self.chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def write(self, data: bytes | memoryview) -> int:
        self._raise()
        self._offer(bytes(data))
        return len(data)

    def commit(self) -> str:
        self._offer(None)
        self.thread.join()
        self._raise()
        return self.uri

    def abort(self) -> None:
        self._offer(Aborted())
        self.thread.join()


class ObjectStoreDestination(Destination):
    """Objects under `placement.key(name)` in `store`; `scheme` names them in URIs (s3://bucket/key)."""

    def __init__(self, placement: Placement, store: obstore.store.ObjectStore, uri_root: str,
                 attributes: dict | None = None) -> None:
        self.placement = placement
        self.store = store
        self.uri_root = uri_root
        self.attributes = attributes

    def open(self, name: str) -> ObjectUpload:
        key = self.placement.key(name)
        return ObjectUpload(self.store, key, f"{self.uri_root}/{key}", self.explain, self.attributes)

    def remove(self, name: str) -> None:
        try:
            obstore.delete(self.store, self.placement.key(name))
        except Exception:  # best effort: the export failed already, and that error is the one to report
            pass

    def read(self, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Ranged GETs of READ_WINDOW bytes, each streamed in chunks; `if_match` fails the read if
        the object is replaced between two of them."""
        key = self.placement.key(name)
        try:
            meta = obstore.head(self.store, key)
            for start in range(0, meta["size"], READ_WINDOW):
                options = {"range": (start, min(start + READ_WINDOW, meta["size"])), "if_match": meta["e_tag"]}
                yield from obstore.get(self.store, key, options=options).stream(min_chunk_size=chunk_size)
        except Exception as exc:
            if isinstance(exc, NotFoundError) or "status code: 404" in str(exc):
                raise NotFound(f"{self.uri_root}/{key} does not exist") from None
            if isinstance(exc, PreconditionError):
                raise Upload(f"{self.uri_root}/{key} was replaced during the read") from None
            raise self.explain(exc) from None

    def location(self, name: str) -> str:
        return f"{self.uri_root}/{self.placement.key(name)}"

    def explain(self, exc: Exception) -> Exception:
        """A message that says what to fix, without the request URL (it may carry a SAS token)."""
        where = self.uri_root
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
            return Rejected(f"{where} refused the upload ({type(exc).__name__}): check the connection's "
                            "credentials and their permission to write there")
        status = re.search(r"status code: (\d{3}) ([^:]*)", str(exc))
        code = int(status.group(1)) if status else None
        if isinstance(exc, NotFoundError) or code == 404:
            return Rejected(f"{where} does not exist: create the bucket or container, or fix its name")
        if code in (401, 403):
            return Rejected(f"{where} refused the upload (HTTP {code}): check the connection's credentials "
                            "and their permission to write there")
        reason = f"HTTP {code} {status.group(2)}" if status else (str(exc).splitlines() or [type(exc).__name__])[0]
        return Upload(f"upload to {where} failed after retries: {redact(reason, self.placement.secrets)}")

