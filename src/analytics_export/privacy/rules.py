"""Privacy rules, as requests, policies and streams state them: which properties are kept out,
pseudonymised or redacted, and by which detectors or patterns."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..checks import RuleProperties, check_property_name


class Detector(str, Enum):
    """Built-in detectors of personal data inside string values."""

    EMAIL = "email"
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    PHONE = "phone"
    CREDIT_CARD = "credit_card"


LITERAL_CHARS = set("0123456789+-.eEtrufalsn[]{},: \t\r\n")


class RedactionRule(BaseModel):
    """Mask or drop values: of the named `properties` (whole values), or, anywhere in the properties
    (nested objects, arrays, keys), of every string matching a built-in `detector` or a `pattern`."""

    model_config = ConfigDict(extra="forbid")

    properties: RuleProperties = Field(default_factory=list, description="top-level properties whose values are redacted")
    detector: Detector | None = None
    pattern: str | None = Field(None, max_length=1000,
                                description="a regular expression (Rust `regex` syntax, no look-around)")
    action: Literal["mask", "drop"] = Field(
        "mask", description="`mask` replaces the match (the whole value for `properties`) with `mask`; "
        "`drop` removes the value: the property, or the string that matched (null in its place)")
    mask: str = Field("[REDACTED]", min_length=1, max_length=100)

    @field_validator("properties")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(check_property_name(p) for p in value))

    @field_validator("mask")
    @classmethod
    def _mask(cls, value: str) -> str:
        if any(c in '"\\' or ord(c) < 0x20 for c in value) or set(value) <= LITERAL_CHARS:
            raise ValueError("mask must not contain quotes, backslashes or control characters, and must hold a "
                             "character that cannot be part of a JSON number or literal, e.g. [REDACTED] or ***")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> RedactionRule:
        if sum(bool(x) for x in (self.properties, self.detector, self.pattern)) != 1:
            raise ValueError("a redaction rule names exactly one of `properties`, `detector` or `pattern`")
        if self.pattern is not None:
            check_pattern(self.pattern)  # the regex engine's own parser says what is wrong
        return self


class PrivacyRules(BaseModel):
    """What a project's privacy policy enforces; an export request may add rules, never remove them."""

    model_config = ConfigDict(extra="forbid")

    deny_properties: RuleProperties = Field(default_factory=list,
                                       description="properties that never leave, even when selected")
    allow_properties: RuleProperties | None = Field(None, description="if set, only these properties leave")
    redact: list[RedactionRule] = Field(default_factory=list, max_length=16)
    pseudonymize_distinct_id: bool = Field(
        False, description="replace distinct_id by HMAC-SHA256(project secret, distinct_id), hex")
    pseudonymize_properties: RuleProperties = Field(
        default_factory=list, description="top-level properties whose values are replaced the same way")

    @field_validator("deny_properties", "allow_properties", "pseudonymize_properties")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else list(dict.fromkeys(check_property_name(p) for p in value))

    def stricter(self, extra: PrivacyRules | None) -> PrivacyRules:
        """These rules plus `extra`'s: denials and redactions add up, allow-lists intersect."""
        if extra is None:
            return self
        allow = self.allow_properties
        if extra.allow_properties is not None:
            allow = [p for p in extra.allow_properties if allow is None or p in allow]
        return PrivacyRules.model_construct(  # both are valid; together they may hold more than 16 rules
            deny_properties=list(dict.fromkeys(self.deny_properties + extra.deny_properties)),
            allow_properties=allow,
            redact=self.redact + extra.redact,
            pseudonymize_distinct_id=self.pseudonymize_distinct_id or extra.pseudonymize_distinct_id,
            pseudonymize_properties=list(dict.fromkeys(self.pseudonymize_properties + extra.pseudonymize_properties)),
        )

    def hides(self, name: str) -> bool:
        """True when property `name` may not leave (denied, or outside the allow-list)."""
        return name in self.deny_properties or (self.allow_properties is not None and name not in self.allow_properties)

    def protects(self, name: str) -> bool:
        """True when property `name` leaves only hidden, pseudonymised or redacted by name: a filter on
        it would reveal what it holds (which events match `ssn = ...`, whose pseudonym is whose)."""
        return (self.hides(name) or name in self.pseudonymize_properties
                or any(name in rule.properties for rule in self.redact))

    @property
    def empty(self) -> bool:
        return self == PrivacyRules()


def check_pattern(pattern: str) -> None:
    """Raise ValueError saying what is wrong if polars cannot compile `pattern`, or if it matches the
    empty string (it would mask between every character)."""
    import polars as pl  # here: half a second of every process start, for requests that name a pattern

    try:
        empty = pl.Series([""], dtype=pl.String).str.contains(pattern)[0]
    except pl.exceptions.PolarsError as exc:
        text = str(exc).split("This error occurred in the following expression")[0]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = next((line.removeprefix("error: ") for line in lines if line.startswith("error:")),
                      lines[-1] if lines else str(exc))
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {reason}") from None
    if empty:
        raise ValueError(f"pattern {pattern!r} matches the empty string; make it match at least one character")
