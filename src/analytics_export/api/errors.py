"""How the API answers the errors routes raise: each a 4xx or 503 with a message that says what to do."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..checks import describe_errors
from ..config import Settings
from ..errors import Invalid, Limited, NotFound, Storage

RETRY_LIMITED = 10
"""Seconds a 429 (the project's exports at max_concurrent_exports) asks a client to wait: about a small
export's run, a few status polls."""


def add_error_handlers(app: FastAPI, settings: Settings) -> None:
    """Storage 503 (retry), Invalid and bad input 422, NotFound 404, Limited 429; paths in the data dir hidden."""
    @app.exception_handler(Storage)
    async def unavailable(_: Request, exc: Storage) -> JSONResponse:
        """A store that is busy or unreachable (the event store's lock, a job store conflict): retry."""
        return JSONResponse({"detail": settings.hide_paths(str(exc))}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Invalid)
    async def refused(_: Request, exc: Invalid) -> JSONResponse:
        """Bad input a route did not answer itself (a project's limit on schedules, say): never a 500."""
        return JSONResponse({"detail": settings.hide_paths(str(exc))}, status_code=422)

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(OverflowError)
    async def out_of_range(_: Request, exc: OverflowError) -> JSONResponse:
        """Date arithmetic past year 1 or 9999 on a date the request gave: its input, not our fault."""
        return JSONResponse({"detail": f"a date or number in the request is out of range ({exc}): use dates "
                                       "between years 1 and 9999 with room for the window"}, status_code=422)

    @app.exception_handler(Limited)
    async def limited(_: Request, exc: Limited) -> JSONResponse:
        """Too much of the project's work is pending or running: the same request succeeds later."""
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(RETRY_LIMITED)})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_errors(exc.errors(), skip=("body",))}, status_code=422)

