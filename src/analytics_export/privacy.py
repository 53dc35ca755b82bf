"""Privacy: a project's policy applied to every export between source and writer, batch by batch.

Per batch, vectorised: suppressed users' events are filtered out (Arrow `is_in`); distinct_id and
named properties are pseudonymised, masked, dropped or denied in one DuckDB statement over the
batch; detector and pattern rules run over the strings in polars (`redaction.py`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .errors import Invalid
from .models import PrivacyRules, RedactionRule
from .redaction import Redactor
from .sources import EventQuery

__all__ = ["Privacy", "hmac_keys"]


def hmac_keys(secret: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer padded keys, so SQL can compute sha256(o || sha256(i || m))."""
    key = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


HMAC_SQL = "sha256($outer || unhex(sha256($inner || CAST({} AS BLOB))))"


def json_key(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def key_path(name: str) -> str:
    """DuckDB JSON path of a top-level key (property names are plain keys: no quotes)."""
    return f'$."{name}"'


@dataclass
class Privacy:
    """The rules an export enforces: the project's policy (`version`) plus the request's additions."""

    rules: PrivacyRules
    version: int | None = None
    secret: bytes | None = None
    suppressed: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    suppressed_events: int = 0
    dropped: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return not self.rules.empty or len(self.suppressed) > 0

    def query(self, query: EventQuery) -> EventQuery:
        """`query` without the properties the policy hides; a filter on a property it protects is
        refused, as its matches would tell what the property holds."""
        for f in query.filters:
            if self.rules.protects(f.property):
                raise Invalid(f"filter on property {f.property!r}: {self.source} hides, pseudonymises or redacts "
                              "it, and the filter's matches would reveal its values; remove the filter")
        if query.properties is None:
            return query
        kept = tuple(p for p in query.properties if not self.rules.hides(p))
        self.dropped = [p for p in query.properties if p not in kept]
        if not kept:
            raise Invalid(f"every selected property ({', '.join(self.dropped)}) is kept out by {self.source}; "
                          "select others, or none for all that may leave")
        return replace(query, properties=kept)

    @property
    def source(self) -> str:
        return f"the project's privacy policy (version {self.version})" if self.version else "the privacy rules"

    def apply(self, batches: Iterable[pa.RecordBatch], query: EventQuery) -> Iterator[pa.RecordBatch]:
        """`batches` of `query` with the rules applied, in the same schema."""
        if not self.active:
            yield from batches
            return
        transform = _Transform(self, query)
        try:
            for batch in batches:
                if len(self.suppressed):
                    keep = pc.invert(pc.is_in(batch.column("distinct_id"), value_set=self.suppressed))
                    before = batch.num_rows
                    batch = batch.filter(keep)
                    self.suppressed_events += before - batch.num_rows
                if batch.num_rows:
                    yield transform(batch)
        finally:
            transform.close()


class _Transform:
    """One export's compiled rules: a DuckDB statement for names and pseudonyms, a Redactor for values."""

    def __init__(self, privacy: Privacy, query: EventQuery) -> None:
        rules = privacy.rules
        self.schema = query.schema
        self.redactor = Redactor(rules.redact)
        self.params: dict[str, object] = {}
        if rules.pseudonymize_distinct_id or rules.pseudonymize_properties:
            if privacy.secret is None:
                raise Invalid("pseudonymisation needs the project's secret")
            self.params["inner"], self.params["outer"] = hmac_keys(privacy.secret)
        named = [r for r in rules.redact if r.properties]
        columns = {"distinct_id": self._hmac("distinct_id") if rules.pseudonymize_distinct_id else None}
        if query.property_columns:
            for name in query.properties or ():
                columns[name] = self._column(name, rules, named)
            self.json_columns: list[str] = []
            self.text_columns = list(query.properties or ())
        else:
            columns["properties"] = self._object(rules, named)
            self.json_columns, self.text_columns = ["properties"], []
        self.sql = {name: expr for name, expr in columns.items() if expr is not None}
        self.select = "SELECT " + ", ".join(f'{expr} AS "{name}"' for name, expr in self.sql.items()) + " FROM batch"
        self.con = duckdb.connect(config={"threads": 1}) if self.sql else None

    def _bind(self, value: object) -> str:
        key = f"p{len(self.params)}"
        self.params[key] = value
        return f"${key}"

    def _hmac(self, column: str) -> str:
        return HMAC_SQL.format(f'"{column}"')

    def _column(self, name: str, rules: PrivacyRules, named: list[RedactionRule]) -> str | None:
        """A property column (raw string, or JSON text of any other value) under the named rules."""
        expr = None
        col = f'"{name}"'
        if name in rules.pseudonymize_properties:
            expr = HMAC_SQL.format(col)
        for rule in named:
            if name in rule.properties:
                expr = "NULL" if rule.action == "drop" else f"CASE WHEN {col} IS NOT NULL THEN {self._bind(rule.mask)} END"
        return expr

    def _object(self, rules: PrivacyRules, named: list[RedactionRule]) -> str | None:
        """The properties object under deny/allow lists and the named rules: one JSON merge patch."""
        p = "CAST(properties AS JSON)"
        expr = p
        if rules.allow_properties is not None:
            allow = self._bind(rules.allow_properties)
            expr = (f"json_merge_patch({expr}, to_json(map_from_entries(list_transform(list_filter("
                    f"json_keys({p}), lambda k: NOT list_contains({allow}, k)), lambda k: {{'key': k, 'value': NULL::JSON}}))))")
        removed = set(rules.deny_properties) | {n for r in named if r.action == "drop" for n in r.properties}
        pieces = [f"{json_key(name)}:null" for name in sorted(removed)]
        present: dict[str, str] = {}
        for name in rules.pseudonymize_properties:
            v = f"json_extract({p}, {self._bind(key_path(name))})"
            text = f"CASE WHEN json_type({v}) = 'VARCHAR' THEN {v} ->> '$' ELSE CAST({v} AS VARCHAR) END"
            present[name] = f"{self._bind(f'{json_key(name)}:')} || to_json({HMAC_SQL.format(text)})"
        for rule in named:
            if rule.action == "mask":
                for name in rule.properties:
                    present[name] = self._bind(f"{json_key(name)}:{json_key(rule.mask)}")
        present = {k: v for k, v in present.items() if k not in removed}
        if not pieces and not present and rules.allow_properties is None:
            return None
        parts = [self._bind(",".join(pieces))] if pieces else []
        parts += [f"CASE WHEN json_exists({p}, {self._bind(key_path(name))}) THEN {piece} END"
                  for name, piece in present.items()]
        if parts:
            expr = f"json_merge_patch({expr}, CAST('{{' || concat_ws(',', {', '.join(parts)}) || '}}' AS JSON))"
        return f"CAST({expr} AS VARCHAR)"

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = dict(zip(batch.schema.names, batch.columns))
        if self.con is not None:
            self.con.register("batch", pa.Table.from_batches([batch]))
            done = self.con.sql(self.select, params=self.params).to_arrow_table()
            for name in self.sql:
                arrays[name] = done.column(name).combine_chunks().cast(pa.string())
        if self.redactor:
            for name in self.json_columns + self.text_columns:
                series = pl.Series(arrays[name])
                looks_json = series.str.contains(r"^\s*[\[{]").fill_null(False) if name in self.text_columns else None
                if looks_json is None:
                    series = self.redactor.json(series)
                else:
                    json_rows = looks_json.arg_true()
                    text = self.redactor.text(series)
                    if len(json_rows):
                        text = text.scatter(json_rows, self.redactor.json(series.gather(json_rows)))
                    series = text
                arrays[name] = series.to_arrow().cast(pa.string())
        return pa.RecordBatch.from_arrays([arrays[n] for n in self.schema.names], schema=self.schema)

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
