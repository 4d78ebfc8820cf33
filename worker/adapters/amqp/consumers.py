"""Consuming: the Stop lane, and the command shards this process holds.

One channel and prefetch window per queue. Shards are taken and released one at
a time as membership decides (:mod:`~worker.adapters.amqp.presence`); the
prefetch is split over the shards this process owns when it takes one. Releasing
a shard cancels its consumer and returns only once every delivery it took has
settled, so the next owner starts after the last of them (per-uid order).

While RabbitMQ blocks the worker (a broker alarm, :mod:`~worker.adapters.amqp.alarms`)
a command delivery waits before it reaches the settler: its result could not be
published, so no new work starts. It stays unacked (the prefetch bounds how many
wait) and is handled once the alarm clears. The Stop lane never waits.
"""

from __future__ import annotations

import asyncio
import math

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from worker.adapters.amqp.link import Link
from worker.adapters.amqp.settle import Settler
from worker.contract import topology
from worker.metrics import Metrics

log = structlog.get_logger("worker.adapters.amqp.consumers")

STOP_LANE_PREFETCH = 64
#: After a cancel, loop turns for deliveries that arrived before it to reach the settler.
_SETTLE_POLL_S = 0.05


class _Shard:
    """One shard's subscription and the deliveries it took that have not settled yet."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue) -> None:
        self.channel = channel
        self.queue = queue
        self.tag = ""
        self.taking: set[asyncio.Task[None]] = set()


class Consumers:
    """The worker's subscriptions to the Stop lane and the command shards it holds."""

    def __init__(self, link: Link, settler: Settler, prefetch: int, metrics: Metrics) -> None:
        self._link = link
        self._settler = settler
        self._prefetch = prefetch
        self._metrics = metrics
        self._stop_lane: tuple[AbstractQueue, str] | None = None
        self._shards: dict[int, _Shard] = {}

    def complete(self) -> bool:
        """Return whether the Stop lane is subscribed."""
        return self._stop_lane is not None

    def held(self) -> list[int]:
        """Return the shards subscribed to now."""
        return sorted(self._shards)

    async def start(self) -> None:
        """Subscribe to the Stop lane (shards are taken as membership decides)."""
        stop_channel = await self._link.session.stop_connection.channel()
        await stop_channel.set_qos(prefetch_count=STOP_LANE_PREFETCH)
        stop_queue = await stop_channel.get_queue(topology.STOP_QUEUE, ensure=False)
        self._stop_lane = (stop_queue, await stop_queue.consume(self._settler.on_stop))

    async def take(self, shard: int, owned: int) -> None:
        """Subscribe to a shard, with a share of the prefetch for ``owned`` shards."""
        per_shard = max(1, math.ceil(self._prefetch / max(1, owned)))
        channel = await self._link.session.connection.channel()
        await channel.set_qos(prefetch_count=per_shard)
        queue = await channel.get_queue(topology.shard_queue(shard), ensure=False)
        taken = _Shard(channel, queue)

        async def on_command(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            assert task is not None
            taken.taking.add(task)
            try:
                if not self._link.alarms.clear.is_set():
                    await self._link.alarms.clear.wait()
                await self._settler.on_command(message)
            finally:
                taken.taking.discard(task)

        taken.tag = await queue.consume(on_command)
        self._shards[shard] = taken
        self._metrics.shards_consumed.set(len(self._shards))
        log.info("shard_taken", shard=shard, prefetch=per_shard)

    async def release(self, shard: int) -> None:
        """Cancel a shard's consumer and return once every delivery it took has settled."""
        taken = self._shards.pop(shard, None)
        self._metrics.shards_consumed.set(len(self._shards))
        if taken is None:
            return
        try:
            await taken.queue.cancel(taken.tag)
            # Deliveries that arrived before the cancel's answer have their tasks made by
            # now; a few loop turns let them reach on_command, then they are waited for.
            await asyncio.sleep(_SETTLE_POLL_S)
            while taken.taking:
                await asyncio.wait(set(taken.taking))
                await asyncio.sleep(_SETTLE_POLL_S)
            await taken.channel.close()
        except Exception as exc:  # noqa: BLE001 - the channel went: the broker returned them
            log.warning("shard_release_failed", shard=shard, error=repr(exc))
        log.info("shard_released", shard=shard)

    def forget(self) -> None:
        """Drop every subscription without cancelling it: its connection is gone."""
        self._stop_lane, self._shards = None, {}
        self._metrics.shards_consumed.set(0)

    async def stop(self) -> None:
        """Cancel every subscription; deliveries already taken go on to completion."""
        subscriptions = [(s.queue, s.tag) for s in self._shards.values()]
        if self._stop_lane is not None:
            subscriptions.insert(0, self._stop_lane)
        self.forget()
        for queue, tag in subscriptions:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # noqa: BLE001 - the channel may already be gone
                log.warning("consumer_cancel_failed", queue=queue.name, error=repr(exc))
