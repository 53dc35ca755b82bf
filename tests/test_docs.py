"""The README and docs/ hold together: every relative link resolves, and every page is reachable."""

from __future__ import annotations

import re
from pathlib import Path

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
