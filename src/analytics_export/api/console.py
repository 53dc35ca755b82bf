"""The web console: `index.html` at `/` and its static files under `/console/`, with a strict CSP."""

import hashlib
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

FOLDER = Path(__file__).resolve().parent.parent / "console"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def console_router() -> APIRouter:
    """Serves only the files in the console folder (by exact name, so no path can escape it); `no-cache`
    with an ETag, so a new version is picked up at once and an unchanged one costs a 304."""
    router = APIRouter(include_in_schema=False)

    def serve(name: str, request: Request) -> Response:
        files = {p.name: p for p in FOLDER.iterdir() if p.suffix in TYPES and p.is_file()}
        if name not in files:
            raise HTTPException(404, f"no console file {name!r}")
        body = files[name].read_bytes()
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers = {**HEADERS, "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=TYPES[files[name].suffix], headers=headers)

    @router.get("/")
    def index(request: Request) -> Response:
        return serve("index.html", request)

    @router.get("/console/{name}")
    def static(name: str, request: Request) -> Response:
        return serve(name, request)

    return router
