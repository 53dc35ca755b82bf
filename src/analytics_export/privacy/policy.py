"""Privacy: a project's policy applied to every export between source and writer, batch by batch.

What SQL can do runs inside the source's scan, in parallel with it (`sources/protect.py`):
suppressed users left out, distinct_id and named properties pseudonymised (HMAC-SHA256), masked,
dropped or denied. Detector and pattern rules then run over each batch's strings in polars
(`redaction.py`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from ..errors import Invalid
from ..enums import FilterOperator
from ..sources import EventQuery
from ..sources.protect import Protection
from .rules import PrivacyRules

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["Privacy", "hmac_keys"]

PROBING = {FilterOperator.CONTAINS, FilterOperator.NOT_CONTAINS, FilterOperator.REGEX, FilterOperator.GT,
           FilterOperator.GTE, FilterOperator.LT, FilterOperator.LTE}
"""Text searches and orderings: with detectors, each answer would give away part of a redacted value."""


def hmac_keys(secret: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer padded keys, so SQL can compute sha256(o || sha256(i || m))."""
    key = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


@dataclass
class Privacy:
    """The rules an export enforces: the project's policy (`version`) plus the request's additions."""

    rules: PrivacyRules
    version: int | None = None
    secret: bytes | None = None
    suppressed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, version: int, rules: PrivacyRules, requested: PrivacyRules | None, secret: Callable[[], bytes],
           suppressed: list[str]) -> Privacy:
        """What an export enforces: the policy's `version` (0: none) and `rules` made stricter by the
        request's own, with the project's `secret()` (taken only when pseudonymising) and suppression list."""
        rules = rules.stricter(requested)
        needs_secret = rules.pseudonymize_distinct_id or bool(rules.pseudonymize_properties)
        return cls(rules, version=version or None, secret=secret() if needs_secret else None, suppressed=suppressed)

    def query(self, query: EventQuery) -> EventQuery:
        """`query` without the properties the policy hides, and with its SQL rules."""
        return replace(self.narrowed(query), protection=self.protection())

    @property
    def scans(self) -> bool:
        """Whether values are searched in Python (detector and pattern rules, `apply`), not only in SQL."""
        return any(r.detector or r.pattern for r in self.rules.redact)

    def narrowed(self, query: EventQuery) -> EventQuery:
        """`query` without the properties the policy hides; a filter on a property it protects is
        refused, as its matches would tell what the property holds."""
        scanning = self.scans
        for f in query.filters:
            if self.rules.protects(f.property):
                raise Invalid(f"filter on property {f.property!r}: {self.source} hides, pseudonymises or redacts "
                              "it, and the filter's matches would reveal its values; remove the filter")
            if scanning and f.operator in PROBING and not isinstance(f.value, (int, float)):
                raise Invalid(f"filter {f.property!r} {f.operator.value}: {self.source} redacts what its detectors "
                              "or patterns find, and a text search or comparison could spell a redacted value out "
                              "one query at a time; use eq, neq, in, not_in, is_set or a numeric comparison")
        if query.properties is not None:
            kept = tuple(p for p in query.properties if not self.rules.hides(p))
            self.dropped = [p for p in query.properties if p not in kept]
            if not kept:
                raise Invalid(f"every selected property ({', '.join(self.dropped)}) is kept out by {self.source}; "
                              "select others, or none for all that may leave")
            query = replace(query, properties=kept)
        return query

    def protection(self) -> Protection | None:
        rules = self.rules
        if rules.empty and not self.suppressed:
            return None
        inner = outer = None
        if rules.pseudonymize_distinct_id or rules.pseudonymize_properties:
            if self.secret is None:
                raise Invalid("pseudonymisation needs the project's secret")
            inner, outer = hmac_keys(self.secret)
        named = [r for r in rules.redact if r.properties]
        return Protection(
            inner=inner, outer=outer, pseudonymize_distinct_id=rules.pseudonymize_distinct_id,
            pseudonymize=tuple(rules.pseudonymize_properties), deny=tuple(rules.deny_properties),
            allow=tuple(rules.allow_properties) if rules.allow_properties is not None else None,
            drop=tuple(n for r in named if r.action == "drop" for n in r.properties),
            mask={n: r.mask for r in named if r.action == "mask" for n in r.properties},
            suppressed=tuple(self.suppressed))

    @property
    def source(self) -> str:
        return f"the project's privacy policy (version {self.version})" if self.version else "the privacy rules"

    def apply(self, batches: Iterable[pa.RecordBatch], query: EventQuery) -> Iterator[pa.RecordBatch]:
        """`batches` of `query` with the detector and pattern rules applied to their strings."""
        # by position: a property may be named like a fixed column (`event`, `distinct_id`)
        if query.property_columns:
            return self.redacted(batches, values=range(3, 3 + len(query.properties or ())))
        return self.redacted(batches, objects=[3])

    def apply_columns(self, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """Batches of a derived model (`derived/`) with the detector and pattern rules applied to its JSON
        `properties` and to its columns taken from properties (every string column but its ids)."""
        objects = [i for i, f in enumerate(schema) if f.name == "properties"]
        values = [i for i, f in enumerate(schema) if str(f.type) == "string" and i not in objects
                  and f.name not in ("person_id", "distinct_ids", "distinct_id", "session_id")]
        return self.redacted(batches, objects=objects, values=values)

    def redacted(self, batches: Iterable[pa.RecordBatch], *, objects: Iterable[int] = (),
                 values: Iterable[int] = ()) -> Iterator[pa.RecordBatch]:
        """`batches` with the detector and pattern rules applied to the JSON objects in columns `objects`
        and to the values in columns `values`."""
        if not self.scans:
            yield from batches
            return
        # here: half a second of every process start (or of a stream's first read, holding the store)
        import polars as pl
        import pyarrow as pa

        from .redaction import Redactor

        redactor = Redactor(self.rules.redact)
        columns = [(i, redactor.json) for i in objects] + [(i, redactor.values) for i in values]
        for batch in batches:
            arrays = list(batch.columns)
            for i, redact in columns:
                arrays[i] = redact(pl.Series(arrays[i])).to_arrow().cast(pa.string())
            yield pa.RecordBatch.from_arrays(arrays, schema=batch.schema)
