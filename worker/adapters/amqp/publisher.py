"""Publishing: results (with confirms, to ``lovense.results`` and ``reply_to``), dead letters,
Stops appended to the Stop log for every replica, and user lifecycle events.

Headers pamqp decodes but cannot encode back are made publishable first
(:func:`wire_headers`), so a copy of any delivery can always travel again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage

from worker.adapters.amqp.link import Link
from worker.contract import topology
from worker.contract.messages import Result, encoder
from worker.core.results import Delivery
from worker.core.rules import id_fits
from worker.metrics import Metrics
from worker.tracing import OFF, Tracing

log = structlog.get_logger("worker.adapters.amqp.publisher")

_FLOAT_MAX: Final = 3.4e38


def wire_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return a delivery's headers in a form that can be published again.

    pamqp decodes a long string that is not UTF-8 as ``bytes``, which it cannot
    encode back: such values travel on as byte arrays. It encodes every float in
    single precision: a double beyond that range travels on as its text.
    """
    return {key: _wire_value(value) for key, value in (headers or {}).items()}


def _wire_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, float) and not abs(value) <= _FLOAT_MAX:
        return repr(value)
    if isinstance(value, dict):
        return wire_headers(value)
    if isinstance(value, list | tuple):
        return [_wire_value(item) for item in value]
    return value


class Publisher:
    """Everything the worker publishes, on the link's current publishing channel."""

    def __init__(self, link: Link, metrics: Metrics, tracing: Tracing = OFF) -> None:
        self._link = link
        self._metrics = metrics
        self._tracing = tracing

    def closed(self) -> bool:
        """Return whether the publishing channel is gone (a connection lost under it)."""
        try:
            return self._link.session.publisher.is_closed
        except RuntimeError:
            return False  # never connected: nothing was lost

    async def publish_result(
        self, result: Result, reply_to: str | None, correlation_id: str | None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish a result to lovense.results and to reply_to, awaiting broker confirms.

        ``headers``: the trace context the result carries (``traceparent``), if any.
        """
        session = self._link.session
        outgoing = aio_pika.Message(
            encoder.encode(result),
            headers=headers or None,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            # AMQP's message_id is a short string: a longer id travels in the body only.
            message_id=result.id if id_fits(result.id) else None,
            correlation_id=correlation_id,
        )
        published = session.results.publish(outgoing, routing_key=result.routing_key,
                                            mandatory=False)
        if not reply_to:
            await published  # the common case: no task for gather to wrap it in
            return
        await asyncio.gather(published, session.publisher.default_exchange.publish(
            outgoing, routing_key=reply_to, mandatory=False))

    async def publish_event(self, body: bytes, routing_key: str, message_id: str) -> None:
        """Publish one user lifecycle event to lovense.events, awaiting the broker's confirm."""
        await self._link.session.events.publish(
            aio_pika.Message(body, content_type="application/json", message_id=message_id,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=routing_key, mandatory=False)

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str, kind: str,
                          trace: Mapping[str, Any] | None = None) -> None:
        """Republish a message to lovense.dead with why, in ``x-lovense-error``.

        ``trace``: the trace context (``traceparent``) it carries instead of its own, if any.
        """
        headers = wire_headers(message.headers)
        headers.update(trace or {})
        headers[topology.ERROR_HEADER] = reason[:1024]
        headers[topology.ORIGIN_EXCHANGE_HEADER] = message.exchange or ""
        headers[topology.ORIGIN_ROUTING_KEY_HEADER] = message.routing_key or ""
        await self._link.session.dead.publish(
            aio_pika.Message(
                message.body,
                headers=headers,
                content_type=message.content_type,
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                reply_to=message.reply_to,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="",
        )
        self._metrics.dead_letters.labels(kind).inc()
        log.info("message_dead_lettered", kind=kind, reason=reason)

    async def announce_stop(self, delivery: Delivery) -> None:
        """Append a Stop that arrived on lovense.commands to the Stop log for every replica."""
        headers = wire_headers(delivery.headers)
        if self._tracing.enabled:
            self._tracing.inject(headers)  # the Stop's receive span, current in its task
        await self._link.session.publisher.default_exchange.publish(
            aio_pika.Message(delivery.body, headers=headers,
                             message_id=delivery.message_id,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=topology.STOP_LOG,
        )
