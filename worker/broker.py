"""The broker shell: the only module of the worker that touches aio-pika.

It declares the topology, consumes the shard queues, and decides in one place
(:meth:`Broker._on_message`) what happens to each delivery: its result is
published (to ``lovense.results`` and to ``reply_to``) with publisher confirms,
a rejected message is republished to ``lovense.dead`` with ``x-lovense-error``,
and only then is the delivery acked.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ExchangeType,
)

from worker import topology
from worker.handler import Delivery, Handled
from worker.messages import Result, encoder
from worker.metrics import Metrics

log = structlog.get_logger("worker.broker")

HandleFn = Callable[[Delivery], Awaitable[Handled]]


async def declare(channel: AbstractChannel, shards: int) -> dict[str, AbstractExchange]:
    """Declare every exchange and queue of the contract, idempotently."""
    commands = await channel.declare_exchange(
        topology.COMMANDS_EXCHANGE, ExchangeType.X_CONSISTENT_HASH, durable=True
    )
    dead = await channel.declare_exchange(topology.DEAD_EXCHANGE, ExchangeType.FANOUT, durable=True)
    results = await channel.declare_exchange(
        topology.RESULTS_EXCHANGE, ExchangeType.TOPIC, durable=True
    )
    await channel.declare_exchange(topology.CALLBACKS_EXCHANGE, ExchangeType.FANOUT, durable=True)
    dead_queue = await channel.declare_queue(
        topology.DEAD_QUEUE, durable=True, arguments=topology.dead_arguments()
    )
    await dead_queue.bind(dead, routing_key="")
    for index in range(shards):
        queue = await channel.declare_queue(
            topology.shard_queue(index), durable=True, arguments=topology.shard_arguments()
        )
        # A consistent-hash binding key is the shard's weight.
        await queue.bind(commands, routing_key="1")
    return {"commands": commands, "dead": dead, "results": results}


def _headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    return dict(message.headers or {})


class Broker:
    """Consume command shards and publish results, with one ack decision per delivery."""

    def __init__(self, url: str, shards: int, prefetch: int, metrics: Metrics) -> None:
        self._url = url
        self._shards = shards
        self._per_shard = max(1, math.ceil(prefetch / shards))
        self._metrics = metrics
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._results: AbstractExchange | None = None
        self._dead: AbstractExchange | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._handle: HandleFn | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        """Return whether the broker is connected and consuming every shard."""
        connection = self._connection
        return (
            connection is not None
            and not connection.is_closed
            and len(self._consumers) == self._shards
        )

    async def connect(self) -> None:
        """Connect, open the publishing channel (with confirms) and declare the topology."""
        self._connection = await aio_pika.connect_robust(
            self._url, client_properties={"connection_name": "lovense-worker"}
        )
        self._publisher = await self._connection.channel(publisher_confirms=True)
        exchanges = await declare(self._publisher, self._shards)
        self._results, self._dead = exchanges["results"], exchanges["dead"]
        self._metrics.connected.set(1)

    async def consume(self, handle: HandleFn) -> None:
        """Start consuming every shard queue, one channel and prefetch window per shard."""
        assert self._connection is not None, "connect() first"
        self._handle = handle
        for index in range(self._shards):
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=self._per_shard)
            queue = await channel.get_queue(topology.shard_queue(index), ensure=False)
            tag = await queue.consume(self._on_message)
            self._consumers.append((queue, tag))
        self._metrics.shards_consumed.set(len(self._consumers))
        log.info("consuming_started", shards=self._shards, prefetch_per_shard=self._per_shard)

    async def stop_consuming(self) -> None:
        """Cancel every consumer; deliveries already taken go on to completion."""
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # noqa: BLE001 - the channel may already be gone
                log.warning("consumer_cancel_failed", queue=queue.name, error=repr(exc))
        self._metrics.shards_consumed.set(0)

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for deliveries in progress; return how many remain."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)
        return len(self._inflight)

    async def close(self) -> None:
        """Close the connection (unacked deliveries return to their queues)."""
        if self._connection is not None:
            await self._connection.close()
        self._metrics.connected.set(0)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None and self._handle is not None
        self._inflight.add(task)
        self._metrics.inflight.inc()
        try:
            delivery = Delivery(
                body=message.body,
                message_id=message.message_id,
                headers=_headers(message),
                redelivered=bool(message.redelivered),
            )
            handled = await self._handle(delivery)
            await self._settle(message, handled)
        finally:
            self._metrics.inflight.dec()
            self._inflight.discard(task)
            structlog.contextvars.clear_contextvars()

    async def _settle(self, message: AbstractIncomingMessage, handled: Handled) -> None:
        """Publish the result, dead-letter if asked, then ack: the one ack decision."""
        await self.publish_result(handled.result, message.reply_to, message.correlation_id)
        if handled.dead_letter is not None:
            await self._dead_letter(message, handled.dead_letter)
        await message.ack()

    async def publish_result(
        self, result: Result, reply_to: str | None, correlation_id: str | None
    ) -> None:
        """Publish a result to lovense.results and to reply_to, awaiting broker confirms."""
        assert self._results is not None and self._publisher is not None
        body = encoder.encode(result)
        outgoing = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=result.id,
            correlation_id=correlation_id,
        )
        sends = [self._results.publish(outgoing, routing_key=result.routing_key, mandatory=False)]
        if reply_to:
            sends.append(
                self._publisher.default_exchange.publish(
                    outgoing, routing_key=reply_to, mandatory=False
                )
            )
        await asyncio.gather(*sends)

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        assert self._dead is not None
        headers = _headers(message)
        headers[topology.ERROR_HEADER] = reason[:1024]
        await self._dead.publish(
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
        self._metrics.dead_letters.labels("invalid").inc()
        log.info("command_dead_lettered", reason=reason)
