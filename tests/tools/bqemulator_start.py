"""Runs bqemulator (BigQuery's REST API on DuckDB) without DuckDB's spatial extension, which it would
download at start: GEOGRAPHY is unused here. Run by the bqemulator tool's own Python (tests/servers.py)."""

import sys

from bqemulator.cli import main
from bqemulator.storage import engine

engine.DuckDBEngine._load_spatial = lambda self: None

sys.exit(main())
