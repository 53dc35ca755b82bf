"""The part of a privacy policy a source's SQL applies inside its scan (like filters and projection):
suppressed users left out, distinct_id and named properties pseudonymised (HMAC-SHA256 in SQL),
masked, dropped, denied. Every store runs this same DuckDB SQL (the embedded file directly, the
others over each page they read), in parallel with the scan. Detectors run after, on the batches."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

Bind = Callable[[object], str]


@dataclass(frozen=True, eq=False)
class Protection:
    inner: bytes | None = None
    outer: bytes | None = None
    pseudonymize_distinct_id: bool = False
    pseudonymize: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    allow: tuple[str, ...] | None = None
    drop: tuple[str, ...] = ()
    mask: dict[str, str] = field(default_factory=dict)
    suppressed: tuple[str, ...] = ()

    def hmac(self, bind: Bind, text: str) -> str:
        """HMAC-SHA256 of `text` (SQL yielding VARCHAR) as hex: sha256(outer || sha256(inner || m))."""
        return f"sha256({bind(self.outer)} || unhex(sha256({bind(self.inner)} || CAST({text} AS BLOB))))"

    def distinct_id(self, bind: Bind) -> str:
        return self.hmac(bind, "distinct_id") if self.pseudonymize_distinct_id else "distinct_id"

    def where(self, bind: Bind) -> list[str]:
        if not self.suppressed:
            return []
        return [f"distinct_id NOT IN (SELECT unnest(CAST({bind(list(self.suppressed))} AS VARCHAR[])))"]

    def column(self, bind: Bind, name: str, read: Callable[[], str]) -> str:
        """A property column's value (`read()`: raw string, or JSON text of any other value) under the
        named rules. SQL is made only for what is used: DuckDB refuses a parameter bound but unused."""
        if name in self.drop:
            return "NULL"
        value = read()
        if name in self.mask:
            return f"CASE WHEN {value} IS NOT NULL THEN {bind(self.mask[name])} END"
        if name in self.pseudonymize:
            return self.hmac(bind, value)
        return value

    def member(self, bind: Bind, name: str, read: Callable[[], str]) -> str:
        """A selected property's JSON value (`read()`, NULL when absent) under the named rules."""
        if name in self.drop:
            return "NULL::JSON"
        value = read()
        if name in self.mask:
            return f"CASE WHEN {value} IS NOT NULL THEN {bind(json.dumps(self.mask[name]))}::JSON END"
        if name in self.pseudonymize:
            text = f"CASE WHEN json_type({value}) = 'VARCHAR' THEN {value} ->> '$' ELSE CAST({value} AS VARCHAR) END"
            return f"to_json({self.hmac(bind, text)})"
        return value

    def object(self, bind: Bind, p: str, prop: Callable[[str], str]) -> str:
        """The whole properties object `p` (JSON) with hidden and dropped members removed and the
        masked and pseudonymised ones replaced, where present: one merge patch per row."""
        expr = p
        if self.allow is not None:
            allow = bind(list(self.allow))
            expr = (f"json_merge_patch({expr}, to_json(map_from_entries(list_transform(list_filter(json_keys({p}), "
                    f"lambda k: NOT list_contains({allow}, k)), lambda k: {{'key': k, 'value': NULL::JSON}}))))")
        removed = sorted(set(self.deny) | set(self.drop))
        parts = [bind(",".join(f"{json.dumps(n)}:null" for n in removed))] if removed else []
        for name in dict.fromkeys((*self.mask, *self.pseudonymize)):
            if name in removed:
                continue
            value = prop(name)
            parts.append(f"CASE WHEN {value} IS NOT NULL THEN {bind(json.dumps(name) + ':')} || "
                         f"CAST({self.member(bind, name, lambda: value)} AS VARCHAR) END")
        if parts:
            expr = f"json_merge_patch({expr}, CAST('{{' || concat_ws(',', {', '.join(parts)}) || '}}' AS JSON))"
        return expr
