"""One exception tree for the whole collector.

    CollectorError
     ├── ConfigError      a setting, flag, env var or file is wrong (exit status 2)
     ├── FetchError       the API could not be reached, or answered with an error status
     │    ├── AuthError   401 or 403: the key is wrong or lacks access
     │    ├── NotFound    404: the session is gone
     │    └── Deferred    not sent: a 429's pause or the request budget outlasts the caller's deadline
     ├── PayloadError     the API answered, but the body is not a payload we understand
     └── StateError       the state store cannot be read or written

Messages never carry the API key.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base of every error the collector raises on purpose."""


class ConfigError(CollectorError):
    """A bad setting; the process exits with status 2 and this one-line message."""


class FetchError(CollectorError):
    """The API could not be reached, or answered with an error status."""

    def __init__(self, message: str, *, operation: str, status: int | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.status = status


class AuthError(FetchError):
    """401 or 403 from the API."""


class NotFound(FetchError):
    """404 from the API: the session was deleted."""


class Deferred(FetchError):
    """The request was not sent: a pause a 429 asked for, or its place in the request budget, comes after the
    caller's deadline. Nothing is wrong with the session: the poller carries it, as a cycle cut by its deadline."""


class PayloadError(CollectorError):
    """The API answered 2xx with a body that does not validate."""

    def __init__(self, message: str, *, operation: str) -> None:
        super().__init__(message)
        self.operation = operation


class StateError(CollectorError):
    """The state store cannot be read or written."""
