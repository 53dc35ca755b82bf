"""What every router of the API shares: the error documentation, the caller's project from its API
key, and the checks a destination and a privacy policy make before work is accepted."""

from typing import Annotated, Any, Callable, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..checks import PROJECT_NAME
from ..config import Settings
from ..connections import Sealer, checked_secrets
from ..errors import Invalid
from ..models import ExportRequest
from ..privacy.policy import Privacy
from ..sources import EventQuery
from ..store.jobs import JobStore
from ..store.policies import PrivacyStore
from .limits import PROJECT_SCOPE_KEY

bearer = HTTPBearer(auto_error=False)
T = TypeVar("T")


class Problem(BaseModel):
    detail: str = Field(description="what is wrong and what to fix")


def problems(*codes: int) -> dict:
    """OpenAPI entries for the error statuses a route can answer."""
    return {code: {"model": Problem} for code in codes}


class Api:
    """The service's state, as the routers read it: settings, the job store, the connections' sealer and
    the privacy policies; `project` is the dependency that gives a route its caller's project."""

    def __init__(self, settings: Settings, jobs: JobStore) -> None:
        self.settings = settings
        self.jobs = jobs
        self.secret = settings.signing_key()
        self.sealer = Sealer(self.secret)
        self.policies = PrivacyStore(jobs, self.sealer)
        self.inline = jobs.engine.dialect.name == "sqlite"
        self.project = Depends(self.project_of)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """A short job-store read from an async route: inline on SQLite (a local WAL read, cheaper than
        the thread hop and GIL hand-offs it would take), in the threadpool on a networked database."""
        return fn(*args) if self.inline else await run_in_threadpool(fn, *args)

    def project_for(self, credentials: HTTPAuthorizationCredentials | None) -> str:
        if credentials is None:
            raise HTTPException(401, "send an API key as `Authorization: Bearer KEY`",
                                headers={"WWW-Authenticate": "Bearer"})
        project = self.jobs.project_for_key(credentials.credentials)
        if project is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if not PROJECT_NAME.fullmatch(project):  # a key made before names were checked: it names folders
            raise HTTPException(403, f"this key's project {project!r} is not a valid project name (1-100 letters, "
                                     "digits or `_ . -`, starting with a letter, digit or `_`): create a key "
                                     "for a valid one with `analytics-export keys create --project NAME`")
        return project

    async def project_of(self, request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        """The caller's project: the one RequestGuard found for a request with a body, else looked up."""
        known = request.scope.get(PROJECT_SCOPE_KEY)
        return known if known is not None else await self.read(self.project_for, credentials)

    async def authenticate(self, scope: Any) -> str:
        return await self.read(self.project_for, await bearer(Request(scope)))

    def check_target(self, project: str, destination: Any) -> None:
        """422 unless the destination's host, credentials and connection are allowed."""
        try:
            checked_secrets(self.settings, self.jobs, project, destination)
        except Invalid as exc:
            raise HTTPException(422, f"destination: {exc}") from None

    def check_privacy(self, project: str, request: ExportRequest) -> None:
        """422 if the project's privacy policy refuses the request (a filter on a denied property)."""
        version, rules, _ = self.policies.policy(project)
        try:
            Privacy(rules.stricter(request.privacy), version=version or None).narrowed(
                EventQuery.from_request(request, project))
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None
