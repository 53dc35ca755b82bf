"""Files laid out by each event's own values: a `path_template` with `{event_date}`, `{event_hour}` or
`{event}` gives every value (every day, hour or event name the export's events have) a folder of its
own, Hive-style (`date={event_date}/event={event}`), whatever window the run covers: a late event lands
in the partition of its own time, not the run's.

The partitions are counted first (one GROUP BY of the export's query); more than MAX_PARTITIONS is
refused before anything is written. Then one scan reads the export's rows sorted by partition (the
store sorts, spilling to disk past its memory cap), and each run of a partition's rows goes to its own
file (or split series), committed before the next opens: memory and open files are those of one plain
export whatever the number of partitions. (A store read in pages sorts each page: a partition whose
rows span pages gets a file per page.) The manifest lists every file with its events and its
partition's values."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from ..destinations.specs import MAX_EVENT_SLUG, MAX_PARTITIONS, FileLayout, render_folder
from ..errors import Invalid
from ..formats import writer_for
from ..sources import utc_strftime
from .batches import Progress, scanned
from .files import Filling, Part, export_query

if TYPE_CHECKING:
    from ..destinations import Destination
    from ..models import ExportRequest
    from ..privacy.policy import Privacy
    from ..sources import EventQuery, EventSource

SAFE = re.compile(r"[A-Za-z0-9._-]")
"""What `{event}` keeps as it is: letters, digits, `.`, `_` and `-` (but a leading `.` or `_`: readers skip
such folders as hidden)."""


def event_slug(name: str) -> str:
    """`name` percent-encoded as Hive escapes partition values (pyarrow and DuckDB read it back as it was);
    past MAX_EVENT_SLUG characters, cut after a whole character and ended by `~` and a hash of the whole
    name (`~` is never kept as it is), so it stays unique."""
    parts = [c if SAFE.fullmatch(c) and not (i == 0 and c in "._") else "".join(f"%{b:02X}" for b in c.encode())
             for i, c in enumerate(name)]
    slug = "".join(parts)
    if len(slug) <= MAX_EVENT_SLUG:
        return slug
    cut = ""
    for part in parts:
        if len(cut) + len(part) > MAX_EVENT_SLUG - 13:
            break
        cut += part
    return f"{cut}~{hashlib.sha256(name.encode()).hexdigest()[:12]}"


class Layout:
    """The per-event placeholders of an export's `path_template`: a partition is a tuple of the day
    (`YYYY-MM-DD`), with `{event_hour}` the hour (`HH`), and with `{event}` the event name, of its rows."""

    def __init__(self, spec: FileLayout, values: dict[str, str]) -> None:
        self.fields = spec.per_event
        self.template: str = spec.path_template or ""
        self.values = values
        self.times = ("%Y-%m-%d", "%H") if "event_hour" in self.fields else ("%Y-%m-%d",) \
            if "event_date" in self.fields else ()
        self.by_event = "event" in self.fields

    def keys(self) -> tuple[str, ...]:
        """A partition's values in the store's SQL: the order rows are read in."""
        return tuple(utc_strftime('events."timestamp"', f) for f in self.times) + (
            ("events.event",) if self.by_event else ())

    def check(self, source: EventSource, query: EventQuery) -> int:
        """The number of partitions with events; Invalid over MAX_PARTITIONS, before anything is written."""
        count = len(source.grouped(query, list(self.keys())))
        if count > MAX_PARTITIONS:
            raise Invalid(f"path_template's {', '.join('{' + f + '}' for f in self.fields)} give {count:,} "
                          f"partitions; the most is {MAX_PARTITIONS:,}: narrow the window or the events, or drop a "
                          "placeholder")
        return count

    def runs(self, batch: pa.RecordBatch) -> Iterator[tuple[tuple[str, ...], pa.RecordBatch]]:
        """`batch` cut where its partition changes: each run's partition and rows."""
        columns = self.key_columns(batch)
        changed = pa.array([False] * max(batch.num_rows - 1, 0))
        for column in columns:
            changed = pc.or_(changed, pc.not_equal(column[1:], column[:-1]))
        cuts = [0, *(i + 1 for i in pc.indices_nonzero(changed).to_pylist()), batch.num_rows]
        for start, end in zip(cuts, cuts[1:]):
            if end > start:
                yield tuple(c[start].as_py() for c in columns), batch.slice(start, end - start)

    def named(self, key: tuple[str, ...]) -> dict[str, str]:
        """The placeholders' values of partition `key`."""
        out = dict(zip(("event_date", "event_hour"), key[:len(self.times)]))
        if self.by_event:
            out["event"] = event_slug(key[-1])
        return {f: out[f] for f in self.fields}

    def folder(self, key: tuple[str, ...]) -> str:
        """The partition's folder under the destination's prefix: the template with its values."""
        return render_folder("", self.template, {**self.values, **self.named(key)})

    def grouped(self, batches: list[pa.RecordBatch]) -> list[tuple[tuple[str, ...], pa.RecordBatch]]:
        """A stream's batch (at most its max_batch_events rows) as one record batch per partition, in order."""
        table = pa.Table.from_batches(batches)
        keys = [f"__key{i}" for i in range(len(self.keys()))]
        for name, column in zip(keys, self.key_columns(table)):
            table = table.append_column(name, column)
        rows = table.sort_by([(k, "ascending") for k in keys]).drop_columns(keys).combine_chunks()
        return list(self.runs(rows.to_batches()[0])) if rows.num_rows else []

    def key_columns(self, rows: pa.RecordBatch | pa.Table) -> list:
        """Each row's partition, a column per value: its day and hour (from `timestamp`, typed or RFC 3339
        text), its event name."""
        time = rows.column("timestamp")
        columns = [pc.utf8_slice_codeunits(time, 0, 10), pc.utf8_slice_codeunits(time, 11, 13)] \
            if pa.types.is_string(time.type) else [pc.strftime(time, f) for f in ("%Y-%m-%d", "%H")]
        return columns[:len(self.times)] + ([rows.column("event")] if self.by_event else [])

    def described(self, key: tuple[str, ...]) -> dict[str, str]:
        """A partition as the manifest shows it: the placeholders' values, and the event name as stored."""
        return {**self.named(key), **({"event_name": key[-1]} if self.by_event else {})}


