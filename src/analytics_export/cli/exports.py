"""`export`, `ingest` and `demo`: the commands that read or fill the event store in this process."""

from __future__ import annotations

import json
import re
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer
from pydantic import ValidationError

from ..checks import describe_errors
from ..errors import Invalid
from ..enums import COMPRESSION_DOC, Compression, ExportFormat, ExportModel, FilterOperator
from .common import err, exit_on_error, fail

if TYPE_CHECKING:
    from ..models import ExportFilter, ExportRequest
    from ..config import Settings
    from ..pipeline.batches import Progress as ExportProgress

# The modules that read and write events (DuckDB, pyarrow: about a second) are imported by the commands
# that run, not when the command line is parsed: `--help` and every other command start without them.


FILTER = re.compile(
    r"^\s*(?P<prop>.+?)\s+(?P<op>" + "|".join(sorted((o.value for o in FilterOperator), key=len, reverse=True))
    + r")(?:\s+(?P<value>.*?))?\s*$"
)


def parse_value(text: str | None, operator: FilterOperator) -> object:
    """A filter value: JSON when it parses (`10`, `true`, `"10"`, `["a","b"]`), else the raw text."""
    if text is None or text == "":
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        if text.lstrip()[:1] in ("[", "{", '"'):  # meant as JSON: a typo must not become a text to match
            raise Invalid(f"filter value {text} is not JSON: {exc}") from None
        value = text
    if operator in (FilterOperator.IN, FilterOperator.NOT_IN) and not isinstance(value, list):
        value = [parse_value(part.strip(), FilterOperator.EQ) for part in text.split(",")]
    return value


def parse_filter(text: str) -> ExportFilter:
    """`'PROP OP VALUE'`, e.g. `'plan eq pro'`, `'price gte 10'`, `'country in US,DE'`, `'email is_set'`."""
    from ..models import ExportFilter

    match = FILTER.match(text)
    if not match:
        ops = ", ".join(o.value for o in FilterOperator)
        raise Invalid(f"filter {text!r} is not 'PROPERTY OPERATOR [VALUE]' with an operator among {ops}")
    operator = FilterOperator(match["op"])
    return ExportFilter(property=match["prop"], operator=operator, value=parse_value(match["value"], operator))


MODEL_HELP = "events (default), persons (merged from their ids) or sessions: rows derived from every event (docs/models.md)"
GAP_HELP = "sessions: a user's events more than this many minutes apart are in different sessions"
COUNT_HELP = "persons: event_count over the person's whole history (all) or the window (range)"


