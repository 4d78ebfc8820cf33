"""Consuming: the Stop lane and every command shard this replica owns or stands in for.

One channel and prefetch window per queue; the prefetch is split over the
shards this replica owns (stand-ins get the same share). Owned shards are
subscribed first, so an owner is ahead of stand-ins in each single-active queue.
"""

from __future__ import annotations

import math

import structlog
from aio_pika.abc import AbstractQueue

from worker.adapters.amqp.link import Link
from worker.adapters.amqp.settle import Settler
from worker.contract import topology
from worker.core.assignment import Assignment
from worker.metrics import Metrics

log = structlog.get_logger("worker.adapters.amqp.consumers")

STOP_LANE_PREFETCH = 64


class Consumers:
    """The worker's subscriptions to the Stop lane and the command shards."""

    def __init__(self, link: Link, settler: Settler, assignment: Assignment, prefetch: int,
                 metrics: Metrics) -> None:
        self._link = link
        self._settler = settler
        self._assignment = assignment
        self._metrics = metrics
        self._per_shard = max(1, math.ceil(prefetch / max(1, len(assignment.owned()))))
        self._stop_lane: tuple[AbstractQueue, str] | None = None
        self._shards: dict[int, tuple[AbstractQueue, str]] = {}

    def complete(self) -> bool:
        """Return whether the Stop lane and every shard are subscribed."""
        return self._stop_lane is not None and len(self._shards) == self._assignment.shards

    async def start(self) -> None:
        """Subscribe to the Stop lane, then to every owned and stand-in shard."""
        session = self._link.session
        stop_channel = await session.stop_connection.channel()
        await stop_channel.set_qos(prefetch_count=STOP_LANE_PREFETCH)
        stop_queue = await stop_channel.get_queue(topology.STOP_QUEUE, ensure=False)
        self._stop_lane = (stop_queue, await stop_queue.consume(self._settler.on_stop))
        for index in self._assignment.owned() + self._assignment.standing_in():
            channel = await session.connection.channel()
            await channel.set_qos(prefetch_count=self._per_shard)
            queue = await channel.get_queue(topology.shard_queue(index), ensure=False)
            self._shards[index] = (queue, await queue.consume(self._settler.on_command))
        self._metrics.shards_consumed.set(self._assignment.estimated_active())
        log.info("consuming_started", shards=self._assignment.shards,
                 prefetch_per_shard=self._per_shard, replica=self._assignment.replica,
                 owned=self._assignment.owned())

    async def hand_back(self, shard: int) -> None:
        """Step back on a stand-in shard: resubscribe behind its returning owner."""
        current = self._shards.get(shard)
        if current is None:
            return
        queue, tag = current
        await queue.cancel(tag)
        self._shards[shard] = (queue, await queue.consume(self._settler.on_command))
        log.info("shard_handed_back", shard=shard)

    def forget(self) -> None:
        """Drop every subscription without cancelling it: its connection is gone."""
        self._stop_lane, self._shards = None, {}
        self._metrics.shards_consumed.set(0)

    async def stop(self) -> None:
        """Cancel every subscription; deliveries already taken go on to completion."""
        subscriptions = list(self._shards.values())
        if self._stop_lane is not None:
            subscriptions.insert(0, self._stop_lane)
        self.forget()
        for queue, tag in subscriptions:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # noqa: BLE001 - the channel may already be gone
                log.warning("consumer_cancel_failed", queue=queue.name, error=repr(exc))
