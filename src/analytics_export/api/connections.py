"""`/api/connections`: a project's named credentials, stored sealed; their values are never shown again."""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Response

from ..connections import ConnectionCreate, ConnectionView
from ..store.jobs import aware
from .deps import Api, problems


def connections_router(api: Api) -> APIRouter:
    router = APIRouter()

    def connection_view(row: Any) -> ConnectionView:
        return ConnectionView(name=row.name, type=row.type, fields=row.fields, created_at=aware(row.created_at))

    @router.post("/api/connections", status_code=201, response_model=ConnectionView, responses=problems(409))
    def create_connection(body: ConnectionCreate, project: Annotated[str, api.project]) -> ConnectionView:
        """Store credentials under a name; the response lists which fields are set, never their values."""
        fields = sorted(k for k, v in body.secrets.items() if v)
        if not api.jobs.create_connection(project, body.name, body.type, fields, api.sealer.seal(body.secrets)):
            raise HTTPException(409, f"connection {body.name!r} exists; DELETE it first to replace it")
        return connection_view(api.jobs.connection(project, body.name))

    @router.get("/api/connections", response_model=list[ConnectionView])
    def list_connections(project: Annotated[str, api.project]) -> list[ConnectionView]:
        return [connection_view(row) for row in api.jobs.list_connections(project)]

    @router.delete("/api/connections/{name}", status_code=204, responses=problems(404))
    def delete_connection(name: str, project: Annotated[str, api.project]) -> Response:
        if not api.jobs.delete_connection(project, name):
            raise HTTPException(404, f"no connection {name!r}")
        return Response(status_code=204)

    return router