def export(
    ctx: typer.Context,
    format: str = typer.Option(..., "--format", "-f", help="json, json_lines (jsonl), csv, parquet or avro"),
    start: str = typer.Option(..., "--start", help="Start (inclusive), ISO 8601; naive means UTC"),
    end: str = typer.Option(..., "--end", help="End (exclusive), ISO 8601"),
    compression: Optional[Compression] = typer.Option(None, "--compression", "-c", help=COMPRESSION_DOC),
    event: List[str] = typer.Option([], "--event", "-e", help="Event name to keep (repeatable); default all"),
    property: List[str] = typer.Option([], "--property", "-p", help="Property to keep (repeatable); default all"),
    filter: List[str] = typer.Option([], "--filter", help="'PROPERTY OPERATOR [VALUE]' (repeatable, all must match)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write exactly this file"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Write the standard file name here [default DATA_DIR/exports]"),
    to: Optional[str] = typer.Option(None, "--to", help="""Remote destination as JSON, e.g. '{"type": "s3", "bucket": "lake"}'; credentials from the environment"""),
    csv_formula_guard: bool = typer.Option(False, "--csv-formula-guard", help="CSV: start cells a spreadsheet would "
                                           "run as formulas (=, +, -, @, tab, CR; not plain numbers) with '"),
    include: List[str] = typer.Option([], "--include", help="Extra column (repeatable): uuid (to drop duplicates "
                                      "downstream) or inserted_at (when the event was stored)"),
    model: ExportModel = typer.Option(ExportModel.EVENTS, "--model", help=MODEL_HELP),
    session_gap_minutes: int = typer.Option(30, "--session-gap-minutes", help=GAP_HELP),
    person_event_count: str = typer.Option("all", "--person-event-count", help=COUNT_HELP),
) -> None:
    """Export events (or the persons or sessions derived from them) in [start, end) to a file or a remote
    destination; prints a JSON summary line when done."""
    from ..models import ExportRequest

    settings: Settings = ctx.obj
    try:
        request = ExportRequest(
            format=ExportFormat.parse(format), start_date=start, end_date=end, compression=compression,
            events=event, properties=property or None, filters=[parse_filter(f) for f in filter],
            destination=json.loads(to) if to else {"type": "download"}, csv_formula_guard=csv_formula_guard,
            include=include, model=model, session_gap_minutes=session_gap_minutes,
            person_event_count=person_event_count,
        )
    except json.JSONDecodeError as exc:
        fail(f"--to is not JSON: {exc}")
    except (ValueError, Invalid) as exc:  # ValidationError is a ValueError
        fail(describe_errors(exc.errors()) if isinstance(exc, ValidationError) else str(exc))
    if sum(x is not None for x in (output, output_dir, to)) > 1:
        fail("give one of --output, --output-dir and --to")
    from ..exporting import export as run

    with exit_on_error(), ProgressDisplay(settings, request) as on_progress:
        result = run(request, settings=settings, output=output, output_dir=output_dir, on_progress=on_progress)
    summary = {"id": result.export_id, "total_events": result.total_events, "file_size": result.file_size,
               "path": result.destination_path, "privacy_policy_version": result.privacy_policy_version}
    if result.dropped_properties:
        summary["dropped_properties"] = result.dropped_properties
    typer.echo(json.dumps(summary))


class ProgressDisplay:
    """A rich progress bar on a terminal (events, bytes, events/s, ETA); nothing otherwise."""

    def __init__(self, settings: Settings, request: ExportRequest) -> None:
        self.active = err.is_terminal
        if not self.active:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from ..sources import EventQuery
        from ..sources.stores import open_store

        total = None  # a person or a session is counted only once it is derived
        if request.model is ExportModel.EVENTS:
            with closing(open_store(settings)) as store:
                total = store.count(EventQuery.from_request(request, settings.project))
        self.started = time.monotonic()
        self.bar = Progress(
            TextColumn("[bold]exporting"), BarColumn(), TextColumn(f"{{task.completed:,.0f}}{'/{task.total:,.0f}' if total is not None else ''} "
                                                        f"{request.model.value}"),
            TextColumn("{task.fields[size]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            TimeRemainingColumn(), console=err.console, transient=False,
        )
        self.task = self.bar.add_task("export", total=total, size="0 B", rate="")

    def __enter__(self):
        if not self.active:
            return None
        self.bar.start()
        return self.update

    def update(self, p: ExportProgress) -> None:
        rate = p.events / max(time.monotonic() - self.started, 1e-6)
        self.bar.update(self.task, completed=p.events, size=human_bytes(p.bytes), rate=f"{rate:,.0f} ev/s")

    def __exit__(self, *exc) -> None:
        if self.active:
            self.bar.stop()


def human_bytes(n: float) -> str:
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            break
        n /= 1024
    return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"


def ingest(ctx: typer.Context, files: List[Path] = typer.Argument(..., help="JSON Lines, JSON, CSV or Parquet files"),
           restore: bool = typer.Option(False, "--restore", help="Files are retention archives: keep their inserted_at")
           ) -> None:
    """Load events from files; events whose uuid is already stored are skipped."""
    from ..inbox import clean_inbox
    from ..ingest import ingest_file
    from ..sources.stores import open_store

    settings: Settings = ctx.obj
    total = 0
    with exit_on_error():
        clean_inbox(settings.data_dir)  # what ingests killed with the API left
        store = open_store(settings, read_only=False)
        try:
            for path in files:
                added = ingest_file(store, path, settings.project, restore=restore)
                total += added
                err.print(f"{path}: {added:,} new events", highlight=False)
        finally:
            store.close()
    typer.echo(json.dumps({"ingested": total}))


def demo(
    ctx: typer.Context,
    events: int = typer.Option(1_000_000, "--events", "-n", min=1, max=1_000_000_000, help="How many events"),
    if_empty: bool = typer.Option(False, "--if-empty", help="Do nothing when the store already has events"),
) -> None:
    """Generate realistic demo events (30 event names, 200k users, 90 days, 5-15 properties each)."""
    from .. import demo as demo_data
    from ..sources.stores import open_store

    settings: Settings = ctx.obj
    with exit_on_error():
        store = open_store(settings, read_only=False)
        try:
            if if_empty and not store.is_empty():
                err.print("event store already has events; no demo data added")
                added = 0
            else:
                started = time.monotonic()
                with err.status(f"generating {events:,} events"):
                    added = demo_data.generate(store, events, settings.project)
                err.print(f"generated {added:,} events in {time.monotonic() - started:.1f}s "
                          f"into {settings.events_store_name}")
        finally:
            store.close()
    typer.echo(json.dumps({"generated": added}))
