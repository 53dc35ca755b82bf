"""`python -m analytics_export.cli`: the same command as `analytics-export`."""

from . import run

run()