def write_laid_out(request: ExportRequest, source: EventSource, destination: Destination, *, project: str,
                   values: dict[str, str], name: Callable[[int], str], batch_size: int,
                   on_progress: Callable[[Progress], None] | None, should_stop: Callable[[], bool] | None,
                   privacy: Privacy | None) -> list[dict]:
    """Every partition of `request` as its own file or split series, `name(n)` numbering the files of
    the whole export in its partition's folder; returns their manifest entries (each with its
    `partition`). A failure removes every file already committed."""
    layout = Layout(request.destination, values)  # type: ignore[arg-type]
    query = export_query(request, project, privacy)
    layout.check(source, query)
    query = replace(query, order=layout.keys())
    folder = ""
    filling = Filling(destination, lambda n: Part.open(request, destination, f"{folder}/{name(n)}" if folder
                                                       else name(n), query.schema, digest=True),
                      *request.destination.split_limits())
    current: tuple[str, ...] | None = None
    batches = scanned(source, query, min(batch_size, writer_for(request).batch_rows or batch_size), privacy,
                      should_stop, request.id)
    try:
        for batch in batches:
            for key, rows in layout.runs(batch):
                if key != current:
                    filling.commit()
                    current, folder = key, layout.folder(key)
                    filling.described = {"partition": layout.described(key)}
                filling.write(rows)
            if on_progress is not None:
                on_progress(filling.progress)
        filling.commit()
    except BaseException:
        filling.discard()
        raise
    finally:
        batches.close()
    return filling.done

