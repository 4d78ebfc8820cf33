"""Presence: members announce themselves, and take and release shards as membership decides.

Every second a process publishes a heartbeat to the ``lovense.presence`` fanout:
its member id (``x-lovense-member``) and the shards it holds
(``x-lovense-holding``), with a TTL of :data:`~worker.contract.topology.PRESENCE_TTL_S`.
What it hears feeds its :class:`~worker.core.assignment.Membership`; several
times a second it asks that for a plan and carries it out: a shard it no longer
owns is released (consumer cancelled, deliveries settled, then a heartbeat at
once without it), a shard it owns and nobody live holds is taken. A newcomer's
first heartbeat is answered at once by everyone, so it learns the members
quickly; a clean shutdown ends with a goodbye (``x-lovense-leaving``) so the
others take its shards without waiting for its heartbeats to expire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, ExchangeType

from worker.adapters.amqp.consumers import Consumers
from worker.adapters.amqp.link import Link
from worker.contract import topology
from worker.core.assignment import Membership
from worker.metrics import Metrics

log = structlog.get_logger("worker.adapters.amqp.presence")

#: How often the plan is looked at: well inside the heartbeat interval, so members that
#: expire a dead one do so within a fraction of a second of each other.
TICK_S = 0.25
#: Told the number of live members (this one included) whenever it changes.
MembersFn = Callable[[int], None]


class Presence:
    """Announce this member, hear the others, and move shards as the plan says."""

    def __init__(self, link: Link, membership: Membership, consumers: Consumers,
                 metrics: Metrics, on_members: MembersFn) -> None:
        self._link = link
        self._membership = membership
        self._consumers = consumers
        self._metrics = metrics
        self._on_members = on_members
        self._exchange: AbstractExchange | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._members = 0
        self._announce_now = asyncio.Event()
        #: Set once this member has listened and carried out its first plan.
        self.joined = asyncio.Event()

    async def start(self) -> None:
        """Listen, announce, and start following the plan (again, after a reconnect)."""
        self.stop()
        self.joined.clear()
        self._membership.rejoin()
        channel = await self._link.session.connection.channel()
        self._exchange = await channel.declare_exchange(
            topology.PRESENCE_EXCHANGE, ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self._exchange, routing_key="")
        await queue.consume(self._heard, no_ack=True)
        await self._announce()
        loop = asyncio.get_running_loop()
        self._tasks = {loop.create_task(self._heartbeats()), loop.create_task(self._follow())}

    def stop(self) -> None:
        """Stop announcing and following the plan (the listening queue goes with its channel)."""
        for task in self._tasks:
            task.cancel()
        self._tasks = set()

    async def leave(self) -> None:
        """Say goodbye: this member holds nothing any more, the others may take its shards."""
        if self._exchange is None:
            return
        try:
            await self._announce(leaving=True)
        except Exception as exc:  # noqa: BLE001 - then the others wait for the TTL instead
            log.warning("presence_goodbye_failed", error=repr(exc))

    async def _announce(self, *, leaving: bool = False) -> None:
        assert self._exchange is not None
        headers: dict[str, object] = {
            topology.MEMBER_HEADER: self._membership.me,
            topology.HOLDING_HEADER: [] if leaving else self._membership.holding(),
        }
        if leaving:
            headers[topology.LEAVING_HEADER] = True
        await self._exchange.publish(
            aio_pika.Message(b"", headers=headers,  # type: ignore[arg-type]
                             expiration=topology.PRESENCE_TTL_S),
            routing_key="")

    async def _heartbeats(self) -> None:
        while True:
            await self._announce()
            try:
                await asyncio.wait_for(self._announce_now.wait(), topology.PRESENCE_INTERVAL_S)
            except TimeoutError:
                pass
            self._announce_now.clear()

    async def _heard(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        member = headers.get(topology.MEMBER_HEADER)
        holding = headers.get(topology.HOLDING_HEADER)
        if not isinstance(member, str) or not isinstance(holding, list | tuple):
            return  # not a member's heartbeat (an older worker's, or anyone's)
        if headers.get(topology.LEAVING_HEADER):
            self._membership.left(member)
            log.info("member_left", member=member)
        elif self._membership.heard(member, [s for s in holding if isinstance(s, int)]):
            log.info("member_joined", member=member)
            self._announce_now.set()  # so a newcomer learns of this member at once

    async def _follow(self) -> None:
        while True:
            plan = self._membership.plan()
            live = len(self._membership.live())
            if live != self._members:
                self._members = live
                self._metrics.members.set(live)
                self._on_members(live)
                log.info("members_changed", members=live, owned=self._membership.owned())
            for shard in plan.release:
                task = asyncio.get_running_loop().create_task(self._release(shard))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            owned = len(self._membership.owned())
            for shard in plan.take:
                await self._consumers.take(shard, owned)
            if plan.take:
                self._announce_now.set()
            if not self._membership.listening():
                self.joined.set()
            await asyncio.sleep(TICK_S)

    async def _release(self, shard: int) -> None:
        await self._consumers.release(shard)
        self._membership.released(shard)
        self._announce_now.set()
