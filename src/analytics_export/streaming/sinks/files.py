"""A stream's batches as files in object storage (S3, GCS, Azure): each batch one complete file,
named after the range it covers (`{prefix}/{path}/{range}.{ext}`), so a batch sent again replaces
its file instead of adding one."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from ...destinations import Destination, Target, destination_for
from ...models import ExportRequest
from . import Delivery

if TYPE_CHECKING:
    from ...config import Settings
    from ..spec import StreamSpec


class FilesSink:
    def __init__(self, spec: StreamSpec, project: str, settings: Settings, secrets: dict[str, str]) -> None:
        # the destination modules build from an export request; a stream's has its id, format and compression
        start = datetime(2000, 1, 1, tzinfo=timezone.utc)  # unused: stream files are named by range, no template
        self.request = ExportRequest(id=spec.id, start_date=start, end_date=start + timedelta(days=1),
                                     format=spec.format, compression=spec.compression,
                                     destination=spec.destination)  # type: ignore[arg-type]
        self.destination: Destination = destination_for(Target(self.request, project, settings, secrets))
        self.extension = self.request.file_extension

    def send(self, delivery: Delivery) -> None:
        upload = self.destination.open(f"{delivery.name}{self.extension}")
        try:
            upload.write(delivery.body)
            upload.commit()
        except BaseException:
            upload.abort()
            raise

    def close(self) -> None:
        self.destination.close()


def build(spec: StreamSpec, project: str, settings: Settings, secrets: dict[str, str]) -> FilesSink:
    return FilesSink(spec, project, settings, secrets)
