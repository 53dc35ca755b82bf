"""The job store schema's newest revision, known without loading SQLAlchemy or alembic."""

from __future__ import annotations

from pathlib import Path

MIGRATIONS = Path(__file__).with_name("migrations")
HEAD = max(path.name.split("_")[0] for path in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))
"""The newest revision: each migration's file is named after its revision (tests/test_layers.py checks)."""
