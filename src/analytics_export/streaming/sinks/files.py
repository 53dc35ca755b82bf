"""A stream's batches as files in object storage (S3, GCS, Azure): each batch one complete file,
named after the range it covers (`{prefix}/{range}.{ext}`), so a batch sent again replaces its file
instead of adding one. A path_template of each event's own values (`date={event_date}`) gives each
batch a file in every partition folder its events fall in, named alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...destinations import Destination, Placement, destination_for
from ...enums import file_suffix
from . import Delivery

if TYPE_CHECKING:
    from ...config import Settings
    from ..spec import StreamSpec


class FilesSink:
    def __init__(self, spec: StreamSpec, project: str, settings: Settings, secrets: dict[str, str]) -> None:
        folder = spec.destination.prefix.strip("/")  # type: ignore[union-attr]  # no path_template (StreamSpec)
        self.destination: Destination = destination_for(Placement(
            spec.destination, project, settings, secrets, folder, spec.format.content_type, export_id=spec.id))
        self.extension = file_suffix(spec.format, spec.compression)

    def send(self, delivery: Delivery) -> None:
        """The batch's file, or its file in each partition's folder (the same names when sent again)."""
        for folder, body in delivery.parts or [("", delivery.body)]:
            name = f"{delivery.name}{self.extension}"
            self.destination.put(f"{folder}/{name}" if folder else name, body)

    def close(self) -> None:
        self.destination.close()


def build(spec: StreamSpec, project: str, settings: Settings, secrets: dict[str, str]) -> FilesSink:
    return FilesSink(spec, project, settings, secrets)
