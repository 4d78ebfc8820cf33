"""Settling deliveries: the one place that decides what happens to each message.

:meth:`Settler.process` carries a delivery to its settlement: its result is
published (to ``lovense.results`` and to ``reply_to``) with publisher confirms,
a rejected message is republished to ``lovense.dead`` with ``x-lovense-error``,
and only then is the delivery acked.

Every delivery ends settled, whatever raises on the way: handling that crashes
gives a ``failed`` result and a dead letter; a result that cannot be published
as it is (an id too long for AMQP) is rebuilt in a form that can; and when even
that fails the broker is asked to dead-letter the message (``reject`` without
requeue). Only a lost channel leaves a delivery unsettled: RabbitMQ then hands
it out again, and the memory of finished ids answers it without a second call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry.trace import Span

from worker.adapters.amqp.link import CONNECTION_ERRORS, Link
from worker.adapters.amqp.publisher import Publisher
from worker.core.jobs import published_ms
from worker.core.results import Delivery, Handled, Lane, publishable
from worker.metrics import Metrics
from worker.tracing import OFF, TRACEPARENT, TRACESTATE, Receiving, Tracing

log = structlog.get_logger("worker.adapters.amqp.settle")

#: Handles one delivery (the runtime's ``handle``).
HandleFn = Callable[[Delivery], Awaitable[Handled]]
#: Answers a delivery whose handling raised: a ``failed`` result to publish and dead-letter.
CrashFn = Callable[[Delivery, BaseException], Handled]


def delivery_of(message: AbstractIncomingMessage, lane: Lane) -> Delivery:
    """Return what the core needs of an incoming message."""
    return Delivery(
        body=message.body,
        message_id=message.message_id,
        headers=dict(message.headers or {}),
        redelivered=bool(message.redelivered),
        lane=lane,
    )


class Settler:
    """Handle deliveries and settle each exactly once; know which are still in progress."""

    def __init__(self, link: Link, publisher: Publisher, metrics: Metrics, handle: HandleFn,
                 crashed: CrashFn, tracing: Tracing = OFF) -> None:
        self._link = link
        self._tracing = tracing
        self._publisher = publisher
        self._metrics = metrics
        self._handle = handle
        self._crashed = crashed
        self._inflight: set[asyncio.Task[None]] = set()

    async def on_command(self, message: AbstractIncomingMessage) -> None:
        """Consume callback of the command shards."""
        await self.process(message, "commands")

    async def on_stop(self, message: AbstractIncomingMessage) -> None:
        """Consume callback of the Stop lane."""
        await self.process(message, "stop")

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for deliveries in progress; return how many remain."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)
        return len(self._inflight)

    async def process(self, message: AbstractIncomingMessage, lane: Lane) -> None:
        """Carry one delivery to its settlement: the one place that decides it."""
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        self._metrics.inflight.inc()
        span = self._receive_span(message, lane)
        handled: Handled | None = None
        failure: BaseException | None = None
        try:
            delivery = delivery_of(message, lane)
            try:
                handled = await self._handle(delivery)
            except Exception as exc:
                if self.gone(message, exc):
                    raise
                log.error("delivery_crashed", error=repr(exc), exc_info=exc)
                self._metrics.child(self._metrics.settle_fallbacks, "crashed").inc()
                handled = self._crashed(delivery, exc)
            await self._settle(message, handled)
        except Exception as exc:
            failure = exc
            if self.gone(message, exc):
                # The channel went away: the message comes back after the reconnect and is
                # answered from the memory of finished ids, without a second call.
                log.info("delivery_abandoned", error=repr(exc))
            else:
                await self._reject(message, exc)
        finally:
            self._metrics.inflight.dec()
            self._inflight.discard(task)
            structlog.contextvars.clear_contextvars()
            if span is not None:
                self._tracing.received(
                    span, error=failure,
                    command=handled.result.command if handled is not None else None,
                    status=handled.result.status if handled is not None else None,
                    dead_lettered=handled is not None and handled.dead_letter is not None)

    def _receive_span(self, message: AbstractIncomingMessage, lane: Lane) -> Receiving | None:
        if not self._tracing.enabled:
            return None
        stamp = published_ms(message.headers)
        return self._tracing.receive(
            message.headers, lane=lane, exchange=message.exchange or "",
            message_id=message.message_id, size=len(message.body),
            queue_wait_ms=None if stamp is None else max(0.0, time.time() * 1000 - stamp))

    def gone(self, message: AbstractIncomingMessage, error: BaseException) -> bool:
        """Return whether ``error`` means a lost channel or connection, not a bad message.

        Then the delivery cannot be settled here (or must not be: the result may not
        have gone out); RabbitMQ hands it out again after the reconnect. A Stop-lane
        delivery's channel can be open while the publishing connection is gone.
        """
        if isinstance(error, RecursionError):
            return False  # a RuntimeError, but the message's fault
        channel = getattr(message, "channel", None)
        return (self._link.lost.is_set() or bool(getattr(channel, "is_closed", False))
                or isinstance(error, CONNECTION_ERRORS) or self._publisher.closed())

    async def _settle(self, message: AbstractIncomingMessage, handled: Handled) -> None:
        """Publish the result, dead-letter if asked, then ack."""
        with self._tracing.publishing(handled.result.routing_key) as span:
            await self._publish(message, handled, self._context_headers(message, span))
        await message.ack()

    async def _publish(self, message: AbstractIncomingMessage, handled: Handled,
                       trace: dict[str, Any]) -> None:
        publish = self._publisher.publish_result
        try:
            await publish(handled.result, message.reply_to, message.correlation_id, trace)
        except Exception as exc:
            if self.gone(message, exc):
                raise
            # Never a second call for this identity: a result that can be published instead.
            log.error("result_unpublishable", error=repr(exc))
            self._metrics.child(self._metrics.settle_fallbacks, "result_rebuilt").inc()
            await publish(publishable(handled.result, exc), message.reply_to,
                          message.correlation_id, trace)
        if handled.dead_letter is not None:
            await self._publisher.dead_letter(message, handled.dead_letter, "invalid", trace)

    def _context_headers(self, message: AbstractIncomingMessage,
                         span: Span | None) -> dict[str, Any]:
        """Return the trace context results and dead letters carry: the publish span's, or,
        tracing off, the command's own (so a producer's trace goes on through the worker)."""
        headers: dict[str, Any] = {}
        if span is not None:
            self._tracing.inject(headers, span)
            return headers
        for name in (TRACEPARENT, TRACESTATE):
            value = (message.headers or {}).get(name)
            if isinstance(value, str) and len(value) <= 1024:
                headers[name] = value
        return headers

    async def _reject(self, message: AbstractIncomingMessage, error: Exception) -> None:
        """Last resort: let RabbitMQ dead-letter the message (its queue's dead-letter exchange)."""
        log.error("delivery_rejected", error=repr(error), exc_info=error)
        self._metrics.child(self._metrics.settle_fallbacks, "rejected").inc()
        try:
            await message.reject(requeue=False)
        except Exception as exc:  # noqa: BLE001 - the channel went too; RabbitMQ redelivers
            log.warning("delivery_reject_failed", error=repr(exc))
