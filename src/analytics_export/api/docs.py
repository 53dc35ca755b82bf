"""/docs: Swagger UI from the files the swagger-ui-bundle-v2 package ships, served by the app itself,
so the docs render on a machine without internet (FastAPI's default page loads them from a CDN)."""

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
PREFIX = "/docs/assets/"
# Swagger UI needs its page's inline start-up script and inline styles; nothing may leave this origin.
CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def docs_router(openapi_url: str, title: str) -> APIRouter:
    """GET /docs and the three Swagger UI files it loads, under /docs/assets/ by exact name."""
    router = APIRouter(include_in_schema=False)
    folder = Path(str(swagger_ui_path))

    @router.get("/docs")
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url=openapi_url, title=f"{title} - API docs",
                                   swagger_js_url=PREFIX + "swagger-ui-bundle.js",
                                   swagger_css_url=PREFIX + "swagger-ui.css",
                                   swagger_favicon_url=PREFIX + "favicon-32x32.png", oauth2_redirect_url=None,
                                   swagger_ui_parameters={"validatorUrl": None})  # no badge from a remote validator
        page.headers["Content-Security-Policy"] = CSP
        return page

    @router.get(PREFIX + "{name}")
    def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, f"no docs file {name!r}")
        return FileResponse(folder / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})

    return router
