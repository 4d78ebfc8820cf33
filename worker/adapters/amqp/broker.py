"""The broker's delivery shell: consume command shards and the Stop lane, settle every delivery.

It declares the topology, consumes the command shards and the Stop lane, follows
the Stop log, and decides in one place (:meth:`Broker._process`) what happens to
each delivery: its result is published (to ``lovense.results`` and to
``reply_to``) with publisher confirms, a rejected message is republished to
``lovense.dead`` with ``x-lovense-error``, and only then is the delivery acked.

Every delivery ends settled, whatever raises on the way: handling that crashes
gives a ``failed`` result and a dead letter; a result that cannot be published
as it is (an id too long for AMQP) is rebuilt in a form that can; and when even
that fails the broker is asked to dead-letter the message (``reject`` without
requeue). Only a lost channel leaves a delivery unsettled: RabbitMQ then hands
it out again, and the memory of finished ids answers it without a second call.

The Stop lane has its own connection, so a Stop never queues behind command
frames on a busy socket.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    ExchangeType,
)

from worker.contract import topology
from worker.contract.messages import Result, encoder
from worker.core.assignment import Assignment
from worker.core.results import Delivery, Handled, Lane, publishable
from worker.core.rules import id_fits
from worker.metrics import Metrics
from worker.services.catchup import Replay

log = structlog.get_logger("worker.adapters.amqp.broker")

HandleFn = Callable[[Delivery], Awaitable[Handled]]
#: Answers a delivery whose handling raised: a ``failed`` result to publish and dead-letter.
CrashFn = Callable[[Delivery, BaseException], Handled]
#: Applies a Stop-log entry; False (or raising) when it cannot be applied (it is skipped).
StopLogFn = Callable[[Delivery], bool]
STOP_LANE_PREFETCH = 64
STOP_LOG_PREFETCH = 1000


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
    stop = await channel.declare_exchange(topology.STOP_EXCHANGE, ExchangeType.FANOUT,
                                          durable=True)
    dead_queue = await channel.declare_queue(
        topology.DEAD_QUEUE, durable=True, arguments=topology.dead_arguments()
    )
    await dead_queue.bind(dead, routing_key="")
    stop_queue = await channel.declare_queue(
        topology.STOP_QUEUE, durable=True, arguments=topology.shard_arguments()
    )
    await stop_queue.bind(stop, routing_key="")
    stop_log = await channel.declare_queue(
        topology.STOP_LOG, durable=True, arguments=topology.stop_log_arguments()
    )
    await stop_log.bind(stop, routing_key="")
    for index in range(shards):
        queue = await channel.declare_queue(
            topology.shard_queue(index), durable=True, arguments=topology.shard_arguments()
        )
        # A consistent-hash binding key is the shard's weight.
        await queue.bind(commands, routing_key="1")
    return {"commands": commands, "dead": dead, "results": results}


_FLOAT_MAX: Final = 3.4e38
#: Failures that mean the broker connection or a channel went away, not a bad message.
_CONNECTION_ERRORS: Final = (aio_pika.exceptions.AMQPError, ConnectionError,
                             aiormq.exceptions.ChannelInvalidStateError)


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


def _delivery(message: AbstractIncomingMessage, lane: Lane) -> Delivery:
    return Delivery(
        body=message.body,
        message_id=message.message_id,
        headers=dict(message.headers or {}),
        redelivered=bool(message.redelivered),
        lane=lane,
    )


class Broker:
    """Consume command shards and the Stop lane, publish results, one ack decision each."""

    def __init__(self, url: str, shards: int, prefetch: int, metrics: Metrics,
                 assignment: Assignment | None = None) -> None:
        self._url = url
        self._shards = shards
        self._assignment = assignment or Assignment(
            0, 1, shards, presence_ttl_s=topology.PRESENCE_TTL_S, clock=time.monotonic)
        # Prefetch is split over the shards this replica owns (stand-ins get the same share).
        self._per_shard = max(1, math.ceil(prefetch / len(self._assignment.owned())))
        self._shard_consumers: dict[int, tuple[AbstractQueue, str]] = {}
        self._presence_task: asyncio.Task[None] | None = None
        self._metrics = metrics
        self._connection: AbstractConnection | None = None
        self._stop_connection: AbstractConnection | None = None
        # Reconnection is ours, not aio-pika's robust connection: measured here, its
        # restored channels did not consume again after the broker closed them.
        self._lost = asyncio.Event()
        self._closing = False
        self._stop_log_offset: int | None = None
        self._stop_log_handler: StopLogFn | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._publisher: AbstractChannel | None = None
        self._results: AbstractExchange | None = None
        self._dead: AbstractExchange | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._handle: HandleFn | None = None
        self._crashed: CrashFn | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._marker = uuid.uuid4().hex
        self._replayed = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Return whether the broker is connected and consuming every shard and the Stop lane."""
        connected = not self._lost.is_set() and all(
            c is not None and not c.is_closed for c in (self._connection, self._stop_connection)
        )
        self._metrics.connected.set(1 if connected else 0)
        return connected and len(self._consumers) == 1 and (
            len(self._shard_consumers) == self._shards)

    async def connect(self) -> None:
        """Connect, open the publishing channel (with confirms) and declare the topology."""
        self._connection = await aio_pika.connect(
            self._url, client_properties={"connection_name": "lovense-worker"}
        )
        self._stop_connection = await aio_pika.connect(
            self._url, client_properties={"connection_name": "lovense-worker-stop-lane"}
        )
        for connection in (self._connection, self._stop_connection):
            connection.close_callbacks.add(self._on_connection_closed)
        self._publisher = await self._connection.channel(publisher_confirms=True)
        exchanges = await declare(self._publisher, self._shards)
        self._results, self._dead = exchanges["results"], exchanges["dead"]
        self._metrics.connected.set(1)

    async def follow_stop_log(self, on_stop: StopLogFn) -> None:
        """Replay the Stop log's last hour, then keep following it; return once caught up."""
        assert self._stop_connection is not None and self._publisher is not None
        channel = await self._stop_connection.channel()
        await channel.set_qos(prefetch_count=STOP_LOG_PREFETCH)
        queue = await channel.get_queue(topology.STOP_LOG, ensure=False)

        self._stop_log_handler = on_stop
        self._replayed.clear()

        replay = Replay(STOP_LOG_PREFETCH)

        async def on_message(message: AbstractIncomingMessage) -> None:
            headers = message.headers or {}
            offset = headers.get("x-stream-offset")
            if isinstance(offset, int):
                self._stop_log_offset = offset
            ours = headers.get(topology.MARKER_HEADER) == self._marker
            if topology.MARKER_HEADER not in headers:
                self._apply_stop_log_entry(on_stop, message)
            await replay.took(message, last=ours)
            if ours:
                self._replayed.set()

        since: Any = datetime.now(UTC) - timedelta(seconds=topology.STOP_LOG_REPLAY_S)
        if self._stop_log_offset is not None:
            since = self._stop_log_offset + 1  # after a reconnect: where we left off
        await queue.consume(on_message, arguments={"x-stream-offset": since})
        await self._publisher.default_exchange.publish(
            aio_pika.Message(b"", headers={topology.MARKER_HEADER: self._marker}),
            routing_key=topology.STOP_LOG,
        )
        await replay.wait(self._replayed, f"replaying {topology.STOP_LOG}")
        log.info("stop_log_replayed")

    def _apply_stop_log_entry(self, on_stop: StopLogFn, message: AbstractIncomingMessage) -> None:
        """Apply one Stop-log entry; one that cannot be applied is counted and skipped."""
        try:
            applied = on_stop(_delivery(message, "stop"))
        except Exception:  # noqa: BLE001 - a follower skips what it cannot apply, never stalls
            log.exception("stop_log_entry_failed")
            applied = False
        if not applied:
            self._metrics.child(self._metrics.stream_skipped, topology.STOP_LOG).inc()

    async def consume(self, handle: HandleFn, crashed: CrashFn) -> None:
        """Consume the Stop lane and every shard queue, one channel and prefetch window each."""
        assert self._connection is not None and self._stop_connection is not None
        self._handle, self._crashed = handle, crashed
        stop_channel = await self._stop_connection.channel()
        await stop_channel.set_qos(prefetch_count=STOP_LANE_PREFETCH)
        stop_queue = await stop_channel.get_queue(topology.STOP_QUEUE, ensure=False)
        tag = await stop_queue.consume(self._on_stop)
        self._consumers.append((stop_queue, tag))
        # Owned shards first, so an owner is ahead of stand-ins in each single-active queue.
        for index in self._assignment.owned() + self._assignment.standing_in():
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=self._per_shard)
            queue = await channel.get_queue(topology.shard_queue(index), ensure=False)
            self._shard_consumers[index] = (queue, await queue.consume(self._on_command))
        self._metrics.shards_consumed.set(self._assignment.estimated_active())
        if self._assignment.replicas > 1:
            await self._start_presence()
        log.info("consuming_started", shards=self._shards, prefetch_per_shard=self._per_shard,
                 replica=self._assignment.replica, owned=self._assignment.owned())

    async def _start_presence(self) -> None:
        """Announce this replica every second and hand shards back to owners that return."""
        assert self._connection is not None and self._publisher is not None
        if self._presence_task is not None:
            self._presence_task.cancel()
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(topology.PRESENCE_EXCHANGE,
                                                  ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="")

        async def heard(message: AbstractIncomingMessage) -> None:
            replica = (message.headers or {}).get(topology.REPLICA_HEADER)
            if isinstance(replica, int):
                for shard in self._assignment.heard(replica):
                    await self._hand_back(shard)

        await queue.consume(heard, no_ack=True)

        async def announce() -> None:
            while True:
                self._assignment.expire()
                self._metrics.shards_consumed.set(self._assignment.estimated_active())
                await exchange.publish(aio_pika.Message(
                    b"", headers={topology.REPLICA_HEADER: self._assignment.replica},
                    expiration=topology.PRESENCE_TTL_S), routing_key="")
                await asyncio.sleep(topology.PRESENCE_INTERVAL_S)

        self._presence_task = asyncio.get_running_loop().create_task(announce())

    async def _hand_back(self, shard: int) -> None:
        """Step back on a stand-in shard: resubscribe behind its returning owner."""
        current = self._shard_consumers.get(shard)
        if current is None:
            return
        queue, tag = current
        await queue.cancel(tag)
        self._shard_consumers[shard] = (queue, await queue.consume(self._on_command))
        log.info("shard_handed_back", shard=shard)

    async def announce_stop(self, delivery: Delivery) -> None:
        """Append a Stop that arrived on lovense.commands to the Stop log for every replica."""
        assert self._publisher is not None
        await self._publisher.default_exchange.publish(
            aio_pika.Message(delivery.body, headers=wire_headers(delivery.headers),
                             message_id=delivery.message_id,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=topology.STOP_LOG,
        )

    async def stop_consuming(self) -> None:
        """Cancel every consumer; deliveries already taken go on to completion."""
        if self._presence_task is not None:
            self._presence_task.cancel()
        consumers, self._consumers = self._consumers, []
        consumers += self._shard_consumers.values()
        self._shard_consumers = {}
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
        """Close the connections (unacked deliveries return to their queues)."""
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        await self._close_connections()
        self._metrics.connected.set(0)

    async def _close_connections(self) -> None:
        for connection in (self._stop_connection, self._connection):
            if connection is not None and not connection.is_closed:
                try:
                    await connection.close()
                except Exception as exc:  # noqa: BLE001 - it may be half gone already
                    log.debug("connection_close_failed", error=repr(exc))

    def _on_connection_closed(self, *_: Any) -> None:
        if not self._closing:
            self._lost.set()

    def supervise(self, resume: Callable[[], Awaitable[None]]) -> None:
        """Reconnect by ourselves after the broker goes away, then ``resume`` the rest."""
        self._supervisor = asyncio.get_running_loop().create_task(self._reconnect_loop(resume))

    async def _reconnect_loop(self, resume: Callable[[], Awaitable[None]]) -> None:
        while True:
            await self._lost.wait()
            self._metrics.connected.set(0)
            self._metrics.shards_consumed.set(0)
            log.warning("broker_connection_lost")
            self._consumers, self._shard_consumers = [], {}
            if self._presence_task is not None:
                self._presence_task.cancel()
            await self._close_connections()
            delay = 0.5
            while True:
                try:
                    await self._reconnect(resume)
                    break
                except Exception as exc:  # noqa: BLE001 - keep trying, with backoff
                    log.warning("broker_reconnect_failed", error=repr(exc), retry_in_s=delay)
                    await self._close_connections()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            log.info("broker_reconnected")

    async def _reconnect(self, resume: Callable[[], Awaitable[None]]) -> None:
        self._lost.clear()
        await self.connect()
        assert self._stop_log_handler is not None and self._handle is not None
        assert self._crashed is not None
        await self.follow_stop_log(self._stop_log_handler)
        await resume()
        await self.consume(self._handle, self._crashed)
        if self._lost.is_set():
            raise ConnectionError("lost again while reconnecting")

    async def _on_command(self, message: AbstractIncomingMessage) -> None:
        await self._process(message, "commands")

    async def _on_stop(self, message: AbstractIncomingMessage) -> None:
        await self._process(message, "stop")

    async def _process(self, message: AbstractIncomingMessage, lane: Lane) -> None:
        """Carry one delivery to its settlement: the one place that decides it."""
        task = asyncio.current_task()
        assert task is not None and self._handle is not None and self._crashed is not None
        self._inflight.add(task)
        self._metrics.inflight.inc()
        try:
            delivery = _delivery(message, lane)
            try:
                handled = await self._handle(delivery)
            except Exception as exc:
                if self._gone(message, exc):
                    raise
                log.error("delivery_crashed", error=repr(exc), exc_info=exc)
                self._metrics.child(self._metrics.settle_fallbacks, "crashed").inc()
                handled = self._crashed(delivery, exc)
            await self._settle(message, handled)
        except Exception as exc:
            if self._gone(message, exc):
                # The channel went away: the message comes back after the reconnect and is
                # answered from the memory of finished ids, without a second call.
                log.info("delivery_abandoned", error=repr(exc))
            else:
                await self._reject(message, exc)
        finally:
            self._metrics.inflight.dec()
            self._inflight.discard(task)
            structlog.contextvars.clear_contextvars()

    def _gone(self, message: AbstractIncomingMessage, error: BaseException) -> bool:
        """Return whether ``error`` means a lost channel or connection, not a bad message.

        Then the delivery cannot be settled here (or must not be: the result may not
        have gone out); RabbitMQ hands it out again after the reconnect. A Stop-lane
        delivery's channel can be open while the publishing connection is gone.
        """
        if isinstance(error, RecursionError):
            return False  # a RuntimeError, but the message's fault
        channel = getattr(message, "channel", None)
        return (self._lost.is_set() or bool(getattr(channel, "is_closed", False))
                or isinstance(error, _CONNECTION_ERRORS)
                or (self._publisher is not None and self._publisher.is_closed))

    async def _settle(self, message: AbstractIncomingMessage, handled: Handled) -> None:
        """Publish the result, dead-letter if asked, then ack."""
        try:
            await self.publish_result(handled.result, message.reply_to, message.correlation_id)
        except Exception as exc:
            if self._gone(message, exc):
                raise
            # Never a second call for this identity: a result that can be published instead.
            log.error("result_unpublishable", error=repr(exc))
            self._metrics.child(self._metrics.settle_fallbacks, "result_rebuilt").inc()
            await self.publish_result(publishable(handled.result, exc), message.reply_to,
                                      message.correlation_id)
        if handled.dead_letter is not None:
            await self.dead_letter(message, handled.dead_letter, "invalid")
        await message.ack()

    async def _reject(self, message: AbstractIncomingMessage, error: Exception) -> None:
        """Last resort: let RabbitMQ dead-letter the message (its queue's dead-letter exchange)."""
        log.error("delivery_rejected", error=repr(error), exc_info=error)
        self._metrics.child(self._metrics.settle_fallbacks, "rejected").inc()
        try:
            await message.reject(requeue=False)
        except Exception as exc:  # noqa: BLE001 - the channel went too; RabbitMQ redelivers
            log.warning("delivery_reject_failed", error=repr(exc))

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
            # AMQP's message_id is a short string: a longer id travels in the body only.
            message_id=result.id if id_fits(result.id) else None,
            correlation_id=correlation_id,
        )
        published = self._results.publish(outgoing, routing_key=result.routing_key,
                                          mandatory=False)
        if not reply_to:
            await published  # the common case: no task for gather to wrap it in
            return
        await asyncio.gather(published, self._publisher.default_exchange.publish(
            outgoing, routing_key=reply_to, mandatory=False))

    @property
    def connection(self) -> AbstractConnection:
        """Return the main connection (commands, results, callbacks)."""
        assert self._connection is not None, "connect() first"
        return self._connection

    @property
    def publisher(self) -> AbstractChannel:
        """Return the publishing channel (publisher confirms on)."""
        assert self._publisher is not None, "connect() first"
        return self._publisher

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str, kind: str) -> None:
        """Republish a message to lovense.dead with why, in ``x-lovense-error``."""
        assert self._dead is not None
        headers = wire_headers(message.headers)
        headers[topology.ERROR_HEADER] = reason[:1024]
        headers[topology.ORIGIN_EXCHANGE_HEADER] = message.exchange or ""
        headers[topology.ORIGIN_ROUTING_KEY_HEADER] = message.routing_key or ""
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
        self._metrics.dead_letters.labels(kind).inc()
        log.info("message_dead_lettered", kind=kind, reason=reason)
