"""Where a stream's batches go. A sink sends one batch and returns once the destination has
acknowledged it (HTTP 2xx, the object committed, JetStream's PubAck, RabbitMQ's publisher confirm,
the table's transaction or commit); it raises if it could not, and the batch is sent again. One
module per kind of destination, named by the destination registry (`stream`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

from ...destinations import registry

if TYPE_CHECKING:
    from ...config import Settings
    from ..spec import StreamSpec

@dataclass
class Delivery:
    """One batch of a stream, ready to send.

    `name` is derived from the range of the stream's sequence the batch covers (the same batch sent
    again has the same name: object names overwrite, message ids deduplicate). `body` is the batch
    in the stream's format and compression; `messages` are the events one by one as
    (uuid, JSON object bytes), for brokers sending a message per event; `rows` are the Arrow
    batches themselves (with `uuid` and `inserted_at`), for tables, which take no body."""

    name: str
    body: bytes
    messages: list[tuple[str, bytes]]
    content_type: str
    content_encoding: str | None = None
    rows: list[pa.RecordBatch] = field(default_factory=list)
    parts: list[tuple[str, bytes]] = field(default_factory=list)
    """Files laid out by each event's values (`path_template`): each partition's folder and body, in place
    of `body`."""


class Sink(Protocol):
    def send(self, delivery: Delivery) -> None:
        """Deliver and wait for the acknowledgement; raise (an ExportError subclass) on failure."""

    def close(self) -> None: ...


def sink_for(spec: StreamSpec, project: str, settings: Settings, secrets: dict[str, str]) -> Sink:
    """The sink of `spec.destination`, built by its registered module with the connection's `secrets`."""
    return registry.load(registry.get(spec.destination.type).stream)(spec, project, settings, secrets)
