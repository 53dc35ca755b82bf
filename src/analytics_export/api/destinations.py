"""`GET /api/destinations`: each destination type the server has, read from the destination
registry: whether exports and streams take it, the secret fields its connections hold, and the
inputs the console's form offers for it."""

from typing import Annotated, Any, Literal, get_args, get_origin

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..destinations.registry import REGISTRY, DestinationType, Kind


class FormInput(BaseModel):
    name: str = Field(description="the settings field it fills")
    label: str
    required: bool
    input: Literal["text", "number", "url"] = Field(description="the kind of input: a number, a URL or text")


class DestinationView(BaseModel):
    type: str
    label: str
    kind: Kind = Field(description="download (this server's folder), files, webhook, table or broker")
    exports: bool = Field(description="exports and schedules may send here")
    streams: bool = Field(description="streams may send here")
    connection_fields: list[str] | None = Field(
        description="the secrets a connection of this type may hold (POST /api/connections); null: takes none")
    required_connection_fields: list[str] = Field(description="the secrets such a connection must hold")
    form: list[FormInput] = Field(description="the inputs the console offers, in order")


class Destinations(BaseModel):
    items: list[DestinationView]


def input_kind(annotation: Any, given: tuple[str, ...]) -> str:
    """The input the registry names (`url`), else `number` for an integer field, else `text`."""
    if given:
        return given[0]
    kinds = set(get_args(annotation)) if get_origin(annotation) is not None else {annotation}
    return "number" if int in kinds else "text"


def view(kind: DestinationType) -> DestinationView:
    fields = kind.config.model_fields
    required, optional = kind.secrets or ((), ())
    return DestinationView(
        type=kind.name, label=kind.label, kind=kind.kind, exports=kind.export is not None,
        streams=kind.stream is not None,
        connection_fields=list(required + optional) if kind.secrets is not None else None,
        required_connection_fields=list(required),
        form=[FormInput(name=name, label=label, required=fields[name].is_required(),
                        input=input_kind(fields[name].annotation, tuple(rest))) for name, label, *rest in kind.form])


def destinations_router(project_dependency: Any) -> APIRouter:
    router = APIRouter(prefix="/api/destinations", tags=["exports"])

    @router.get("", response_model=Destinations)
    def destinations(_project: Annotated[str, project_dependency]) -> Destinations:
        """Every destination type, with what it takes."""
        return Destinations(items=[view(kind) for kind in REGISTRY.values()])

    return router
