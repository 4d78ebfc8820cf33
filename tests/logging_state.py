"""Tests that configure logging (``configure_logs``, an in-process CLI call) put it back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from worker.logs import LIBRARY_LOGGERS


@contextmanager
def logging_restored() -> Iterator[None]:
    """Restore structlog's config, the root logger's handlers and level, and the libraries'
    levels as they were on entry."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, library_level in libraries.items():
            logging.getLogger(name).setLevel(library_level)
