"""`GET /api/destinations`: each destination type the server has, read from the destination
registry: whether exports and streams take it, the secret fields its connections hold, and the
inputs the console's form offers for it. `POST /api/destinations/test`: a destination's settings
tried before anything is saved (probes.py)."""

from typing import Annotated, Any, Literal, Union, get_args, get_origin

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ..probes import try_destination
from ..destinations.registry import REGISTRY, DestinationType, Kind
from .deps import Api, problems


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


AnyDestination = Annotated[Union[tuple(k.config for k in REGISTRY.values())], Field(discriminator="type")]


class DestinationTest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destination: AnyDestination = Field(description="the settings an export, schedule or stream would be given")


class DestinationTestStep(BaseModel):
    name: str = Field(description="address (the SSRF guard), credentials (the connection), connect, then the "
                      "destination's own: write, read back, delete; send; table; catalog; dataset; broker")
    ok: bool
    detail: str = Field(description="what it did or, when it failed, why")
    seconds: float


class DestinationTestResult(BaseModel):
    ok: bool = Field(description="every step passed")
    failed_step: str | None = Field(description="the step that failed, if any")
    error: str | None = Field(description="why it failed, in words that say what to fix")
    steps: list[DestinationTestStep]


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


def destinations_router(api: Api) -> APIRouter:
    router = APIRouter(prefix="/api/destinations", tags=["exports"])

    @router.get("", response_model=Destinations)
    def destinations(_project: Annotated[str, api.project]) -> Destinations:
        """Every destination type, with what it takes."""
        return Destinations(items=[view(kind) for kind in REGISTRY.values()])

    @router.post("/test", response_model=DestinationTestResult, responses=problems(429))
    def test_destination(body: DestinationTest, project: Annotated[str, api.project]) -> DestinationTestResult:
        """Try a destination before saving it: the host checked, the connection found, then a small file
        written, read back and deleted (a signed ping for a webhook; a rolled-back transaction for a table; the
        stream or queue looked up for a broker). Answers 200 with `ok` false and the failing step when the
        destination does not work; 429 while 4 tests run already."""
        probe = try_destination(body.destination, project, api.settings, api.jobs)
        failed = next((s for s in probe.steps if not s.ok), None)
        hide = api.settings.hide_paths
        return DestinationTestResult(ok=failed is None, failed_step=failed.name if failed else None,
                          error=hide(failed.detail) if failed else None,
                          steps=[DestinationTestStep(name=s.name, ok=s.ok, detail=hide(s.detail), seconds=s.seconds)
                                 for s in probe.steps])

    return router
