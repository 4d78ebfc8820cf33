"""Logging: structlog, one JSON event per line in production, readable on a terminal.

Event names are snake_case verbs in the past tense (``command_completed``).
uid and message id are bound through contextvars per message. Secrets are
redacted twice: by key (``token``, ``utoken``, ...) and by value (the configured
developer token and utoken secret never appear in any string logged).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, Final

import msgspec
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_SECRET_KEYS: Final = frozenset({"token", "utoken", "developer_token", "password", "secret"})
_REDACTED: Final = "[redacted]"


class Redactor:
    """A structlog processor that hides secrets by key and by value."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(s for s in secrets if len(s) >= 4)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, _REDACTED)
            return value
        if isinstance(value, dict):
            return {
                k: _REDACTED if k in _SECRET_KEYS else self._scrub(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if key in _SECRET_KEYS:
                event[key] = _REDACTED
            elif self._secrets or isinstance(value, dict | list | tuple):
                event[key] = self._scrub(value)
        return event


def _json_bytes(event: EventDict, **_: Any) -> bytes:
    return msgspec.json.encode(event, enc_hook=repr)


def configure(fmt: str, level: str, secrets: Iterable[str] = ()) -> None:
    """Configure structlog for the whole process (call once, at start-up)."""
    numeric = logging.getLevelName(level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        Redactor(secrets),
    ]
    if fmt == "json":
        processors: list[Processor] = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_json_bytes),
        ]
        factory: Any = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
