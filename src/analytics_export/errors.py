"""One exception hierarchy; the CLI and the API map each kind to an exit code or HTTP status in one place."""


class ExportError(Exception):
    """Base of every error analytics-export raises on purpose."""


class Invalid(ExportError):
    """The request or input is wrong; the message says what to fix."""


class NotFound(ExportError):
    """A named thing does not exist."""


class Storage(ExportError):
    """The event store failed to read or write."""


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
