"""The trip of one command message: intake → dispatch → one result.

Broker-independent: :mod:`worker.broker` hands in a :class:`Delivery` and gets
back a :class:`Handled` saying which result to publish and whether the message
goes to ``lovense.dead``; publishing and acking are decided there, in one place.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from worker import intake
from worker.dispatch import Dispatcher, Outcome
from worker.errors import InvalidCommand
from worker.messages import Result
from worker.metrics import Metrics

log = structlog.get_logger("worker.handler")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One command message as the broker received it."""

    body: bytes
    message_id: str | None = None
    headers: Mapping[str, Any] | None = None
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class Handled:
    """What to do with a delivery: publish ``result``; dead-letter it when ``dead_letter``."""

    result: Result
    dead_letter: str | None = None


def rfc3339(moment: datetime) -> str:
    """Return an RFC 3339 UTC timestamp with milliseconds."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Handler:
    """Turn deliveries into results."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        metrics: Metrics,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._now = now

    async def handle(self, delivery: Delivery) -> Handled:
        """Decode, validate and carry out one command; return its one result."""
        received = self._now()
        started = time.perf_counter()
        try:
            cmd = intake.decode(delivery.body)
        except InvalidCommand as exc:
            return self._invalid(delivery, str(exc), received)
        ident = cmd.id or delivery.message_id or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(
            message_id=ident, uid=cmd.uid if cmd.uid is not None else f"{len(cmd.targets)} users"
        )
        crash: str | None = None
        try:
            outcome = await self._dispatcher.run(cmd)
        except Exception as exc:  # noqa: BLE001 - one bad message must not stall the consumer
            log.exception("command_crashed")
            crash = f"internal error: {type(exc).__name__}: {exc}"
            outcome = Outcome(status="failed", message=crash)
        result = self._result(ident, cmd.kind, cmd.targets, outcome, delivery, received)
        self._metrics.messages.labels(result.command, result.status).inc()
        log.info(
            "command_completed", command=result.command, status=result.status, via=result.via,
            code=result.code, ms=round((time.perf_counter() - started) * 1000, 1),
            **({"reason": result.message} if result.status != "ok" else {}),
        )
        if outcome.status == "invalid" or crash is not None:
            return Handled(result, dead_letter=outcome.message)
        return Handled(result)

    def _result(
        self, ident: str, command: str, uids: list[str], outcome: Outcome, delivery: Delivery,
        received: datetime,
    ) -> Result:
        return Result(
            id=ident, command=command, uids=uids, status=outcome.status, via=outcome.via,
            code=outcome.code, message=outcome.message, data=outcome.data,
            attempts=outcome.attempts, fallback=outcome.fallback,
            redelivered=delivery.redelivered, failedUids=outcome.failed_uids,
            receivedAt=rfc3339(received), completedAt=rfc3339(self._now()),
        )

    def _invalid(self, delivery: Delivery, reason: str, received: datetime) -> Handled:
        command, uids, peeked_id = intake.peek(delivery.body)
        ident = peeked_id or delivery.message_id or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(message_id=ident)
        result = self._result(
            ident, command, uids, Outcome(status="invalid", message=reason), delivery, received
        )
        self._metrics.messages.labels(command, "invalid").inc()
        log.warning("command_rejected", command=command, reason=reason)
        return Handled(result, dead_letter=reason)
