"""One exception hierarchy; the CLI and the API map each kind to an exit code or HTTP status in one place."""

import errno


class ExportError(Exception):
    """Base of every error analytics-export raises on purpose."""


class Invalid(ExportError):
    """The request or input is wrong; the message says what to fix."""


class NotFound(ExportError):
    """A named thing does not exist."""


class Storage(ExportError):
    """The event store failed to read or write."""


class OutOfMemory(Storage):
    """The event store's memory cap was too small for one piece of work (an ingest body of very wide
    events, say): smaller pieces succeed."""


class Limited(ExportError):
    """A limit on work at once was reached (`max_concurrent_exports`); the same request succeeds once
    some of that work has finished."""


class Upload(ExportError):
    """A destination refused or lost the output."""


class Format(ExportError):
    """A writer could not encode the data."""


class Rejected(ExportError):
    """A destination refused the output for a reason another attempt will not fix (credentials, a
    missing bucket); the message says what to fix."""


class Cancelled(ExportError):
    """The export was stopped on request; its output was discarded."""


def os_error(exc: OSError, path: object) -> Storage:
    """The error for `exc`, met writing at `path` on this machine: a full disk or quota says so in
    words (the worker retries it, as space may be freed), anything else gives the system's reason."""
    if exc.errno == errno.ENOSPC:
        return Storage(f"no space left on the device at {path}")
    if exc.errno == errno.EDQUOT:
        return Storage(f"no space left on the device at {path} (the disk quota is used up)")
    return Storage(f"cannot write to {path}: {exc.strerror or exc}")
