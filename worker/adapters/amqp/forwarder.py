"""The callback endpoint's one link to RabbitMQ: publish a callback, with a confirm.

:class:`Forwarder` keeps one connection and one confirming channel, and opens
them again after the broker goes away (with backoff, forever, until closed).
It declares ``lovense.callbacks`` exactly as the worker does, so either may
start first, and publishes each callback mandatory: a callback that no queue
would take (no worker has ever declared ``lovense.callbacks``), a nack, a lost
channel or no connection at all raise :class:`BrokerAway`, and the endpoint
answers 503 so the app posts again on its next heartbeat. With several nodes
in ``LOVENSE_AMQP_URL`` each reconnect tries them in a shuffled order, the node
just lost last.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any, Final

import aio_pika
import structlog
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from worker.adapters.amqp.link import CONNECTION_ERRORS
from worker.adapters.amqp.nodes import connect_first
from worker.contract import topology
from worker.core.brokers import Brokers, Node
from worker.metrics import CallbackMetrics

log = structlog.get_logger("worker.adapters.amqp.forwarder")

#: Seconds between reconnect attempts: doubling from the first to the last, with jitter.
BACKOFF_S: Final = (0.2, 5.0)
#: How long a publish may wait for its confirm before the callback is answered 503.
CONFIRM_TIMEOUT_S: Final = 5.0


class BrokerAway(Exception):
    """The callback could not be published and confirmed; the message says why."""


class Forwarder:
    """Publish callbacks to ``lovense.callbacks`` with confirms, reconnecting as needed."""

    def __init__(self, brokers: Brokers, metrics: CallbackMetrics,
                 rng: random.Random | None = None) -> None:
        self._brokers = brokers
        self._rng = rng or random.Random()
        self._node: Node | None = None
        self._metrics = metrics
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()

    @property
    def connected(self) -> bool:
        """Return whether a callback could be published now."""
        return (self._exchange is not None and self._channel is not None
                and not self._channel.is_closed)

    def start(self) -> None:
        """Start connecting in the background (and reconnecting whenever the link drops)."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep_connected(), name="callback-forwarder")

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a connection; return whether there is one."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout)
        return self.connected

    async def publish(self, body: bytes) -> None:
        """Publish ``body`` unchanged and wait for the broker's confirm, or raise BrokerAway."""
        exchange = self._exchange
        if exchange is None or not self.connected:
            raise BrokerAway("not connected to RabbitMQ")
        message = aio_pika.Message(
            body, content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={topology.PUBLISHED_MS_HEADER: int(time.time() * 1000)},
        )
        try:
            await exchange.publish(message, routing_key="", mandatory=True,
                                   timeout=CONFIRM_TIMEOUT_S)
        except aio_pika.exceptions.PublishError:
            raise BrokerAway(f"no queue is bound to {topology.CALLBACKS_EXCHANGE} "
                             "(no worker has declared it yet)") from None
        except aio_pika.exceptions.DeliveryError:
            raise BrokerAway("RabbitMQ refused the callback (nack)") from None
        except (*CONNECTION_ERRORS, TimeoutError) as exc:
            raise BrokerAway(f"RabbitMQ did not confirm the callback ({type(exc).__name__})") \
                from None

    async def close(self) -> None:
        """Stop reconnecting and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    async def _keep_connected(self) -> None:
        delay = BACKOFF_S[0]
        while True:
            try:
                lost = await self._connect()
            except (*CONNECTION_ERRORS, OSError, TimeoutError) as exc:
                log.warning("callback_broker_unreachable", error=str(exc) or type(exc).__name__,
                            retry_in_s=round(delay, 2))
            else:
                delay = BACKOFF_S[0]
                node = self._node.name if self._node else None
                log.info("callback_broker_connected", node=node)
                await lost.wait()
                log.warning("callback_broker_lost", node=node)
            await self._drop()
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_S[1])

    async def _connect(self) -> asyncio.Event:
        lost = asyncio.Event()

        def on_close(*_: Any) -> None:
            lost.set()

        connection, node = await connect_first(self._brokers, "lovense-callbacks", self._rng,
                                               last=self._node, timeout=CONFIRM_TIMEOUT_S)
        self._connection = connection
        self._node = node
        connection.close_callbacks.add(on_close)
        channel: AbstractChannel = await connection.channel(publisher_confirms=True,
                                                            on_return_raises=True)
        channel.close_callbacks.add(on_close)
        self._channel = channel
        self._exchange = await channel.declare_exchange(
            topology.CALLBACKS_EXCHANGE, ExchangeType.FANOUT, durable=True)
        self._metrics.connected.set(1)
        self._metrics.node.connected(node.name)
        self._up.set()
        return lost

    async def _drop(self) -> None:
        self._exchange = None
        self._channel = None
        self._up.clear()
        self._metrics.connected.set(0)
        self._metrics.node.lost()
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*CONNECTION_ERRORS, OSError, TimeoutError):
                await connection.close()
