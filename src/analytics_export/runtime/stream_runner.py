"""Runs claimed streams: read new events after the cursor, in (inserted_at, uuid) order, batch them
(at most `max_batch_events`, or what `max_batch_seconds` gathered), send, and only once the
destination acknowledged the batch move the cursor past it. Delivery is therefore at least once:
a worker that dies mid-batch leaves the cursor before it, and whoever takes the stream over sends
that batch again (same name, same ids), never skipping an event.

A failing destination stops the reading (memory holds one batch) and is retried with backoff;
failing for longer than `failing_after_seconds`, the stream shows `failing` with the error, and
turns `active` again by itself once a batch goes through."""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from ..bytesinks import ForwardingSink
from ..config import Settings
from ..connections import Sealer, checked_secrets
from ..destinations import registry
from ..errors import ExportError, Invalid, Rejected
from ..formats import open_writer, writer_class
from ..enums import ExportFormat, codec_problem
from ..models import ExportRequest
from ..privacy.policy import Privacy
from ..sources import IDS, EventQuery
from ..sources.stores import open_store
from ..store.jobs import JobStore, now
from ..store.policies import PrivacyStore
from ..store.streams import Stream, StreamStore
from ..streaming.sinks import Delivery, Sink, sink_for
from ..pipeline.layout import Layout
from ..streaming.spec import StreamSpec

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=10)  # a dead worker's streams are taken over this soon
POLL_SECONDS = 0.1
READ_AHEAD = 20_000
"""Events read per store open, at most (and at least one batch's `max_batch_events`): opening the embedded
store waits for its writer, so reading one batch per open could not keep up with 5,000 events/s."""
BEAT_SECONDS = 1.0
MAX_BACKOFF = 30.0


def cursor_name(cursor: tuple[datetime, str]) -> str:
    return f"{cursor[0]:%Y%m%dT%H%M%S%fZ}-{cursor[1][:8] or '0'}"


def stream_format(spec: StreamSpec) -> ExportFormat:
    """The format batches are read in: JSON Lines for a broker's message per event, Parquet's shape
    (typed timestamps, a column per selected property) for a table, else the stream's."""
    kind = registry.get(spec.destination.type).kind
    if kind == "table":
        return ExportFormat.PARQUET
    return ExportFormat.JSON_LINES if kind == "broker" and spec.message == "event" else spec.format


