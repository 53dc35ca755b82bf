"""Text that cannot be stored or sent is refused at the door: a JSON body whose strings hold NUL or an
unpaired UTF-16 surrogate (`"\\ud800"` is valid JSON, but no UTF-8 text) would be accepted, then fail
to serialise (a 500), to store in PostgreSQL, or to name a file or an object key."""

from __future__ import annotations

import re
from typing import Any

from fastapi import HTTPException, Request

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(value: Any, where: str = "body") -> str | None:
    """The path of the first string (or key) in `value` holding NUL or a lone surrogate, else None."""
    if isinstance(value, str):
        return where if UNSTORABLE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unstorable(key, where) or unstorable(item, f"{where}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = unstorable(item, f"{where}.{i}")
            if found:
                return found
    return None


async def storable_text(request: Request) -> None:
    """422 when a route's JSON body (already parsed for its model, so this costs no second read)
    holds text no store can keep; routes that read their body raw (ingest) check it themselves."""
    route = request.scope.get("route")
    if getattr(route, "body_field", None) is None or "json" not in request.headers.get("content-type", ""):
        return
    try:
        data = await request.json()
    except ValueError:
        return  # malformed JSON: FastAPI answers it
    where = unstorable(data)
    if where is not None:
        raise HTTPException(422, f"{where.removeprefix('body.')}: text may not hold NUL (\\u0000) or an unpaired "
                                 "surrogate (\\ud800-\\udfff)")
