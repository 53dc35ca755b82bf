"""API key routes: a project lists its keys and revokes them (keys are created with `keys create`)."""

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, Field

from ..store.jobs import KEY_LAST_USED_EVERY, JobStore


class KeyView(BaseModel):
    """A key as listed: never the key or its hash."""

    id: str = Field(description="what DELETE /api/keys/{id} and `keys revoke` take")
    prefix: str | None = Field(description="the key's first characters, to tell keys apart (null: made before "
                                           "prefixes were kept)")
    project: str
    created_at: datetime
    last_used_at: datetime | None = Field(description=f"last authenticated request, to within "
                                                      f"{int(KEY_LAST_USED_EVERY.total_seconds() // 60)} minutes")
    revoked_at: datetime | None


def keys_router(jobs: JobStore, project_dependency: Any, problems: Any) -> APIRouter:
    router = APIRouter(prefix="/api/keys", tags=["keys"])
    Project = Annotated[str, project_dependency]

    @router.get("", response_model=list[KeyView])
    def list_(project: Project) -> list[KeyView]:
        """The caller's project's keys, oldest first, revoked ones included."""
        return [KeyView(**asdict(key)) for key in jobs.list_keys(project)]

    @router.delete("/{key_id}", status_code=204, responses=problems(404))
    def revoke(key_id: str, project: Project) -> Response:
        """Revoke one of the caller's project's keys, the calling key included (whoever holds a key may
        end it: that is how a leaked key is stopped); it is refused within a few seconds by every API
        process. Another project's key is 404."""
        if jobs.revoke_key(key_id, project) is None:
            raise HTTPException(404, f"no key {key_id} in this project")
        return Response(status_code=204)

    return router

