"""structlog setup: JSON lines (or console when on a TTY), with secret redaction.

Any string value that contains a secret, and any value under a key that names
a credential, is replaced before it is rendered, tracebacks included.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"
SECRET_KEYS = frozenset({"authorization", "api_key", "apikey", "token", "password", "secret"})


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(s for s in secrets if s)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: REDACTED if str(k).lower() in SECRET_KEYS else self.scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.scrub(v) for v in value)
        return value

    def __call__(self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        scrubbed: MutableMapping[str, Any] = self.scrub(event_dict)  # a mapping scrubbed is a mapping
        return scrubbed


MAX_VALUE = 600
"""A logged string longer than this is cut, with its length said: an upstream can send megabytes in an ID
or an error, and a log line per cycle must stay a line (a run's error text is 500 at most)."""


def bounded(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str) and len(value) > MAX_VALUE and key != "exception":
            event_dict[key] = f"{value[:200]}... ({len(value)} characters)"
    return event_dict


class _ToStructlog(logging.Handler):
    """Routes stdlib logging (APScheduler, asyncio) through structlog: same format, same redaction."""

    def emit(self, record: logging.LogRecord) -> None:
        event = record.getMessage()
        if record.exc_info:
            event += "\n" + logging.Formatter().formatException(record.exc_info)
        structlog.get_logger(record.name).log(record.levelno, event)


def configure(level: str, fmt: str | None, secrets: Iterable[str] = (), stream: TextIO | None = None) -> None:
    """Logging as ``level`` and ``fmt`` (None: JSON, or console on a TTY) say; no defaults of its own for them."""
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    renderer = structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            Redactor(secrets),
            bounded,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers = [_ToStructlog()]
    root.setLevel(logging.WARNING)  # APScheduler's per-run info lines would only repeat the cycle log
