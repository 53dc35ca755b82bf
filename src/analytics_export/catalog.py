"""What a project's events look like, for people choosing what to export: the event names and the
property names seen in a sample of a window, and the first rows an export would hold.

Everything is read through the same source and privacy path as an export, so the console never
shows a name or a value the project's policy keeps out, and every event store answers alike. Names
and properties come from the first `sample` events of the window (a bounded read, not a full scan):
on a big store, counts are of that sample, and the answer says so."""

from __future__ import annotations

import json
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, replace

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from .formats.jsonl import JsonLinesWriter
from .models import ExportRequest
from .privacy.policy import Privacy
from .sources import EventQuery, EventSource

NAMES_SAMPLE = 200_000
PROPERTIES_SAMPLE = 10_000
PREVIEW_ROWS = 20


@dataclass
class Counted:
    """Names with the number of sampled events that have each, most frequent first."""

    counts: list[tuple[str, int]]
    sampled: bool  # True if the window held more events than were read


def sampled(source: EventSource, query: EventQuery, privacy: Privacy, limit: int) -> tuple[list[pa.RecordBatch], bool]:
    """The first `limit` events of `query` as they would leave in an export, and whether there were more."""
    query = privacy.query(query)
    batches, rows = [], 0
    with closing(source.batches(query, min(limit, 16_384))) as reader:
        for batch in privacy.apply(reader, query):
            if rows + batch.num_rows > limit:
                batches.append(batch.slice(0, limit - rows))
                return batches, True
            batches.append(batch)
            rows += batch.num_rows
    return batches, False


def ranked(counts: Counter, q: str, limit: int) -> list[tuple[str, int]]:
    needle = q.casefold()
    return [(name, n) for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            if needle in name.casefold()][:limit]


def event_names(source: EventSource, query: EventQuery, privacy: Privacy, q: str = "", limit: int = 50,
                sample: int = NAMES_SAMPLE) -> Counted:
    """Event names of the window containing `q` (any case)."""
    batches, more = sampled(source, query, privacy, sample)
    counts: Counter = Counter()
    for batch in batches:
        for row in pc.value_counts(batch.column("event")).to_pylist():
            counts[row["values"]] += row["counts"]
    return Counted(ranked(counts, q, limit), more)


def property_names(source: EventSource, query: EventQuery, privacy: Privacy, q: str = "", limit: int = 200,
                   sample: int = PROPERTIES_SAMPLE) -> Counted:
    """Top-level property names of the window's events containing `q`."""
    batches, more = sampled(source, replace(query, properties=None, property_columns=False), privacy, sample)
    counts: Counter = Counter()
    if batches:
        props = pa.Table.from_batches(batches).select(["properties"])  # noqa: F841 (DuckDB reads it by name)
        with closing(duckdb.connect(":memory:")) as con:
            rows = con.sql("SELECT k, count(*) FROM (SELECT unnest(json_keys(properties)) AS k FROM props) "
                           "GROUP BY k").fetchall()
        counts.update(dict(rows))
    return Counted(ranked(counts, q, limit), more)


def preview(source: EventSource, request: ExportRequest, project: str, privacy: Privacy,
            rows: int = PREVIEW_ROWS) -> tuple[list[dict], bool]:
    """The first `rows` events `request` would export, as JSON objects (the JSON Lines shape, with
    the policy applied), and whether it holds more."""
    query = EventQuery.from_request(request, project, text_timestamps=True)
    batches, more = sampled(source, query, privacy, rows)
    if not batches:
        return [], False
    writer = JsonLinesWriter(None, privacy.query(query).schema, None)  # encodes only; writes nowhere
    try:
        text = b"".join(bytes(writer.encode(batch)) for batch in batches)
    finally:
        writer.release()
    return [json.loads(line) for line in text.splitlines()], more
