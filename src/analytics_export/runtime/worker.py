"""A worker: claims export jobs from the job store and runs each through the pipeline under a lease."""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import threading
import time
import uuid
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterator

from ..config import Settings
from ..connections import Sealer, checked_secrets
from ..destinations import Placement, destination_for
from ..enums import ExportStatus
from ..models import ExportResult
from ..pipeline.batches import Progress
from ..privacy.policy import Privacy
from ..sources import EventQuery
from ..sources.stores import open_store
from ..store.jobs import Job, JobStore, now
from ..store.policies import PrivacyStore
from ..store.wakeups import wakeup_for
from .alerts import Dispatcher
from .isolated import Attempt, Child, Outcome, outcome_of, perform, run_isolated
from .partitions import discard, plan, staging
from .retention import run_due
from .scheduler import Scheduler
from .stream_runner import StreamSupervisor

REAP_SECONDS = 5.0
POLL_SECONDS = 0.5
"""How often an idle worker looks for a job unwoken (`store/wakeups.py` wakes it when one is queued),
and sweeps: expires downloads, removes stale staging folders."""

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, jobs: JobStore, *, lease: timedelta = timedelta(seconds=30),
                 name: str | None = None) -> None:
        self.settings = settings
        self.jobs = jobs
        self.lease = lease
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.reaped = 0.0
        self.policies = PrivacyStore(jobs, Sealer(settings.signing_key()))
        self.spare: Child | None = None
        """The process the next export attempt runs in (`export.isolate`), started ahead."""

    def run(self, stop: threading.Event, poll: float = POLL_SECONDS) -> None:
        """Run jobs until `stop` is set; when the queue is empty, sweep expired downloads and wait.
        A scheduler thread runs alongside (only the one holding the leader lease acts), one that
        claims streams and runs each in a thread of its own, and the alert dispatcher."""
        scheduler = threading.Thread(target=Scheduler(self.jobs, self.name, config=self.settings.export).run, args=(stop,),
                                     name="scheduler", daemon=True)
        scheduler.start()
        retention = threading.Thread(target=self.retention, args=(stop,), name="retention", daemon=True)
        retention.start()
        streams = threading.Thread(target=StreamSupervisor(
            self.settings, self.jobs, self.name, self.settings.streams_per_worker,
            self.settings.stream_settle()).run, args=(stop,), name="streams", daemon=True)
        if self.settings.streams_per_worker:
            streams.start()
        alerts = threading.Thread(target=Dispatcher(self.settings, self.jobs).run, args=(stop,), name="alerts",
                                  daemon=True)
        alerts.start()
        wakeup, swept = wakeup_for(self.jobs.engine), 0.0
        self.spare = self.spare or self.spare_child()
        try:
            while not stop.is_set():
                try:
                    if self.run_one():
                        continue
                    if time.monotonic() - swept >= poll:  # not on every wake-up
                        swept = time.monotonic()
                        self.sweep()
                except Exception:  # the job store is unreachable, say: keep the worker alive, try again
                    log.exception("worker %s: job store error", self.name)
                wakeup.wait(stop, poll)
        finally:
            wakeup.close()
            if self.spare is not None:
                self.spare.close()
                self.spare = None
        scheduler.join()
        retention.join()
        alerts.join()
        if streams.is_alive():
            streams.join()

    def sweep(self) -> None:
        """Mark exports past their expiry as expired and delete their files; close stopped partitioned
        exports, and remove staging folders that no running export owns."""
        for job in self.jobs.expire(now()):
            if job.destination_path:
                Path(job.destination_path).unlink(missing_ok=True)
                if job.request.destination.type == "download":  # a persons or sessions export's manifest
                    Path(job.destination_path).with_name(job.request.manifest_name).unlink(missing_ok=True)
            log.info("export %s expired; its file was deleted", job.id)
        self.reap()
        for folder in self.settings.staging_dir.glob("*"):
            job = self.jobs.get_any(folder.name)
            if job is None or job.status not in (ExportStatus.PENDING, ExportStatus.PROCESSING):
                shutil.rmtree(folder, ignore_errors=True)

    def retention(self, stop: threading.Event, every: float = 5.0) -> None:
        """Run due retention policies, in a thread of their own: a day's archive takes a while, and
        exports go on meanwhile. Each project's run holds a lease, so workers never run one twice."""
        while not stop.wait(every):
            try:
                if run_due(self.settings, self.jobs):
                    log.info("retention policies ran")
            except Exception:  # the job store may be back at the next round
                log.exception("worker %s: retention error", self.name)

    def reap(self, export_id: str | None = None) -> None:
        """Close partitioned exports that failed or were cancelled, removing their partitions' output."""
        if export_id is None:
            self.reaped = time.monotonic()
        for job, rows in self.jobs.reap(export_id):
            try:
                discard(job, rows, self.settings, lambda: destination_for(self.placement(job)))
            except Exception as exc:  # the export has failed either way; say what may be left behind
                log.warning("export %s: could not remove its partitions' files (%s)", job.id, exc)
            log.info("export %s: closed after failure or cancellation", job.id)

    def run_one(self) -> bool:
        """Claim and run one job or partition; False when there was none."""
        if time.monotonic() - self.reaped > REAP_SECONDS:  # a cancelled export none of whose partitions runs
            self.reap()
        for export_id, error in self.jobs.fail_abandoned(self.settings.export.max_attempts):
            log.error("export %s failed: %s", export_id, error)
            self.reap(export_id)  # a partitioned one: its other partitions' files
        job = self.jobs.claim(self.name, self.lease)
        if job is None:
            return False
        if job.parts is None and job.partition is None:
            with self._beating(lambda: self.jobs.heartbeat(job.id, self.name, self.lease, 0, 0)) as lost:
                windows = self.windows(job)
            if lost.is_set():
                self._stopped(job)
                return True
            if windows and self.jobs.partition(job.id, self.name, windows):
                log.info("export %s: run as %d partitions", job.id, len(windows))
                return True
        if job.partition is not None:
            log.info("export %s partition %d/%d claimed by %s (attempt %d)", job.id, job.partition.number,
                     job.parts, self.name, job.partition.attempts)
            self._run_partition(job)
        else:
            log.info("export %s claimed by %s (attempt %d)", job.id, self.name, job.attempts)
            self._run(job)
        return True

    def windows(self, job: Job) -> list[tuple[datetime, datetime]]:
        """The partitions of a claimed export if its range is long and holds enough events (an
        estimate from the store's index or statistics), else none. The embedded store's exports are
        not partitioned (unless `partition_embedded`): the one machine that holds its file runs them on
        its cores already, so partitions would share those cores and add only their staging and joining
        (5M demo events through 2 workers: CSV 2.5 s whole, 7.3 s as partitions; Avro 2.8 s, 3.8 s)."""
        config = self.settings.export
        embedded = self.settings.events_engine == "duckdb" and not config.partition_embedded
        if embedded or not plan(job.request, config):
            return []
        try:
            with closing(open_store(self.settings)) as store:
                events = store.estimate(EventQuery.from_request(job.request, job.project))
        except Exception as exc:  # the export's own run meets and reports the same problem
            log.warning("export %s: not partitioned, the event store could not estimate it (%s)", job.id, exc)
            return []
        self.expect(job, events)
        return plan(job.request, config, events)

    def expect(self, job: Job, events: int | None) -> None:
        """Record the events `job` expects; a job store that fails here fails the progress bar only."""
        try:
            self.jobs.expect(job.id, self.name, events)
        except Exception as exc:
            log.warning("export %s: could not record its expected size (%s)", job.id, exc)

    @contextmanager
    def _beating(self, beat: Callable[[], bool]) -> Iterator[threading.Event]:
        """Call `beat` (extend the lease, record progress) a few times a lease until it returns False,
        which sets the yielded event: the run is no longer this worker's and must stop."""
        lost = threading.Event()
        stopped = threading.Event()

        def loop() -> None:
            renewed = time.monotonic()
            while not stopped.wait(min(self.lease.total_seconds() / 3, 0.5)):  # cancels land within 0.5 s
                try:
                    if beat():
                        renewed = time.monotonic()
                        continue
                except Exception as exc:  # the job store may come back before the lease runs out
                    log.warning("heartbeat failed (%s)", exc)
                    if time.monotonic() - renewed < self.lease.total_seconds() / 2:
                        continue  # else stop before another worker may take the lease over
                lost.set()
                return

        thread = threading.Thread(target=loop, name="heartbeat", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stopped.set()
            thread.join()

    def _run(self, job: Job) -> None:
        """Run a whole export, or assemble a partitioned one whose partitions are done."""
        progress = Progress(job.events_done, job.bytes_done)
        with self._beating(lambda: self.jobs.heartbeat(job.id, self.name, self.lease, progress.events,
                                                       progress.bytes)) as lost:
            outcome = self._attempt(job, progress, lost, assembled=bool(job.parts))
        if outcome.cancelled:
            self._stopped(job)
            return
        result, error, retryable = outcome.value, outcome.error, outcome.retryable
        config = self.settings.export
        if result is None:
            if retryable and job.attempts < config.max_attempts:
                wait = self.backoff(job.attempts)
                log.warning("export %s attempt %d failed (%s); retrying in %.1fs", job.id, job.attempts, error, wait)
                self.jobs.retry_later(job.id, self.name, error or "", now() + timedelta(seconds=wait))
                return
            result = ExportResult(export_id=job.id, status=ExportStatus.FAILED, error=error, completed_at=now())
        downloadable = result.status is ExportStatus.COMPLETED and job.request.destination.type == "download"
        expires = now() + timedelta(hours=config.file_expiry_hours) if downloadable else None
        if not self.jobs.finish(job.id, self.name, result, expires):
            log.warning("export %s finished after its lease was lost; the result is discarded", job.id)
        elif job.parts and result.status is ExportStatus.FAILED:
            self.reap(job.id)
        elif job.parts:
            shutil.rmtree(staging(self.settings, job.id), ignore_errors=True)

    def _stopped(self, job: Job) -> None:
        """A run of `job` stopped because its heartbeat was refused: acknowledge a cancel, or leave
        the export to whoever took its lease over."""
        current = self.jobs.get(job.project, job.id)
        if current is not None and not current.cancel_requested:
            log.warning("export %s: lease lost, leaving it to its new owner", job.id)
        else:
            self.jobs.cancel_acknowledged(job.id, self.name)
            self.reap(job.id)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after failed attempt number `attempts`: doubling, with jitter."""
        return self.settings.export.retry_backoff_seconds * 2 ** (attempts - 1) * random.uniform(0.8, 1.2)

    def _run_partition(self, job: Job) -> None:
        """Run one partition; a failure retries that partition alone, up to `max_attempts` times."""
        part = job.partition
        progress = Progress()
        with self._beating(lambda: self.jobs.partition_heartbeat(job, self.name, self.lease, progress.events,
                                                                 progress.bytes)) as lost:
            outcome = self._attempt(job, progress, lost)
        if outcome.cancelled:
            log.info("export %s partition %d stopped", job.id, part.number)
            self.jobs.partition_released(job, self.name)
            self.reap(job.id)
            return
        files, error, retryable = outcome.value, outcome.error, outcome.retryable
        if files is not None:
            last = self.jobs.partition_done(job, self.name, self.lease, files)
            if last:
                log.info("export %s: all %d partitions done, assembling", job.id, job.parts)
                self._run(self.jobs.get(job.project, job.id))
            elif last is None:
                log.warning("export %s partition %d finished after its lease was lost", job.id, part.number)
            else:
                self.reap(job.id)  # closes the export if it was cancelled meanwhile
            return
        config = self.settings.export
        retry_at = None
        if retryable and part.attempts < config.max_attempts:
            wait = self.backoff(part.attempts)
            retry_at = now() + timedelta(seconds=wait)
            log.warning("export %s partition %d attempt %d failed (%s); retrying it in %.1fs", job.id,
                        part.number, part.attempts, error, wait)
        self.jobs.partition_failed(job, self.name, error or "", retry_at)
        if retry_at is None:
            self.reap(job.id)

    def privacy(self, job: Job) -> Privacy:
        """The rules `job` runs under: the policy version current when it first started (so all its
        partitions agree), plus the request's own, with the suppression list as it is now."""
        return self.policies.for_export(job.project, job.request, self.policies.pin(job.id, job.project))

    def placement(self, job: Job) -> Placement:
        """The job's destination with its connection's secrets, checked against the allow-list again
        (a name may resolve elsewhere now than when the export was created)."""
        secrets = checked_secrets(self.settings, self.jobs, job.project, job.request.destination)
        return Placement.for_export(job.request, job.project, self.settings, secrets)

    def _attempt(self, job: Job, progress: Progress, lost: threading.Event, *, assembled: bool = False) -> Outcome:
        """One attempt of `job` (with `assembled`, the assembly of its partitions), in a child process
        unless `export.isolate` is off; `progress` follows it, and it stops once `lost` is set."""
        def track(p: Progress) -> None:
            progress.events, progress.bytes = p.events, p.bytes

        def prepare() -> Attempt:
            parts = [row.files for row in self.jobs.partitions(job.id)] if assembled else None
            return Attempt(self.settings, job, self.privacy(job), self.placement(job), parts)

        prepared = outcome_of(job.id, prepare)
        if prepared.value is None:
            return prepared
        report = {"on_progress": track, "on_expected": lambda events: self.expect(job, events),
                  "should_stop": lost.is_set}
        if not self.settings.export.isolate:
            return perform(prepared.value, **report)
        child, self.spare = self.spare, None
        try:
            return run_isolated(prepared.value, child=child, **report)
        finally:
            self.spare = self.spare_child()

    def spare_child(self) -> Child | None:
        """A child process for the next attempt, started now; None if isolation is off or it cannot start
        (the attempt starts its own)."""
        if not self.settings.export.isolate:
            return None
        try:
            return Child()
        except OSError as exc:
            log.warning("worker %s: could not start a spare export process (%s)", self.name, exc)
            return None
