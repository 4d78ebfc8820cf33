"""The broker: the worker's RabbitMQ side, composed of one object per concern.

* :mod:`~worker.adapters.amqp.link`: the two connections and the publishing channel;
* :mod:`~worker.adapters.amqp.declare`: the topology, declared on every connect;
* :mod:`~worker.adapters.amqp.settle`: every delivery handled and settled in one place;
* :mod:`~worker.adapters.amqp.consumers`: the Stop lane and the command shards;
* :mod:`~worker.adapters.amqp.presence`: members announcing themselves, shards moving between them;
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
from worker.adapters.amqp.presence import MembersFn, Presence
from worker.adapters.amqp.publisher import Publisher
from worker.adapters.amqp.settle import CrashFn, HandleFn, Settler
from worker.adapters.amqp.streams import StopLog, StopLogFn
from worker.adapters.amqp.supervisor import Supervisor
from worker.core.assignment import Membership
from worker.metrics import Metrics
from worker.tracing import OFF, Tracing


class Broker:
    """Consume command shards and the Stop lane, follow the Stop log, and stay connected."""

    def __init__(self, link: Link, publisher: Publisher, *, prefetch: int,
                 membership: Membership, metrics: Metrics, handle: HandleFn, crashed: CrashFn,
                 on_stop: StopLogFn, on_members: MembersFn,
                 resume: Callable[[], Awaitable[None]], tracing: Tracing = OFF) -> None:
        self._link = link
        self._membership = membership
        self._resume = resume
        self._settler = Settler(link, publisher, metrics, handle, crashed, tracing)
        self._stop_log = StopLog(link, metrics, on_stop)
        self._consumers = Consumers(link, self._settler, prefetch, metrics)
        self._presence = Presence(link, membership, self._consumers, metrics, on_members)
        self._supervisor = Supervisor(link, metrics, self._reconnect, self._forget)

    def ready(self) -> bool:
        """Return whether the broker is connected, consuming the Stop lane and sharing shards,
        and not blocked by a broker alarm."""
        return (self._link.connected() and self._consumers.complete()
                and self._presence.joined.is_set() and not self._link.alarms.blocked)

    def not_ready_reason(self) -> str | None:
        """Return why :meth:`ready` is false, when there is a reason worth telling."""
        blocked = self._link.alarms.reason()
        if blocked is not None:
            return blocked
        if not self._link.connected():
            return "not connected to RabbitMQ"
        if not (self._consumers.complete() and self._presence.joined.is_set()):
            return "not consuming yet"
        return None

    async def connect(self) -> None:
        """Connect and declare the topology."""
        await self._link.connect()

    async def follow_stop_log(self) -> None:
        """Replay the Stop log's last hour, then keep following it; return once caught up."""
        await self._stop_log.follow()

    async def consume(self) -> None:
        """Consume the Stop lane; join the members, who share the shards out."""
        await self._consumers.start()
        await self._presence.start()
        await self._presence.joined.wait()

    def supervise(self) -> None:
        """Reconnect by ourselves after the broker goes away (see the supervisor)."""
        self._supervisor.start()

    async def stop_consuming(self) -> None:
        """Cancel every consumer; deliveries already taken go on to completion."""
        self._presence.stop()
        await self._consumers.stop()

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for deliveries in progress; return how many remain.

        With none left, say goodbye, so the others take this member's shards at once.
        """
        left = await self._settler.drain(timeout)
        if not left:
            await self._presence.leave()
        return left

    async def close(self) -> None:
        """Close the connections (unacked deliveries return to their queues)."""
        self._supervisor.stop()
        await self._link.close()

    def _forget(self) -> None:
        self._consumers.forget()
        self._presence.stop()
        self._membership.rejoin()

    async def _reconnect(self) -> None:
        await self._link.connect()
        await self._stop_log.follow()
        await self._resume()
        await self.consume()
        if self._link.lost.is_set():
            raise ConnectionError("lost again while reconnecting")
