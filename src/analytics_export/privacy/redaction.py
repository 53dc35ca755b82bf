"""Detector and pattern redaction over whole columns of strings (polars' Rust regex, no row loops).

A column is either raw strings (a property column) or JSON text (the `properties` object). In
JSON text only strings are scanned, keys and values at any depth, and the structure is kept:

1. escapes are decoded (`\\n`, `\\u00e9`, surrogate pairs) into the characters they stand for, and the
   ones JSON must keep escaped (quote, backslash, controls) into private sentinel characters, so no
   backslash is left for a match to cut in two and `\\u0040` hides no `@`;
2. every match becomes its rule's private marker character;
3. a row whose text outside strings changed (a pattern matched across a quote, or inside a bare
   number) takes the exact path instead: parsed, its strings redacted one by one, re-serialised;
4. `drop` turns a value holding its marker into `null`, `mask` puts the mask text in the marker's
   place, and the sentinels become escapes again.

Rows the fast path cannot decode (a lone surrogate escape, or private characters of the range used
here) also take the exact path; it loops in Python, but only over those rare rows.
"""

from __future__ import annotations

import json
import re
from typing import Any

import polars as pl

from .rules import Detector, RedactionRule

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_HEX = "[0-9a-fA-F]{1,4}"
PATTERNS: dict[Detector, str] = {
    Detector.EMAIL: r"[\p{L}\p{N}._%+-]+@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.\p{L}{2,}",
    Detector.IPV4: rf"(?-u:\b){_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?-u:\b)",
    Detector.IPV6: (rf"(?:(?-u:\b)(?:(?:{_HEX}:){{7}}{_HEX}|(?:{_HEX}:){{1,7}}:(?:{_HEX}(?::{_HEX}){{0,6}})?)"
                    rf"|::{_HEX}(?::{_HEX}){{0,6}})(?-u:\b)"),
    Detector.PHONE: (r"\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,5}\d"
                     r"|(?:\(\d{3}\) ?|(?-u:\b)\d{3}[ .-])\d{3}[ .-]\d{4}(?-u:\b)"),
    Detector.CREDIT_CARD: r"(?-u:\b)\d(?:[ -]?\d){12,18}(?-u:\b)",  # finds rows worth a look; CARD_RUNS decides
}
CARD_RUNS = r"(?-u:\b)\d(?:[ -]?\d){12,}(?-u:\b)"
"""Runs of 13 or more digits (single spaces or dashes between), word-bounded as the detector's pattern
is: a card number may hide inside one. Digits glued to letters (a pseudonym's hex digest, `ord4111...`)
are no card, whatever else the row holds."""
SKELETON = r'"[^"]*"'
PIECES = r'"(?:[^"\\]|\\.)*"|[^"]+|"'
"""A JSON text cut into its strings and what lies between them (every character in one piece)."""

INSIDE_STRINGS = {Detector.EMAIL, Detector.IPV4, Detector.IPV6}
"""Detectors whose matches cannot leave a JSON string: no quote, backslash or structural character,
and nothing a bare number or literal holds (`@`, three dots, `::` or seven colons)."""

DIGIT_RUNS = {Detector.PHONE, Detector.CREDIT_CARD}
"""Detectors whose scan is slow (a candidate may start at any digit): they share a first pass."""

SENTINEL = 0xF0000
"""Sentinel for a character JSON keeps escaped: chr(SENTINEL + code) for quote, backslash, controls."""
MARKER = 0xF0100
"""Marker of rule i's matches: chr(MARKER + i)."""
PRIVATE_LEAD = "\U000F0000".encode()[:2]
MUST_ESCAPE = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
SHORT_ESCAPES = {'\\"': '"', "\\/": "/", "\\b": "\b", "\\f": "\f", "\\n": "\n", "\\r": "\r", "\\t": "\t"}
SENTINELS = [chr(SENTINEL + c) for c in [*range(0x20), 0x22, 0x5C]]
ESCAPED = [MUST_ESCAPE.get(chr(c), f"\\u{c:04x}") for c in [*range(0x20), 0x22, 0x5C]]
UNESCAPED = [chr(c) for c in [*range(0x20), 0x22, 0x5C]]
PRIVATE_CLASS = "[\U000F0000-\U000F0FFF]"


