"""Presence: replicas announce themselves, so stand-ins hand shards back to returning owners.

Every second a replica publishes its ordinal (``x-lovense-replica``) to the
``lovense.presence`` fanout, with a TTL of :data:`~worker.contract.topology.PRESENCE_TTL_S`;
what it hears updates its :class:`~worker.core.assignment.Assignment`, and a
shard whose owner is back is handed back (resubscribed behind the owner).
Only a replica of several runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from worker.adapters.amqp.link import Link
from worker.contract import topology
from worker.core.assignment import Assignment
from worker.metrics import Metrics

#: Steps back on one stand-in shard.
HandBackFn = Callable[[int], Awaitable[None]]


class Presence:
    """Announce this replica and listen for the others."""

    def __init__(self, link: Link, assignment: Assignment, metrics: Metrics,
                 hand_back: HandBackFn) -> None:
        self._link = link
        self._assignment = assignment
        self._metrics = metrics
        self._hand_back = hand_back
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start announcing and listening (again, after a reconnect)."""
        self.stop()
        channel = await self._link.session.connection.channel()
        exchange = await channel.declare_exchange(topology.PRESENCE_EXCHANGE,
                                                  ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="")
        await queue.consume(self._heard, no_ack=True)

        async def announce() -> None:
            while True:
                self._assignment.expire()
                self._metrics.shards_consumed.set(self._assignment.estimated_active())
                await exchange.publish(aio_pika.Message(
                    b"", headers={topology.REPLICA_HEADER: self._assignment.replica},
                    expiration=topology.PRESENCE_TTL_S), routing_key="")
                await asyncio.sleep(topology.PRESENCE_INTERVAL_S)

        self._task = asyncio.get_running_loop().create_task(announce())

    async def _heard(self, message: AbstractIncomingMessage) -> None:
        replica = (message.headers or {}).get(topology.REPLICA_HEADER)
        if isinstance(replica, int):
            for shard in self._assignment.heard(replica):
                await self._hand_back(shard)

    def stop(self) -> None:
        """Stop announcing (the listening queue goes with its channel)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
