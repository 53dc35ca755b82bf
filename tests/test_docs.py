"""The README and docs/ hold together: every relative link resolves, and every page is reachable."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from analytics_export import Settings
from analytics_export.api.app import create_app
from analytics_export.api.guide import SITE, guide_router
from analytics_export.store.jobs import JobStore

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:|#", target)]


def test_every_relative_link_resolves():
    dead = [f"{page.relative_to(ROOT)} -> {target}" for page in PAGES for target in links(page)
            if not (page.parent / target.split("#")[0]).exists()]
    assert dead == []


def test_every_page_is_linked_from_the_readme_or_the_index():
    linked = {(page.parent / target.split("#")[0]).resolve()
              for page in (ROOT / "README.md", ROOT / "docs" / "index.md") for target in links(page)}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked and p.name != "index.md"]
    assert unlinked == []


def build(folder: Path) -> None:
    """docs/ built by mkdocs-material (strict: a broken nav entry, link or anchor fails the build)."""
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(folder)], cwd=ROOT,
                   check=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("guide")
    build(folder)
    return folder


@pytest.fixture(scope="session")
def served_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the app serves, built as scripts/docs builds it when it is not built yet (into a
    temporary folder moved into place, so a concurrent build never leaves half a site)."""
    if not (SITE / "index.html").is_file():
        folder = SITE.with_name(f"{SITE.name}.{os.getpid()}")
        build(folder)
        try:
            folder.replace(SITE)
        except OSError:  # built meanwhile by another process
            shutil.rmtree(folder)
    return SITE


def guide(site: Path) -> TestClient:
    app = FastAPI()
    app.include_router(guide_router(site))
    return TestClient(app)


def test_the_guide_serves_every_page_of_the_built_site(site):
    client = guide(site)
    home = client.get("/guide/")
    assert home.status_code == 200 and "analytics-export" in home.text
    assert "Content-Security-Policy" in home.headers
    for page in PAGES[1:]:
        path = "" if page.stem == "index" else f"{page.stem}/"
        response = client.get(f"/guide/{path}")
        assert response.status_code == 200, page.name
        off_origin = re.search(r'src="(?:https?:)?//|<link[^>]*href="(?:https?:)?//', response.text)
        assert off_origin is None, page.name  # a footer hyperlink is fine; nothing may load from elsewhere
    assert client.get("/guide", follow_redirects=False).headers["location"] == "/guide/"
    assert client.get("/guide/../../pyproject.toml").status_code == 404


def test_an_unbuilt_guide_says_how_to_build_it(tmp_path):
    response = guide(tmp_path / "nothing").get("/guide/")
    assert response.status_code == 404 and "scripts/docs" in response.json()["detail"]


def test_the_service_serves_the_built_guide(served_site, tmp_path):
    client = TestClient(create_app(Settings(data_dir=tmp_path), JobStore.for_data_dir(tmp_path)))
    for path in ("/guide/", "/guide/destinations/"):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html"), path
    assert "SSRF" in client.get("/guide/destinations/").text
    assert 'href="/guide/"' in client.get("/").text  # the console's Guide link


def test_the_console_links_to_the_guide():
    page = (ROOT / "src" / "analytics_export" / "console" / "index.html").read_text()
    assert 'href="/guide/"' in page


@pytest.mark.server  # starts a browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian's chromium is not at /usr/bin/chromium "
                    "(scripts/bootstrap --dev installs it)")
def test_the_guides_search_works_offline_in_a_browser(site):
    """mkdocs-material's search (a web worker and its index) runs under the guide's CSP, served from this
    origin alone: typing a word finds pages, and no request leaves the origin."""
    import socket
    import threading
    import time

    import uvicorn
    from playwright.sync_api import sync_playwright

    from helpers import ARGS, CHROMIUM

    app = FastAPI()
    app.include_router(guide_router(site))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page()
            elsewhere: list[str] = []
            errors: list[str] = []
            page.on("request", lambda r: elsewhere.append(r.url)
                    if not r.url.startswith((base, "data:", "blob:")) else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/guide/")
            page.locator("label.md-search__icon, .md-search__input").first.click()
            page.locator("input.md-search__input").type("webhook", delay=50)
            page.wait_for_selector(".md-search-result__item", timeout=15_000)
            assert page.locator(".md-search-result__item").count() > 0
            browser.close()
    finally:
        server.should_exit = True
    assert elsewhere == [] and errors == []