def put(s: pl.Series, rows: pl.Series, values: pl.Series) -> pl.Series:
    """A copy of `s` with `values` at `rows` (polars' scatter writes in place, and `s` may be in use)."""
    return s.clone().scatter(rows, values)


def private(s: pl.Series) -> pl.Series:
    """Rows holding a character of our private range, or near it: a byte search for the UTF-8 lead
    bytes of U+F0000-U+F0FFF, 25 times faster than a regex class of the range."""
    return s.cast(pl.Binary).bin.contains(PRIVATE_LEAD).fill_null(False)


def hidden(ch: str) -> str:
    """`ch` as it travels through the fast path: itself, or its sentinel if JSON keeps it escaped."""
    return chr(SENTINEL + ord(ch)) if ch in '"\\' or ord(ch) < 0x20 else ch


def luhn(candidates: pl.Series) -> pl.Series:
    """True where a candidate's digits (separators ignored) pass the Luhn check."""
    digits = candidates.str.replace_all(r"[ -]", "").str.reverse()
    total = pl.Series(values=[0] * len(candidates), dtype=pl.Int32)
    for i in range(19):
        d = digits.str.slice(i, 1).cast(pl.Int32, strict=False).fill_null(0)
        if i % 2:
            d = d * 2
            d = d - (d > 9).cast(pl.Int32) * 9
        total = total + d
    length = digits.str.len_chars()
    return (total % 10 == 0) & (length >= 13) & (length <= 19)


