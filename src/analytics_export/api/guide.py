"""/guide/: the user guide (docs/ built by mkdocs-material into `guide_site/` by scripts/bootstrap or
scripts/docs), served by the app itself under a CSP that lets nothing load from off the origin."""

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse, Response

SITE = Path(__file__).resolve().parent / "guide_site"
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
       "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
"""mkdocs-material's pages carry small inline scripts and styles of their own; nothing may come from elsewhere."""


def guide_router(site: Path = SITE) -> APIRouter:
    """Files of the built site by their path under it (a folder serves its index.html); 404 saying how
    to build it when it is not built."""
    router = APIRouter(include_in_schema=False)
    root = site.resolve()

    @router.get("/guide")
    def guide_root() -> Response:
        return RedirectResponse("/guide/")

    @router.get("/guide/{path:path}")
    def page(path: str) -> Response:
        if not (root / "index.html").is_file():
            raise HTTPException(404, "the guide is not built: run scripts/docs (scripts/bootstrap builds it too)")
        target = (root / path).resolve()
        if target.is_dir():
            target = target / "index.html"
        if root not in target.parents or not target.is_file():
            raise HTTPException(404, f"no guide page {path!r}")
        return FileResponse(target, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                                             "X-Content-Type-Options": "nosniff"})

    return router
