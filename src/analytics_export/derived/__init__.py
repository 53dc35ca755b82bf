"""Models derived from events (docs/models.md): persons and sessions. The store reads the narrow facts
each needs (`Selection`s of DuckDB SQL run over its events, as every store runs its filters), an
in-process DuckDB (`staging`) derives the rows with one SQL implementation of the rules, and the rows
go through the export's privacy, writer and destination like events."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Iterator

from ..enums import ExportModel
from ..models import ExportRequest
from ..privacy.policy import Privacy
from ..sources import EventQuery, EventSource
from ..sources.duckdb import SqlBuilder
from ..sources.protect import Protection

if TYPE_CHECKING:
    import pyarrow as pa



@dataclass
class Derived:
    """A model's rows, one per `key`, and what a load of them changes besides."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    key: str
    removed: tuple[str, ...] = ()
    """Keys whose rows an earlier export made and that are gone now (persons merged into another)."""
    notes: dict = field(default_factory=dict)
    """What the manifest reports besides the files (`merged_persons`, `updated_sessions`)."""


def protected_id(sql: SqlBuilder, protection: Protection, expr: str) -> str:
    """A distinct id (SQL `expr`) as every model shows it: pseudonymised when the policy says so."""
    if not protection.pseudonymize_distinct_id:
        return expr
    return protection.hmac(sql.bind, expr)


MODELS = {ExportModel.PERSONS: "persons", ExportModel.SESSIONS: "sessions"}
"""Each derived model's module: its `SCHEMA`, and `derive(request, source, query, privacy, batch_size,
should_stop) -> Derived`."""


def module(model: ExportModel) -> ModuleType:
    return importlib.import_module(f"{__name__}.{MODELS[model]}")


def derive(request: ExportRequest, source: EventSource, project: str, privacy: Privacy | None,
           batch_size: int, should_stop: Callable[[], bool] | None = None) -> Derived:
    """The rows of `request`'s model (persons or sessions) over `source`, with `privacy` applied;
    Cancelled while it is derived once `should_stop()` says so."""
    query = replace(EventQuery.from_request(request, project), protection=protection(privacy))  # its suppressions
    derived = module(request.model).derive(request, source, query, privacy, batch_size, should_stop)
    if privacy is not None:
        return replace(derived, batches=privacy.apply_columns(derived.batches, derived.schema))
    return derived


def protection(privacy: Privacy | None) -> Protection:
    """The policy's SQL rules (none without a policy)."""
    return (privacy.protection() if privacy is not None else None) or Protection()


def hides(privacy: Privacy | None, name: str) -> bool:
    return privacy is not None and privacy.rules.hides(name)
