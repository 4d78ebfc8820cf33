"""How a command message becomes scheduler jobs: its class, its toys, its publish time.

Pure helpers shared by the runtime; no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from worker.contract import topology
from worker.contract.messages import Command, Function
from worker.core.rules import is_stop
from worker.core.scheduler import Job, JobClass, W


def job_class(cmd: Command) -> JobClass:
    """Return how the scheduler treats a command's shares."""
    if is_stop(cmd):
        return "stop"
    if isinstance(cmd, Function):
        return "queue" if cmd.stopPrevious == 0 else "replace"
    if cmd.kind in ("Pattern", "Preset", "Position"):
        return "replace"
    return "ordered"


def published_ms(headers: Mapping[str, Any] | None) -> float | None:
    """Return the producer's publish time from ``x-lovense-published-ms``, if usable.

    Callers clamp it to the time the worker received the message: a command cannot
    have been published after it arrived, and a stamp from the future would let it
    slip past every Stop published before that future moment.
    """
    raw = (headers or {}).get(topology.PUBLISHED_MS_HEADER)
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    try:
        value = float(raw) if raw is not None and not isinstance(raw, bool) else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and 0 < value < float("inf") else None


def delivery_count(headers: Mapping[str, Any] | None) -> int:
    """Return how many times RabbitMQ delivered this message before (x-delivery-count)."""
    raw = (headers or {}).get("x-delivery-count")
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else 0


def epoch_ms() -> float:
    """Return the wall clock in epoch milliseconds."""
    return time.time() * 1000.0


def toys_of(cmd: Command) -> tuple[str, ...] | None:
    """Return a command's toy ids, sorted and distinct, or None for every toy (once a message)."""
    if cmd.toy is None:
        return None
    return tuple(sorted({cmd.toy} if isinstance(cmd.toy, str) else set(cmd.toy)))


def toy_list(job: Job[W]) -> list[str] | None:
    """Return a job's toy ids as the list a Lovense body takes."""
    return list(job.toys) if job.toys is not None else None
