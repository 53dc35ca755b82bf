"""Alerts: what a notification channel is (webhook, Slack-compatible, email), the kinds of incident it
subscribes to, the SMTP connection's fields, and the delivery settings. Incidents are opened and resolved
by the store where each state is set (`store/incidents.py`); the worker's dispatcher sends them
(`runtime/alerts.py`)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StringConstraints, field_validator

from .checks import CONNECTION_NAME

AlertKind = Literal["export_failed", "schedule_paused", "schedule_missed", "stream_failing", "retention_failed"]
ALERT_KINDS: tuple[str, ...] = AlertKind.__args__
OBJECT_OF: dict[str, str] = {"export_failed": "export", "schedule_paused": "schedule", "schedule_missed": "schedule",
                             "stream_failing": "stream", "retention_failed": "retention"}
"""The kind of object each alert kind is about."""
MAX_CHANNELS = 50
MAX_RECIPIENTS = 20
EMAIL = r"[^@\s<>,;\"]{1,64}@[^@\s<>,;\"]{1,189}\.[^@\s<>,;\"]+"
Email = Annotated[str, StringConstraints(max_length=254, pattern=f"^{EMAIL}$")]

SMTP_FIELDS: tuple[tuple[str, ...], tuple[str, ...]] = (("host", "from_address"),
                                                        ("port", "username", "password", "starttls"))
"""An `smtp` connection's fields: required, then optional (port 587, STARTTLS on, no login)."""


def check_smtp(secrets: dict[str, str]) -> None:
    """ValueError unless an smtp connection's fields are usable: a port number, a boolean starttls, an
    address to send from, a username and password given together, no line breaks anywhere."""
    if any("\r" in v or "\n" in v for v in secrets.values()):
        raise ValueError("smtp fields may not contain line breaks")
    if len(secrets.get("host", "")) > 253:
        raise ValueError("secrets.host is longer than a host name can be (253)")
    port = secrets.get("port", "587")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("secrets.port must be a port number, 1-65535")
    if secrets.get("starttls", "true").lower() not in ("true", "false"):
        raise ValueError("secrets.starttls must be true or false")
    if not re.fullmatch(EMAIL, secrets.get("from_address", "")):
        raise ValueError("secrets.from_address must be an email address, like alerts@example.com")
    if bool(secrets.get("username")) != bool(secrets.get("password")):
        raise ValueError("give secrets.username and secrets.password together, or neither")
    if secrets.get("username") and secrets.get("starttls", "true").lower() == "false":
        raise ValueError("a login needs starttls true: without it the password would cross the network in clear")


class ChannelFields(BaseModel):
    """What a channel may change (`PATCH`): every field optional."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=100)
    kinds: list[AlertKind] | None = Field(None, min_length=1, max_length=len(ALERT_KINDS),
                                          description="the incidents it is told about; default all")
    stream_failing_minutes: float | None = Field(
        None, ge=0, le=1440, description="a stream must have been failing this long before this channel hears of it")
    url: HttpUrl | None = Field(None, description="webhook and slack: where to POST (checked by the SSRF guard)")
    connection: str | None = Field(None, description="webhook: a webhook connection (signing_secret, "
                                   "authorization); email: an smtp connection")
    to: list[Email] | None = Field(None, min_length=1, max_length=MAX_RECIPIENTS, description="email: recipients")
    enabled: bool | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: HttpUrl | None) -> HttpUrl | None:
        if value is not None and (value.scheme not in ("http", "https") or len(str(value)) > 2000):
            raise ValueError("url must be an http(s) URL of at most 2000 characters")
        return value

    @field_validator("connection")
    @classmethod
    def _connection(cls, value: str | None) -> str | None:
        if value is not None and not CONNECTION_NAME.fullmatch(value):
            raise ValueError("connection names are 1-100 letters, digits or `_ . -`, starting with a letter or digit")
        return value


class ChannelSpec(ChannelFields):
    """`POST /api/alert-channels`: a channel of the caller's project."""

    name: str = Field(min_length=1, max_length=100)
    type: Literal["webhook", "slack", "email"]
    kinds: list[AlertKind] = Field(default_factory=lambda: list(ALERT_KINDS), min_length=1,
                                   max_length=len(ALERT_KINDS), description="the incidents it is told about")
    stream_failing_minutes: float = Field(
        5, ge=0, le=1440, description="a stream must have been failing this long before this channel hears of it")
    enabled: bool = True

    def problem(self) -> str | None:
        """What this channel lacks for its type, or None."""
        if self.type in ("webhook", "slack") and self.url is None:
            return f"a {self.type} channel needs `url`"
        if self.type == "slack" and self.connection is not None:
            return "a slack channel takes no connection: its url is the secret"
        if self.type != "email" and self.to is not None:
            return "`to` is for email channels"
        if self.type == "email" and (self.connection is None or not self.to):
            return "an email channel needs `connection` (an smtp connection) and `to`"
        if self.type == "email" and self.url is not None:
            return "an email channel takes no url"
        return None


class AlertConfig(BaseModel):
    """How the worker delivers alerts: bounded, off the export path."""

    max_attempts: int = Field(5, ge=1, le=20, description="sends of one alert before it is recorded as failed")
    backoff_seconds: float = Field(5.0, ge=0, le=3600, description="wait before the 2nd send; doubles after each")
    timeout_seconds: float = Field(10.0, gt=0, le=60, description="a send (HTTP request or SMTP session) that "
                                   "takes longer fails")
    poll_seconds: float = Field(1.0, gt=0, le=60, description="how often the dispatcher looks for alerts to send")
