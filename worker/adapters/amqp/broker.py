"""The broker: the worker's RabbitMQ side, composed of one object per concern.

* :mod:`~worker.adapters.amqp.link`: the two connections and the publishing channel;
* :mod:`~worker.adapters.amqp.declare`: the topology, declared on every connect;
* :mod:`~worker.adapters.amqp.settle`: every delivery handled and settled in one place;
* :mod:`~worker.adapters.amqp.consumers`: the Stop lane and the command shards;
* :mod:`~worker.adapters.amqp.presence`: replicas announcing themselves, shards handed back;
* :mod:`~worker.adapters.amqp.streams`: the Stop log followed by every replica;
* :mod:`~worker.adapters.amqp.supervisor`: reconnecting after the broker goes away;
* :mod:`~worker.adapters.amqp.publisher`: results, dead letters, Stop-log entries.

Every collaborator is given at construction; :class:`Broker` only sequences
start-up (connect, follow the Stop log, consume, supervise), reconnects and
shutdown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from worker.adapters.amqp.consumers import Consumers
from worker.adapters.amqp.link import Link
from worker.adapters.amqp.presence import Presence
from worker.adapters.amqp.publisher import Publisher
from worker.adapters.amqp.settle import CrashFn, HandleFn, Settler
from worker.adapters.amqp.streams import StopLog, StopLogFn
from worker.adapters.amqp.supervisor import Supervisor
from worker.core.assignment import Assignment
from worker.metrics import Metrics


class Broker:
    """Consume command shards and the Stop lane, follow the Stop log, and stay connected."""

    def __init__(self, link: Link, publisher: Publisher, *, prefetch: int,
                 assignment: Assignment, metrics: Metrics, handle: HandleFn, crashed: CrashFn,
                 on_stop: StopLogFn, resume: Callable[[], Awaitable[None]]) -> None:
        self._link = link
        self._assignment = assignment
        self._resume = resume
        self._settler = Settler(link, publisher, metrics, handle, crashed)
        self._stop_log = StopLog(link, metrics, on_stop)
        self._consumers = Consumers(link, self._settler, assignment, prefetch, metrics)
        self._presence = Presence(link, assignment, metrics, self._consumers.hand_back)
        self._supervisor = Supervisor(link, metrics, self._reconnect, self._forget)

    def ready(self) -> bool:
        """Return whether the broker is connected and consuming every shard and the Stop lane."""
        return self._link.connected() and self._consumers.complete()

    async def connect(self) -> None:
        """Connect and declare the topology."""
        await self._link.connect()

    async def follow_stop_log(self) -> None:
        """Replay the Stop log's last hour, then keep following it; return once caught up."""
        await self._stop_log.follow()

    async def consume(self) -> None:
        """Consume the Stop lane and the shards; with several replicas, announce this one."""
        await self._consumers.start()
        if self._assignment.replicas > 1:
            await self._presence.start()

    def supervise(self) -> None:
        """Reconnect by ourselves after the broker goes away (see the supervisor)."""
        self._supervisor.start()

    async def stop_consuming(self) -> None:
        """Cancel every consumer; deliveries already taken go on to completion."""
        self._presence.stop()
        await self._consumers.stop()

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for deliveries in progress; return how many remain."""
        return await self._settler.drain(timeout)

    async def close(self) -> None:
        """Close the connections (unacked deliveries return to their queues)."""
        self._supervisor.stop()
        await self._link.close()

    def _forget(self) -> None:
        self._consumers.forget()
        self._presence.stop()

    async def _reconnect(self) -> None:
        await self._link.connect()
        await self._stop_log.follow()
        await self._resume()
        await self.consume()
        if self._link.lost.is_set():
            raise ConnectionError("lost again while reconnecting")