class Redactor:
    """The detector and pattern rules of a policy, applied to string columns. Detectors run first,
    custom patterns last, so no rule (a request's included) can break up what a detector finds."""

    def __init__(self, rules: list[RedactionRule]) -> None:
        ordered = ([r for r in rules if r.detector and r.detector not in DIGIT_RUNS]
                   + [r for r in rules if r.detector in DIGIT_RUNS] + [r for r in rules if r.pattern])
        self.rules = ordered
        self.patterns = [PATTERNS[r.detector] if r.detector else r.pattern for r in self.rules]
        self.markers = [chr(MARKER + i) for i in range(len(self.rules))]
        self.drops = "".join(m for m, r in zip(self.markers, self.rules) if r.action == "drop")
        self.detectors = [i for i, r in enumerate(self.rules) if r.detector]
        self.custom = [i for i, r in enumerate(self.rules) if r.pattern]
        self.any = "|".join(f"(?:{self.patterns[i]})" for i in self.detectors)
        self.card_markers = [m for m, r in zip(self.markers, self.rules) if r.detector is Detector.CREDIT_CARD]
        self.dense = False
        """Whether most rows of the last batch had something to redact (then no first pass finds them)."""

    def __bool__(self) -> bool:
        return bool(self.rules)

    def mark(self, s: pl.Series, custom: bool = True) -> tuple[pl.Series, pl.Series]:
        """Each rule's matches replaced by its marker (credit cards only where Luhn-valid), and which
        rows a rule that may reach outside a JSON string changed (a phone or card pattern can match
        inside a bare number): only those need the structure check. Custom patterns too, if `custom`."""
        reaching = pl.Series(values=[False] * len(s), dtype=pl.Boolean)
        digits = [i for i in self.detectors if self.rules[i].detector in DIGIT_RUNS]
        for i in [i for i in self.detectors if i not in digits]:
            s = s.str.replace_all(self.patterns[i], self.markers[i])
        if digits:  # slow scans (a digit starts a candidate anywhere): one finds the rows, each runs on those
            found = s.str.contains("|".join(f"(?:{self.patterns[i]})" for i in digits)).fill_null(False)
            if found.any():
                rows = found.arg_true()
                some = s.gather(rows)
                for i in digits:
                    some = (self._cards(some, self.markers[i]) if self.rules[i].detector is Detector.CREDIT_CARD
                            else some.str.replace_all(self.patterns[i], self.markers[i]))
                reaching = put(reaching, rows, (some != s.gather(rows)).fill_null(False))
                s = put(s, rows, some)
        for i in self.custom if custom else ():
            s = s.str.replace_all(self.patterns[i], self.markers[i])
        return s, reaching

    @staticmethod
    def _cards(s: pl.Series, marker: str) -> pl.Series:
        """Runs of digits holding a Luhn-valid card number replaced by `marker`, in the rows that hold
        one: the whole run (13-19 digits), or consecutive groups of it (`1 4111 1111 1111 1111 12`).
        A run of more than 19 digits with no separator is an id, not a card."""
        found = pl.DataFrame({"row": pl.int_range(len(s), eager=True), "run": s.str.extract_all(CARD_RUNS)})
        found = found.explode("run").drop_nulls()
        if not len(found):
            return s
        groups = found["run"].str.replace_all("-", " ").str.split(" ")
        count = groups.list.len()
        valid = pl.Series(values=[False] * len(found), dtype=pl.Boolean)
        most = min(int(count.max()), 19)
        for first in range(most):
            for last in range(first + 1, most + 1):
                valid = valid | ((count >= last) & luhn(groups.list.slice(first, last - first).list.join("")))
        valid = found.filter(valid)
        if not len(valid):
            return s
        rows = valid["row"].unique()
        runs = valid["run"].unique().sort(descending=True).to_list()  # longer first where one starts another
        return put(s, rows, s.gather(rows).str.replace_many(runs, [marker] * len(runs)))

    def text(self, s: pl.Series) -> pl.Series:
        """Raw strings redacted: a `drop` match empties the value (null), a `mask` match is masked."""
        if not self:
            return s
        if self.custom:  # a custom pattern may match anywhere (anchors, any character): every row
            rows = pl.int_range(len(s), eager=True)
        else:
            hit = s.str.contains(self.any).fill_null(False)
            if not hit.any():
                return s
            rows = hit.arg_true()
        return put(s, rows, self._finish_text(self.mark(s.gather(rows))[0]))

    def values(self, s: pl.Series) -> pl.Series:
        """A property column: JSON text of objects and arrays as JSON, the rest (and text that only
        looks like JSON) as raw strings."""
        text = self.text(s)
        looks_json = s.str.contains(r"^\s*[\[{]").fill_null(False)
        if not looks_json.any():
            return text
        rows = looks_json.arg_true()
        as_json = self.json(s.gather(rows))
        unparsed = as_json.str.contains(PRIVATE_CLASS).fill_null(False)  # a marker left: it was not JSON
        return put(text, rows, pl.select(pl.when(pl.lit(unparsed)).then(pl.lit(text.gather(rows)))
                                         .otherwise(pl.lit(as_json))).to_series())

    def _finish_text(self, marked: pl.Series) -> pl.Series:
        if self.drops:
            marked = pl.select(pl.when(pl.lit(marked).str.contains(f"[{self.drops}]"))
                               .then(None).otherwise(pl.lit(marked))).to_series()
        return self._masked(marked)

    def _masked(self, marked: pl.Series) -> pl.Series:
        masks = [(m, r.mask) for m, r in zip(self.markers, self.rules) if r.action == "mask"]
        return marked.str.replace_many([m for m, _ in masks], [t for _, t in masks]) if masks else marked

    def json(self, s: pl.Series) -> pl.Series:
        """JSON texts redacted in their strings (keys and values, any depth), structure kept."""
        if not self:
            return s
        out, exact = self._detected(s) if self.detectors else (s, pl.Series([False] * len(s)))
        if self.custom:
            out, stuck = self._custom(out)
            exact = exact | stuck
        if exact.any():
            slow = exact.arg_true()
            out = put(out, slow, pl.Series(self._exact(s.gather(slow).to_list()), dtype=pl.String))
        return out

    def _detected(self, s: pl.Series) -> tuple[pl.Series, pl.Series]:
        """Detectors over whole JSON texts (see the module's docstring), and the rows that need the
        exact path instead."""
        none = pl.Series(values=[False] * len(s), dtype=pl.Boolean)
        if self.dense:  # most rows of the last batch matched: a first pass to find them would only add work
            rows = pl.int_range(len(s), eager=True)
        else:
            todo = (s.str.contains(self.any) | s.str.contains("\\", literal=True)).fill_null(False)
            if not todo.any():
                return s, none
            rows = todo.arg_true()
        original = s.gather(rows)
        decoded, exact = decode(original)
        marked, reaching = self.mark(decoded, custom=False)
        if reaching.any():  # a match outside strings or across a quote changed the text between them
            moved = reaching.arg_true()
            changed = (marked.gather(moved).str.replace_all(SKELETON, '""')
                       != decoded.gather(moved).str.replace_all(SKELETON, '""'))
            exact = put(exact, moved, exact.gather(moved) | changed)
        out = marked
        if self.drops:
            dropped = marked.str.contains(f"[{self.drops}]").fill_null(False)
            if dropped.any():  # a key that matched a drop rule takes its member away: the exact path does that
                hit = dropped.arg_true()
                keyed = marked.gather(hit).str.contains(f'"[^"]*[{self.drops}][^"]*"\\s*:')
                exact = put(exact, hit, exact.gather(hit) | keyed)
                out = put(out, hit, out.gather(hit).str.replace_all(f'"[^"]*[{self.drops}][^"]*"', "null"))
        out = self._masked(out).str.replace_many(SENTINELS, ESCAPED)
        same = (marked == decoded).fill_null(True)
        self.dense = len(s) - same.sum() > len(s) // 2
        out = pl.select(pl.when(pl.lit(same)).then(pl.lit(original)).otherwise(pl.lit(out))).to_series()
        return put(s, rows, out), put(none, rows, exact.fill_null(False))

    def _custom(self, s: pl.Series) -> tuple[pl.Series, pl.Series]:
        """Custom patterns over each string of the JSON texts (decoded, so anchors, quotes and escapes
        mean what they do in the value), in polars: the texts cut into strings and what lies between,
        the strings redacted, the pieces joined again. Rows it cannot do (a key to drop, a lone
        surrogate) are returned for the exact path."""
        pieces = pl.DataFrame({"row": pl.int_range(len(s), eager=True), "piece": s.str.extract_all(PIECES)})
        pieces = pieces.explode("piece").with_columns(pl.col("piece").fill_null(""))
        pieces = pieces.with_columns(next=pl.col("piece").shift(-1).over("row"))
        piece = pieces["piece"]
        string = piece.str.starts_with('"')
        key = string & pieces["next"].str.contains(r"^\s*:").fill_null(False)
        at = string.arg_true()
        decoded, stuck = decode(piece.gather(at))
        content = decoded.str.slice(1, decoded.str.len_chars() - 2).str.replace_many(SENTINELS, UNESCAPED)
        marked = content
        for i in self.custom:
            marked = marked.str.replace_all(self.patterns[i], self.markers[i])
        changed = (marked != content).fill_null(False)
        dropped = marked.str.contains(f"[{self.drops}]").fill_null(False) if self.drops else changed & False
        redone = '"' + self._masked(marked).str.replace_many(UNESCAPED, ESCAPED) + '"'
        redone = pl.select(pl.when(pl.lit(dropped)).then(pl.lit("null")).when(pl.lit(changed)).then(pl.lit(redone))
                           .otherwise(pl.lit(piece.gather(at)))).to_series()
        rows_stuck = pieces["row"].gather(at).filter(stuck | (dropped & key.gather(at)))
        joined = (pieces.select("row", piece=put(piece, at, redone))
                  .group_by("row", maintain_order=True).agg(pl.col("piece").str.join(""))["piece"])
        exact = pl.int_range(len(s), eager=True).is_in(rows_stuck.implode())
        out = pl.select(pl.when(pl.lit(s).is_null()).then(None).otherwise(pl.lit(joined))).to_series()
        return out, exact

    def _exact(self, texts: list[str | None]) -> list[str | None]:
        """Parse, redact every string (keys and values) and number in one vectorised pass, re-serialise."""
        values: list[Any] = []
        for text in texts:
            try:
                values.append(json.loads(text, parse_int=Raw, parse_float=Raw, parse_constant=Raw)
                              if text is not None else None)
            except ValueError:
                values.append(None)  # not JSON: nothing of it may leave unchecked
        strings: list[str] = []
        for v in values:
            _collect(v, strings)
        marked = iter(self.mark(pl.Series(strings, dtype=pl.String))[0].to_list())
        return [None if v is None else _dump(self._rebuild(v, marked)) for v in values]

    def _rebuild(self, value: Any, marked: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                key, v = next(marked), self._rebuild(v, marked)
                if not (self.drops and any(m in key for m in self.drops)):
                    out[self._finish_one(key)] = v
            return out
        if isinstance(value, list):
            return [self._rebuild(v, marked) for v in value]
        if isinstance(value, str):  # a string, or a number's text: a card stored as a number is masked too
            text = next(marked)
            if isinstance(value, Raw) and not any(m in text for m in self.card_markers):
                return value
            return None if self.drops and any(m in text for m in self.drops) else self._finish_one(text)
        return value

    def _finish_one(self, text: str) -> str:
        for marker, rule in zip(self.markers, self.rules):
            text = text.replace(marker, rule.mask)
        return text


class Raw(str):
    """A JSON number kept as its text: parsed to a float, 1e999 would come back as Infinity."""


def _dump(value: Any) -> str:
    """Compact JSON, numbers written as they were read."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_dump(k)}:{_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    if isinstance(value, Raw):
        return str.__str__(value)
    return json.dumps(value, ensure_ascii=False)


def _valid(text: str) -> str:
    """`text` with any lone surrogate (an escape JSON allows, UTF-8 cannot carry) as U+FFFD."""
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def _collect(value: Any, strings: list[str]) -> None:
    """Every key and string value of `value`, depth first, in the order `_rebuild` consumes them."""
    if isinstance(value, dict):
        for k, v in value.items():
            strings.append(_valid(k))
            _collect(v, strings)
    elif isinstance(value, list):
        for v in value:
            _collect(v, strings)
    elif isinstance(value, Raw):
        strings.append(str.__str__(value))
    elif isinstance(value, str):
        strings.append(_valid(value))


def decode(s: pl.Series) -> tuple[pl.Series, pl.Series]:
    """JSON texts with their escapes decoded (the ones JSON keeps escaped as sentinels), and which rows
    cannot be decoded that way (a lone surrogate, or private characters of our range)."""
    exact = private(s)
    escaped = s.str.contains("\\", literal=True).fill_null(False)
    if not escaped.any():
        return s, exact
    rows = escaped.arg_true()
    text = s.gather(rows).str.replace_many(["\\\\"], [hidden("\\")])  # first: every backslash left starts an escape
    pairs = text.str.extract_all(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}").explode().drop_nulls().unique()
    # a pair standing for one of our private characters stays escaped: its halves send the row to the exact path
    pairs = [p for p in pairs.to_list() if not SENTINEL <= ord(_pair(p)) <= MARKER + 0xFF]
    if pairs:
        text = text.str.replace_many(pairs, [_pair(p) for p in pairs])
    units = text.str.extract_all(r"\\u[0-9a-fA-F]{4}").explode().drop_nulls().unique().to_list()
    lone = [u for u in units if 0xD800 <= int(u[2:], 16) <= 0xDFFF]
    if lone:
        stuck = text.str.contains("|".join(u.replace("\\", "\\\\") for u in lone)).fill_null(False)
        exact = put(exact, rows, exact.gather(rows) | stuck)
    units = [u for u in units if u not in lone]
    keys = list(SHORT_ESCAPES) + units
    values = [hidden(c) for c in SHORT_ESCAPES.values()] + [hidden(chr(int(u[2:], 16))) for u in units]
    return put(s, rows, text.str.replace_many(keys, values)), exact


def _pair(escape: str) -> str:
    high, low = int(escape[2:6], 16), int(escape[8:12], 16)
    return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
