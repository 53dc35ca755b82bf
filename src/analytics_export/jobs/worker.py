"""A worker: claims export jobs from the job store and runs each through the pipeline under a lease."""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from datetime import timedelta
from pathlib import Path

from .. import open_store
from ..config import Settings
from ..connections import checked_secrets
from ..destinations import Target, destination_for
from ..errors import ExportError, Storage, Upload
from ..models import ExportResult, ExportStatus
from ..pipeline import Cancelled, Progress, run_export
from .scheduler import Scheduler
from .store import Job, JobStore, now

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, jobs: JobStore, *, lease: timedelta = timedelta(seconds=30),
                 name: str | None = None) -> None:
        self.settings = settings
        self.jobs = jobs
        self.lease = lease
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def run(self, stop: threading.Event, poll: float = 0.5) -> None:
        """Run jobs until `stop` is set; when the queue is empty, sweep expired downloads and wait.
        A scheduler thread runs alongside (only the one holding the leader lease acts)."""
        scheduler = threading.Thread(target=Scheduler(self.jobs, self.name).run, args=(stop,),
                                     name="scheduler", daemon=True)
        scheduler.start()
        while not stop.is_set():
            if not self.run_one():
                self.sweep()
                stop.wait(poll)
        scheduler.join()

    def sweep(self) -> None:
        """Mark exports past their expiry as expired and delete their files."""
        for job in self.jobs.expire(now()):
            if job.destination_path:
                Path(job.destination_path).unlink(missing_ok=True)
            log.info("export %s expired; its file was deleted", job.id)

    def run_one(self) -> bool:
        """Claim and run one job; False when there was none."""
        job = self.jobs.claim(self.name, self.lease)
        if job is None:
            return False
        log.info("export %s claimed by %s (attempt %d)", job.id, self.name, job.attempts)
        self._run(job)
        return True

    def _run(self, job: Job) -> None:
        progress = Progress()
        lost = threading.Event()
        beating = threading.Event()

        def heartbeat() -> None:
            while not beating.wait(min(self.lease.total_seconds() / 3, 0.5)):  # cancels land within 0.5 s
                if not self.jobs.heartbeat(job.id, self.name, self.lease, progress.events, progress.bytes):
                    lost.set()
                    return

        def track(p: Progress) -> None:
            progress.events, progress.bytes = p.events, p.bytes

        beat = threading.Thread(target=heartbeat, name=f"heartbeat-{job.id[:8]}", daemon=True)
        beat.start()
        try:
            result, retryable = self._export(job, track, lost)
        except Cancelled:
            current = self.jobs.get(job.project, job.id)
            if lost.is_set() and current is not None and not current.cancel_requested:
                log.warning("export %s: lease lost, leaving it to its new owner", job.id)
            else:
                self.jobs.cancel_acknowledged(job.id, self.name)
            return
        finally:
            beating.set()
            beat.join()
        config = self.settings.export
        if retryable and job.attempts < config.max_attempts:
            wait = config.retry_backoff_seconds * 2 ** (job.attempts - 1) * random.uniform(0.8, 1.2)
            log.warning("export %s attempt %d failed (%s); retrying in %.1fs", job.id, job.attempts, result.error, wait)
            self.jobs.retry_later(job.id, self.name, result.error or "", now() + timedelta(seconds=wait))
            return
        downloadable = result.status is ExportStatus.COMPLETED and job.request.destination.type == "download"
        expires = now() + timedelta(hours=config.file_expiry_hours) if downloadable else None
        if not self.jobs.finish(job.id, self.name, result, expires):
            log.warning("export %s finished after its lease was lost; the result is discarded", job.id)

    def target(self, job: Job) -> Target:
        """The job's destination with its connection's secrets, checked against the allow-list again
        (a name may resolve elsewhere now than when the export was created)."""
        secrets = checked_secrets(self.settings, self.jobs, job.project, job.request.destination)
        return Target(job.request, job.project, self.settings, secrets)

    def _export(self, job: Job, track, lost: threading.Event) -> tuple[ExportResult, bool]:
        """The run's result, and whether a failure is worth another attempt (a store or upload
        failure may pass; bad input or an encoding error will not)."""
        request = job.request
        try:
            destination = destination_for(self.target(job))
            try:
                store = open_store(self.settings)
                try:
                    return run_export(request, store, destination, project=job.project,
                                      batch_size=self.settings.export.batch_size,
                                      on_progress=track, should_stop=lost.is_set), False
                finally:
                    store.close()
            finally:
                destination.close()
        except Cancelled:
            raise
        except ExportError as exc:
            failed = ExportResult(export_id=job.id, status=ExportStatus.FAILED, error=str(exc), completed_at=now())
            return failed, isinstance(exc, (Storage, Upload))
        except Exception as exc:  # a bug: keep the worker alive, record it, log the traceback
            log.exception("export %s failed unexpectedly", job.id)
            return ExportResult(export_id=job.id, status=ExportStatus.FAILED, completed_at=now(),
                                error=f"internal error ({type(exc).__name__}); see the worker log"), False
