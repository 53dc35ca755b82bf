"""`GET /api/formats`: each export format's file extension, content type and the codecs it offers, read
from the formats' spec (`ExportFormat.spec`), so clients and the console offer only what is accepted."""

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..enums import FORMAT_SPECS, Compression, ExportFormat


class FormatView(BaseModel):
    format: ExportFormat
    extension: str = Field(description="the file's extension; a text format's codec adds its own (`.gz`, `.zst`)")
    content_type: str
    codecs: list[Compression] = Field(description="the compressions offered; any other is refused (422)")
    codec_inside_file: bool = Field(description="the codec is the file's own (Parquet pages, Avro blocks), not a "
                                                "stream around it")
    codecs_note: str = Field(description="why other codecs are not offered")


class Formats(BaseModel):
    items: list[FormatView]


def formats_router(project_dependency: Any) -> APIRouter:
    router = APIRouter(prefix="/api/formats", tags=["exports"])

    @router.get("", response_model=Formats)
    def formats(_project: Annotated[str, project_dependency]) -> Formats:
        """Every export format, with the codecs it offers."""
        return Formats(items=[FormatView(format=f, extension=s.extension, content_type=s.content_type,
                                         codecs=list(s.codecs), codec_inside_file=s.codec_inside_file,
                                         codecs_note=s.codecs_note) for f, s in FORMAT_SPECS.items()])

    return router