class StreamRun:
    """One stream, run by this worker while it holds the stream's lease."""

    def __init__(self, settings: Settings, jobs: JobStore, stream: Stream, worker: str, stop: threading.Event,
                 settle: float) -> None:
        self.settings = settings
        self.jobs = jobs
        self.store = StreamStore(jobs)
        self.stream = stream
        self.spec = stream.spec
        self.worker = worker
        self.stop = stop
        self.settle = timedelta(seconds=settle)
        self.read_cursor = (stream.cursor_at, stream.cursor_uuid)
        self.failed_before = stream.failing_since is not None  # a send failed since the last checkpoint
        self.sent_cursor = self.read_cursor
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.first_pending: float | None = None
        self.pending_since: datetime | None = None  # when the oldest pending event was stored: the lag
        self.beat = 0.0
        self.privacy_seen: tuple = ()
        self.format = stream_format(self.spec)
        self.writer_cls = writer_class(self.format)

    def run(self) -> None:
        sink: Sink | None = None
        try:
            problem = codec_problem(self.spec.format, self.spec.compression)
            if problem is not None:  # stored before its format stopped offering the codec
                raise Invalid(f"{problem}; PATCH the stream's compression")
            request = self.request()
            privacy = PrivacyStore(self.jobs, Sealer(self.settings.signing_key())).for_export(
                self.stream.project, request)
            secrets = checked_secrets(self.settings, self.jobs, self.stream.project, self.spec.destination)
            sink = sink_for(self.spec, self.stream.project, self.settings, secrets)
            self.privacy_seen = self.privacy_state()
            self.loop(sink, privacy)
        except ExportError as exc:  # bad configuration: shown on the stream, tried again after a lease
            log.warning("stream %s cannot run: %s", self.stream.id, exc)
            self.store.failed(self.stream.id, self.worker, str(exc), 0)
        except Exception as exc:
            log.exception("stream %s failed unexpectedly", self.stream.id)
            self.store.failed(self.stream.id, self.worker, f"internal error ({type(exc).__name__})", 0)
        finally:
            if sink is not None:
                sink.close()
            self.store.release(self.stream.id, self.worker)

    def privacy_state(self) -> tuple:
        """What the stream's privacy rules depend on: the policy version and the suppression list."""
        policies = PrivacyStore(self.jobs, Sealer(self.settings.signing_key()))
        return policies.policy(self.stream.project)[0], policies.suppression_mark(self.stream.project)

    def request(self) -> ExportRequest:
        """The export request the stream's batches are shaped by (its privacy additions included)."""
        return self.spec.request(format=self.format)

    def alive(self) -> bool:
        """Renew the lease every second; False once the stream is paused, deleted or taken over. With
        nothing pending, the cursor moves past what was read and did not match, so a restart does
        not read it again."""
        if time.monotonic() - self.beat < BEAT_SECONDS:
            return not self.stop.is_set()
        current = self.store.heartbeat(self.stream.id, self.worker, LEASE, self.lag())
        self.beat = time.monotonic()
        if current is None:
            return False
        if not self.pending and self.read_cursor > self.sent_cursor:
            self.store.advance(self.stream.id, self.worker, self.read_cursor)
            self.sent_cursor = self.read_cursor
        if current.spec != self.spec:  # changed: run again from the checkpoint with the new spec
            return False
        if self.privacy_state() != self.privacy_seen:  # a new policy or suppression: restart under it
            return False
        return not self.stop.is_set()

    def lag(self) -> float:
        """Seconds since the oldest event read but not yet delivered was stored."""
        return (now() - self.pending_since).total_seconds() if self.pending_since else 0.0

    def send(self, sink: Sink, delivery: Delivery) -> None:
        """`sink.send(delivery)`, the lease renewed every second meanwhile: a slow send (a big table
        load) must not let another worker take the stream over and send the same batch at once."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(BEAT_SECONDS):
                try:
                    self.store.heartbeat(self.stream.id, self.worker, LEASE, self.lag())
                except Exception as exc:  # the job store may be back at the next beat
                    log.warning("stream %s: heartbeat failed (%s)", self.stream.id, exc)

        thread = threading.Thread(target=renew, name=f"stream-beat-{self.stream.id[:8]}", daemon=True)
        thread.start()
        try:
            sink.send(delivery)
        finally:
            done.set()
            thread.join()

    def loop(self, sink: Sink, privacy: Privacy) -> None:
        ahead = max(self.spec.max_batch_events, READ_AHEAD)
        while self.alive():
            short = self.pending_rows < self.spec.max_batch_events
            got = self.read(privacy, ahead - self.pending_rows) if short else 0
            due = self.pending_rows >= self.spec.max_batch_events or (
                self.pending_rows and time.monotonic() - (self.first_pending or 0) >= self.spec.max_batch_seconds)
            if due:
                if not self.deliver(sink):
                    return
            elif not got:
                self.stop.wait(POLL_SECONDS)

    def read(self, privacy: Privacy, limit: int) -> int:
        """Read up to `limit` new events into the pending batch; returns how many."""
        end = now() - self.settle
        start, after = self.read_cursor
        if end <= start:
            return 0
        request = self.request()
        query = EventQuery.from_request(request.model_copy(update={"start_date": start, "end_date": end}),
                                        self.stream.project, property_columns=not self.format.spec.nested_properties,
                                        text_timestamps=self.writer_cls.text_timestamps)
        query = replace(privacy.query(query), time_field="inserted_at", ids=IDS, after_uuid=after,
                        ordered=True, limit=limit)
        rows = 0
        with closing(open_store(self.settings)) as store:
            for batch in privacy.apply(store.batches(query, limit), query):
                batch = batch.slice(0, limit - rows)
                if not batch.num_rows:
                    break
                self.pending.append(batch)
                rows += batch.num_rows
                last = batch.num_rows - 1
                self.read_cursor = (batch.column("inserted_at")[last].as_py(), batch.column("uuid")[last].as_py())
                if rows >= limit:
                    break
        if rows < limit:  # everything stored before `end` that matches is read: skip past what did not match
            self.read_cursor = max(self.read_cursor, (end, ""))
        if rows:
            self.pending_rows += rows
            self.first_pending = self.first_pending or time.monotonic()
            self.pending_since = self.pending_since or self.pending[0].column("inserted_at")[0].as_py()
        return rows

    def deliver(self, sink: Sink) -> bool:
        """Send the first `max_batch_events` pending events as one batch until the destination takes it;
        False if the stream must stop, or was changed (PATCHed, paused, a new privacy policy) since the
        last heartbeat: what the API answered for a change holds for every batch sent after it."""
        self.beat = 0.0  # a heartbeat now, whenever the last one was
        if not self.alive():
            return False
        batch = front(self.pending, self.spec.max_batch_events)
        first, last = row_cursor(batch[0], 0), row_cursor(batch[-1], batch[-1].num_rows - 1)
        delivery = self.encode(batch, f"{cursor_name(first)}_{cursor_name(last)}")
        attempt = 0
        while True:
            try:
                self.send(sink, delivery)
                break
            except ExportError as exc:
                attempt += 1
                permanent = isinstance(exc, (Rejected, Invalid))
                log.warning("stream %s: batch %s not delivered (%s)", self.stream.id, delivery.name, exc)
                self.store.failed(self.stream.id, self.worker, str(exc), self.spec.failing_after_seconds)
                self.failed_before = True
                wait = min(MAX_BACKOFF, 0.5 * 2 ** min(attempt, 8)) * random.uniform(0.8, 1.2)
                if permanent:
                    wait = MAX_BACKOFF
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    if not self.alive():
                        return False
                    self.stop.wait(min(0.2, deadline - time.monotonic()))
        events = sum(b.num_rows for b in batch)
        if not self.store.checkpoint(self.stream.id, self.worker, last, events, recovered=self.failed_before):
            return False  # the lease was lost: the new owner sends this batch again
        self.failed_before = False
        self.sent_cursor = last
        self.pending = front(self.pending, self.pending_rows, skip=events)
        self.pending_rows -= events
        if self.pending:
            self.pending_since = self.pending[0].column("inserted_at")[0].as_py()
        else:
            self.first_pending, self.pending_since = None, None
        return True

    def encode(self, batches: list[pa.RecordBatch], name: str) -> Delivery:
        """The batch as one body in the stream's format (and compression), and as one JSON message per
        event for brokers; a table takes the Arrow batches as they are."""
        if registry.get(self.spec.destination.type).kind == "table":
            return Delivery(name=name, body=b"", messages=[], content_type="", rows=batches)
        batches = [b.drop_columns(["inserted_at"]) for b in batches]
        if getattr(self.spec.destination, "per_event", ()):  # a file in each partition's folder
            layout = Layout(self.spec.destination, {})  # type: ignore[arg-type]
            encoded = [(layout.folder(key), *self.body([rows])[:2]) for key, rows in layout.grouped(batches)]
            return Delivery(name=name, body=b"", messages=[], content_type=self.format.content_type,
                            parts=[(folder, body) for folder, body, _ in encoded], content_encoding=encoded[0][2])
        body, encoding, wraps = self.body(batches)
        messages: list[tuple[str, bytes]] = []
        if registry.get(self.spec.destination.type).kind == "broker" and self.spec.message == "event":
            lines = body.split(b"\n")[:-1] if not wraps else self.lines(batches)
            uuids = pc.cast(pa.chunked_array([b.column("uuid") for b in batches]), pa.string()).to_pylist()
            messages = list(zip(uuids, lines))
        return Delivery(name=name, body=body, messages=messages, content_type=self.format.content_type,
                        content_encoding=encoding)

    def body(self, batches: list[pa.RecordBatch]) -> tuple[bytes, str | None, bool]:
        """`batches` as one body in the stream's format and compression; the compression's HTTP name when
        it wraps the body (text formats), and whether it does."""
        schema = batches[0].schema
        out = io.BytesIO()
        counted = ForwardingSink(out)
        compression = self.spec.compression
        writer, sink = open_writer(self.writer_cls, counted, schema, self.format, compression)
        wraps = sink is not counted
        try:
            for batch in batches:
                writer.write(writer.encode(batch))
            writer.close()
            sink.finish()
        finally:
            writer.release()
        encoding = compression.value if wraps and compression else None  # text offers gzip and zstd: HTTP's names
        return out.getvalue(), encoding, wraps

    def lines(self, batches: list[pa.RecordBatch]) -> list[bytes]:
        out = io.BytesIO()
        writer = self.writer_cls(ForwardingSink(out), batches[0].schema, None)
        try:
            for batch in batches:
                writer.write(writer.encode(batch))
        finally:
            writer.release()
        return out.getvalue().split(b"\n")[:-1]


def front(batches: list[pa.RecordBatch], rows: int, skip: int = 0) -> list[pa.RecordBatch]:
    """`rows` rows of `batches` after the first `skip`, as slices (no copy)."""
    out: list[pa.RecordBatch] = []
    for b in batches:
        if skip >= b.num_rows:
            skip -= b.num_rows
            continue
        part = b.slice(skip, rows)
        skip = 0
        if part.num_rows:
            out.append(part)
            rows -= part.num_rows
        if not rows:
            break
    return out


def row_cursor(batch: pa.RecordBatch, row: int) -> tuple[datetime, str]:
    """The (inserted_at, uuid) of `batch`'s row `row`: where a stream's cursor stands after it."""
    return batch.column("inserted_at")[row].as_py(), batch.column("uuid")[row].as_py()


class StreamSupervisor:
    """Claims streams for this worker (up to `max_streams`) and runs each in its own thread."""

    def __init__(self, settings: Settings, jobs: JobStore, worker: str, max_streams: int = 8,
                 settle: float = 0.5) -> None:
        self.settings = settings
        self.jobs = jobs
        self.worker = worker
        self.max_streams = max_streams
        self.settle = settle
        self.threads: dict[str, threading.Thread] = {}

    def run(self, stop: threading.Event, every: float = 1.0) -> None:
        store = StreamStore(self.jobs)
        while not stop.is_set():
            self.threads = {k: t for k, t in self.threads.items() if t.is_alive()}
            room = self.max_streams - len(self.threads)
            if room > 0:
                try:
                    for stream in store.claim(self.worker, LEASE, room):
                        if stream.id in self.threads:  # its run here is alive, only late to renew (waiting for
                            continue                   # the store): a second run would send every batch twice
                        run = StreamRun(self.settings, self.jobs, stream, self.worker, stop, self.settle)
                        thread = threading.Thread(target=run.run, name=f"stream-{stream.id[:8]}", daemon=True)
                        self.threads[stream.id] = thread
                        thread.start()
                except Exception:  # the job store may be back at the next round
                    log.exception("stream supervisor %s: job store error", self.worker)
            stop.wait(every)
        for thread in self.threads.values():
            thread.join(timeout=10)

