"""Persistent export jobs: the job store, API keys, and workers that run jobs under leases."""
