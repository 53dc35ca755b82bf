"""Testing a destination before anything is saved (`POST /api/destinations/test`, `analytics-export
destinations test`, the console's Test button): the steps an export would take, each timed, stopped at
the first that fails with what failed and why, in words that say what to fix.

The steps: the host is checked against the SSRF guard (`address`), the connection's secrets are found
(`credentials`), the client is built (`connect`), then the destination's own `probe`: files are written,
read back and deleted under a `.analytics-export-test-*` name; a webhook gets one signed request marked
`X-Destination-Test: true`; a table is checked inside a transaction that is rolled back; a broker is
connected to and its stream or queue looked up. Nothing a test leaves is mistaken for an export.
One attempt per request, with a short timeout: a test answers in seconds, not after an export's retries."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

from .connections import checked_secrets
from .destinations import Placement, Probe, StepFailed, destination_for, registry
from .destinations.guard import check_destination
from .destinations.specs import FileLayout
from .errors import Limited

if TYPE_CHECKING:
    from .config import Settings
    from .store.jobs import JobStore

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 15.0
"""Each request of a test (connect, write, read) fails after this long."""
CONCURRENT = 4
"""Tests running at once on one server; another is refused (429) until one ends."""
RUNNING = threading.BoundedSemaphore(CONCURRENT)


def quick(settings: Settings) -> Settings:
    """`settings` for a test: one attempt per request, each within TIMEOUT_SECONDS."""
    export = settings.export.model_copy(update={"upload_retries": 0, "upload_timeout_seconds": TIMEOUT_SECONDS})
    return settings.model_copy(update={"export": export})


def try_destination(spec: Any, project: str, settings: Settings, jobs: JobStore) -> Probe:
    """Run every step of testing `spec` (a destination's settings) for `project`; Limited when
    CONCURRENT tests run already."""
    if not RUNNING.acquire(blocking=False):
        raise Limited(f"{CONCURRENT} destination tests are running on this server; try again in a few seconds")
    try:
        probe = Probe()
        try:
            with probe.step("address", "every host it names is allowed"):
                check_destination(spec, settings.destination_allow)
            with probe.step("credentials") as notes:
                probe.secrets = checked_secrets(settings, jobs, project, spec)
                notes.append(f"connection {spec.connection!r}" if getattr(spec, "connection", None)
                             else "no connection")
            target = build(spec, project, quick(settings), probe)
            try:
                target.probe(probe)
            finally:
                close(target)
        except StepFailed:
            pass
        return probe
    finally:
        RUNNING.release()


def close(target: Any) -> None:
    """Release the tested client; its failure (a connection already gone) is not the test's answer."""
    try:
        target.close()
    except Exception:  # noqa: BLE001 - the steps said what works; closing is housekeeping
        log.debug("closing a tested destination failed", exc_info=True)


def build(spec: Any, project: str, settings: Settings, probe: Probe) -> Any:
    """The destination (or, for a broker, the stream sink) `spec` names, built as an export or a stream
    would build it: the `connect` step."""
    kind = registry.get(spec.type)
    with probe.step("connect", f"{kind.label}: client ready"):
        if kind.export is not None:
            folder = spec.prefix.strip("/") if isinstance(spec, FileLayout) else ""
            return destination_for(Placement(spec, project, settings, probe.secrets, folder, "text/plain"))
        from .streaming.spec import StreamSpec

        stream = StreamSpec.model_construct(id=str(uuid.uuid4()), name="destination test", destination=spec,
                                            message="event")
        return registry.load(kind.stream)(stream, project, settings, probe.secrets)
