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

import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import ExportError, Limited, NotFound, Upload
from . import Destination, redact, registry

if TYPE_CHECKING:
    from ..config import Settings
    from ..store.jobs import JobStore

TIMEOUT_SECONDS = 15.0
"""Each request of a test (connect, write, read) fails after this long."""
CONCURRENT = 4
"""Tests running at once on one server; another is refused (429) until one ends."""
RUNNING = threading.BoundedSemaphore(CONCURRENT)


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float


class StepFailed(Exception):
    """Ends a test at the step that failed (recorded already)."""


@dataclass
class Probe:
    """The steps of one test, in order; a failed step's message has the connection's secrets taken out."""

    secrets: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    @contextmanager
    def step(self, name: str, done: str = "") -> Iterator[list[str]]:
        """Record the step `name`: passed with `done` (or what the body appends to the yielded list),
        or failed with its error's message; a failure raises StepFailed."""
        started, notes = time.monotonic(), [done] if done else []
        try:
            yield notes
        except StepFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is the test's answer, in words
            self.steps.append(Step(name, False, explain(exc, self.secrets), round(time.monotonic() - started, 3)))
            raise StepFailed(name) from None
        self.steps.append(Step(name, True, "; ".join(notes), round(time.monotonic() - started, 3)))

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)


def explain(exc: BaseException, secrets: dict[str, str]) -> str:
    """An error's message for the caller: ours as written, another library's first line with its type."""
    if isinstance(exc, ExportError):
        text = str(exc)
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return redact(text, secrets)[:2000]


def scratch_name() -> str:
    return f".analytics-export-test-{uuid.uuid4().hex[:12]}"


def write_read_delete(probe: Probe, where: str, put: Callable[[bytes], object], get: Callable[[], bytes],
                      delete: Callable[[], object], gone: Callable[[], bool]) -> None:
    """The file check every store shares: `put` a small object, `get` it back whole, `delete` it, and
    see that it is `gone`."""
    body = f"analytics-export destination test {uuid.uuid4()}\n".encode()
    with probe.step("write", f"wrote {where} ({len(body)} bytes)"):
        put(body)
    try:
        with probe.step("read back", "read it back whole"):
            got = get()
            if got != body:
                raise Upload(f"{where} read back {len(got)} bytes that differ from the {len(body)} written")
    finally:
        with probe.step("delete", "deleted it"):
            delete()
            if not gone():
                raise Upload(f"{where} is still there after its delete: grant the credentials permission to "
                             "delete (a failed export removes its parts)")


def probe_files(destination: Destination, probe: Probe, where: Callable[[str], str]) -> None:
    """`write_read_delete` through a Destination's own upload, read and remove."""
    name = scratch_name()

    def put(body: bytes) -> None:
        upload = destination.open(name)
        try:
            upload.write(body)
            upload.commit()
        except BaseException:
            upload.abort()
            raise

    def gone() -> bool:
        try:
            b"".join(destination.read(name))
        except NotFound:
            return True
        return False

    write_read_delete(probe, where(name), put, lambda: b"".join(destination.read(name)),
                      lambda: destination.remove(name), gone)


def quick(settings: Settings) -> Settings:
    """`settings` for a test: one attempt per request, each within TIMEOUT_SECONDS."""
    export = settings.export.model_copy(update={"upload_retries": 0, "upload_timeout_seconds": TIMEOUT_SECONDS})
    return settings.model_copy(update={"export": export})


def try_destination(spec: Any, project: str, settings: Settings, jobs: JobStore) -> Probe:
    """Run every step of testing `spec` (a destination's settings) for `project`; Limited when
    CONCURRENT tests run already."""
    from ..connections import checked_secrets
    from ..destinations.guard import check_destination

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
                target.close()
        except StepFailed:
            pass
        return probe
    finally:
        RUNNING.release()


def build(spec: Any, project: str, settings: Settings, probe: Probe) -> Any:
    """The destination (or, for a broker, the stream sink) `spec` names, built as an export or a stream
    would build it: the `connect` step."""
    from . import Placement, destination_for
    from .specs import FileLayout

    kind = registry.get(spec.type)
    with probe.step("connect", f"{kind.label}: client ready"):
        if kind.export is not None:
            folder = spec.prefix.strip("/") if isinstance(spec, FileLayout) else ""
            return destination_for(Placement(spec, project, settings, probe.secrets, folder, "text/plain"))
        from ..streaming.spec import StreamSpec

        stream = StreamSpec.model_construct(id=str(uuid.uuid4()), name="destination test", destination=spec,
                                            message="event")
        return registry.load(kind.stream)(stream, project, settings, probe.secrets)
