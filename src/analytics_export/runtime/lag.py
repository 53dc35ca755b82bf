"""How far behind a stream is: events stored after its cursor that it selects, and the age of the
oldest of them."""

from __future__ import annotations

from contextlib import closing
from dataclasses import replace
from datetime import timedelta

from ..config import Settings
from ..connections import Sealer
from ..sources import IDS, EventQuery
from ..sources.stores import open_store
from ..store.jobs import JobStore, now
from ..store.policies import PrivacyStore
from ..store.streams import Stream


def lag(settings: Settings, jobs: JobStore, stream: Stream) -> tuple[int, float]:
    """(events, seconds) the stream has yet to deliver, its project's suppressions left out."""
    if settings.events_engine == "duckdb" and not settings.events_path.exists():
        return 0, 0.0  # no event yet: opening would create the store, racing an ingest doing the same (500)
    spec = stream.spec
    privacy = PrivacyStore(jobs, Sealer(settings.signing_key())).for_export(stream.project, spec.request())
    query = EventQuery(project=stream.project, start=stream.cursor_at, end=now() + timedelta(seconds=1),
                       events=tuple(spec.events), filters=tuple(spec.filters), time_field="inserted_at",
                       after_uuid=stream.cursor_uuid)
    query = replace(query, protection=privacy.protection())
    with closing(open_store(settings)) as store:
        events = store.count(query)
        if not events:
            return 0, 0.0
        oldest = replace(query, ids=IDS, ordered=True, limit=1)
        for batch in store.batches(oldest, 1):
            if batch.num_rows:
                return events, max(0.0, (now() - batch.column("inserted_at")[0].as_py()).total_seconds())
    return events, 0.0

