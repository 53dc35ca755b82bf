"""The privacy an export enforces, read from a SQLite job store with the standard library's sqlite3:
an export in this process (the CLI, the library) reads its project's policy, secret and suppression
list without loading SQLAlchemy (0.3 s and 25 MB of each export in a data dir that has a job store).
Anything this cannot read as it is (a schema not at HEAD, a secret not made yet) goes the full way,
through `store.policies.PrivacyStore`."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Callable

from ..privacy.policy import Privacy
from ..privacy.rules import PrivacyRules
from .revision import HEAD

SECRET_FIELD = "hmac_key"
"""The field of the sealed pseudonym secret."""


class Unread(Exception):
    """The job store holds what only the full way can give (it would write it)."""


def sqlite_privacy(path: Path, project: str, requested: PrivacyRules | None,
                   unseal: Callable[[bytes], dict[str, str]]) -> Privacy | None:
    """`project`'s privacy in the SQLite job store at `path` plus the `requested` rules, or None when
    it must be read the full way."""
    try:
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        with closing(con):
            if con.execute("SELECT version_num FROM alembic_version").fetchall() != [(HEAD,)]:
                return None
            row = con.execute("SELECT version, rules FROM privacy_policies WHERE project = ? "
                              "ORDER BY version DESC LIMIT 1", [project]).fetchone()
            version, rules = (row[0], PrivacyRules.model_validate_json(row[1])) if row else (0, PrivacyRules())
            sealed = con.execute("SELECT sealed FROM privacy_secrets WHERE project = ?", [project]).fetchone()
            suppressed = [r[0] for r in con.execute(
                "SELECT distinct_id FROM suppressions WHERE project = ? ORDER BY distinct_id", [project])]
    except sqlite3.Error:  # locked past the timeout, a table missing: the full way says what is wrong
        return None

    def secret() -> bytes:
        if sealed is None:
            raise Unread
        return bytes.fromhex(unseal(sealed[0])[SECRET_FIELD])

    try:
        return Privacy.of(version, rules, requested, secret, suppressed)
    except Unread:
        return None
