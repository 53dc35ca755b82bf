"""Named connections: a destination's credentials, stored encrypted with a key derived from the
server secret and referenced by name, so they never travel in export requests or responses."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Literal

from cryptography.fernet import Fernet, InvalidToken
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .alerts import SMTP_FIELDS, check_smtp
from .checks import CONNECTION_NAME
from .destinations import registry
from .destinations.assume_role import check_usable, is_role
from .destinations.guard import check_destination
from .destinations.specs import check_header_value, check_headers
from .errors import Invalid

if TYPE_CHECKING:
    from .config import Settings
    from .store.jobs import JobStore

OTHER_CONNECTIONS: dict[str, tuple[tuple[tuple[str, ...], tuple[str, ...]], Callable[[dict[str, str]], None]]] = {
    "smtp": (SMTP_FIELDS, check_smtp),
}
"""Connections that serve no destination: (required fields, optional fields) and their rules."""
ConnectionType = Literal[tuple(name for name, kind in registry.REGISTRY.items() if kind.secrets is not None)
                         + tuple(OTHER_CONNECTIONS)]
"""The destination types that take a connection (their secret fields are the registry's), and the others."""


def connection_fields(type: str) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], Callable | None]:
    """A connection type's (required, optional) fields and the rules on them."""
    if type in OTHER_CONNECTIONS:
        return OTHER_CONNECTIONS[type]
    kind = registry.get(type)
    return kind.secrets or ((), ()), kind.check_secrets


class ConnectionCreate(BaseModel):
    """`POST /api/connections`: a name, the destination type it serves, and its secrets."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="referenced as `connection` by destinations of the same type")
    type: ConnectionType
    secrets: dict[str, str] = Field(description="credentials; never shown again, stored encrypted")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CONNECTION_NAME.fullmatch(value):
            raise ValueError("connection names are 1-100 letters, digits or `_ . -`, starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _fields(self) -> ConnectionCreate:
        (required, optional), check = connection_fields(self.type)
        unknown = sorted(set(self.secrets) - set(required) - set(optional))
        if unknown:
            raise ValueError(f"secrets.{unknown[0]} is not a {self.type} field; use "
                             + ", ".join(required + optional))
        missing = [f for f in required if not self.secrets.get(f)]
        if missing:
            raise ValueError(f"secrets.{missing[0]} is required for a {self.type} connection")
        if check is not None:
            check(self.secrets)
        return self


class ConnectionView(BaseModel):
    """A connection as the API shows it: which secret fields are set, never their values."""

    name: str
    type: ConnectionType
    fields: list[str]
    created_at: datetime


def checked_secrets(settings: Settings, jobs: JobStore, project: str, destination: Any) -> dict[str, str]:
    """The secrets of `destination`'s connection, once its host, its credentials and its connection
    are allowed (Invalid otherwise). The API checks with it when an export or schedule is created,
    the worker again when the export runs (a name may resolve elsewhere by then)."""
    check_destination(destination, settings.destination_allow)
    settings.check_credentials(destination)
    name = getattr(destination, "connection", None)
    if name is None:
        secrets: dict[str, str] = {}
    else:
        row = jobs.connection(project, name)
        if row is None:
            raise Invalid(f"no connection {name!r} in this project; create it with POST /api/connections")
        if row.type != destination.type:
            raise Invalid(f"connection {name!r} is a {row.type} connection, not {destination.type}")
        secrets = Sealer(settings.signing_key()).open(row.sealed)
    if destination.type == "webhook":
        check_sendable_headers(destination.headers, secrets)
    if destination.type == "s3" and is_role(secrets):
        check_usable(settings, secrets)
    return secrets


def check_sendable_headers(headers: dict[str, str], secrets: dict[str, str]) -> None:
    """Invalid (a permanent failure, not retried) unless the webhook's headers and its connection's
    authorization are valid HTTP fields: rows stored before these checks existed are checked here."""
    try:
        check_headers(headers)
        if secrets.get("authorization"):
            check_header_value("Authorization", secrets["authorization"])
    except ValueError as exc:
        raise Invalid(f"webhook {exc}; fix the destination's headers or the connection's authorization") from None


class Sealer:
    """Encrypts secrets with Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from the server secret."""

    def __init__(self, server_key: bytes) -> None:
        derived = hashlib.sha256(b"analytics-export connections\0" + server_key).digest()
        self.fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, secrets: dict[str, str]) -> bytes:
        return self.fernet.encrypt(json.dumps(secrets).encode())

    def open(self, token: bytes) -> dict[str, str]:
        try:
            return json.loads(self.fernet.decrypt(token))
        except InvalidToken:
            raise Invalid("a stored connection cannot be decrypted: the server secret changed; "
                          "create the connection again") from None
