"""User lifecycle events out: publishing them once, and knowing which replica publishes which.

:class:`Events` publishes events to ``lovense.events`` through an injected
function (the AMQP publisher's, with confirms), counts and logs them.

Paired, toys and expired events must come from one replica only: the one that
holds the single active consumer of the ``lovense.callbacks`` queue, since each
callback reaches exactly one consumer there. Every replica derives the events of
each callback-log entry as it applies it (:mod:`worker.core.events`), and
:class:`Claims` keeps them for a short while under the entry's key (its message
id and body, identical in the queue and in the log). When the validator takes a
callback from the queue it claims the events of that very entry, waiting for its
own follower if the log is behind, and publishes them before it acks: the
replicas that never get the callback never publish its events.

What is held is bounded by count (``max_held`` entries), never by age alone: a
validator that falls behind its own follower by more than ``hold_s`` must still
find its entries, or every claim would wait out ``hold_s`` and the validator
would never catch up. Entries are dropped when the count is over, or once the
validator has claimed an entry held ``hold_s`` after them (it has moved past
them: another replica validated those). A claim for an entry already dropped
answers None at once; only a claim the follower has not reached yet waits.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from worker.contract.users import UserEvent, event_encoder
from worker.metrics import Metrics

log = structlog.get_logger("worker.services.events")

#: Publishes one event: its JSON body, routing key (its type) and id.
PublishFn = Callable[[bytes, str, str], Awaitable[None]]
#: How long a claim waits for the follower, and how far behind the validator's newest claim
#: an unclaimed entry may be before it is dropped.
HOLD_S: Final = 10.0
#: The most log entries remembered (a replica that does not validate holds this many; at
#: 100,000 users' heartbeats, 30 s of log), and the most dropped keys remembered.
MAX_HELD: Final = 50_000

#: Events of independent users published at once, their confirms awaited together.
PIPELINE: Final = 256

#: The events derived from one log entry (often none).
Found = tuple[UserEvent, ...]


def claim_key(body: bytes, message_id: str | None) -> bytes:
    """Return the key that names one published callback in the queue and in the log alike."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update((message_id or "").encode())
    digest.update(b"\0")
    digest.update(body)
    return digest.digest()


class Events:
    """Publish user lifecycle events, with confirms; count and log each."""

    def __init__(self, publish: PublishFn | None, metrics: Metrics) -> None:
        self._publish = publish
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, events: Sequence[UserEvent], *, independent: bool = False) -> None:
        """Publish events in order, each confirmed by the broker before the next.

        Events of ``independent`` users (an expiry sweep's) go out PIPELINE at a time,
        their confirms awaited together: one by one, a sweep of thousands takes seconds.
        """
        if self._publish is None:
            return
        if not independent:
            for event in events:
                await self._one(event, log.info)
            return
        for start in range(0, len(events), PIPELINE):
            await asyncio.gather(*(self._one(e, log.debug)
                                   for e in events[start:start + PIPELINE]))
        log.info("user_events_published", count=len(events),
                 types=sorted({e.kind for e in events}))

    async def _one(self, event: UserEvent, note: Callable[..., Any]) -> None:
        assert self._publish is not None
        await self._publish(event_encoder.encode(event), event.kind, event.id)
        self._metrics.child(self._metrics.events, event.kind).inc()
        note("user_event_published", type=event.kind, uid=event.uid, event_id=event.id)

    def emit(self, events: Sequence[UserEvent]) -> None:
        """Publish events in the background (for callers on a command's path)."""
        if self._publish is None or not events:
            return
        task = asyncio.get_running_loop().create_task(self._sent(events))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sent(self, events: Sequence[UserEvent]) -> None:
        await self.send(events)

    async def send(self, events: Sequence[UserEvent], *, independent: bool = False) -> bool:
        """Publish events now; return False (and log) when they could not be, never raise."""
        try:
            await self.publish(events, independent=independent)
        except Exception as exc:  # noqa: BLE001 - a lost event must not break a command
            log.warning("user_event_lost", count=len(events),
                        types=sorted({e.kind for e in events}), error=repr(exc))
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Wait a while for events still being published, then give up on them."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in late:
                task.cancel()


@dataclass(eq=False, slots=True)
class _Held:
    at: float
    found: Found


@dataclass(slots=True)
class Claims:
    """Events derived from log entries, held until the validator of the same entry claims them.

    Per key, entries and waiting claims are matched first come, first served:
    the queue and the log carry a publisher's messages in the same order.
    """

    hold_s: float = HOLD_S
    max_held: int = MAX_HELD
    clock: Callable[[], float] = time.monotonic
    _held: dict[bytes, list[_Held]] = field(default_factory=dict)
    _order: deque[tuple[bytes, _Held]] = field(default_factory=deque)
    _waiting: dict[bytes, deque[asyncio.Future[Found]]] = field(default_factory=dict)
    #: Keys of entries dropped unclaimed (a claim for one need not wait), oldest first.
    _dropped: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    #: When the newest entry the validator claimed was held (None: it has claimed nothing).
    _claimed_at: float | None = None
    _count: int = 0

    def __len__(self) -> int:
        """Return how many entries are held unclaimed."""
        return self._count

    def derived(self, key: bytes, found: Found) -> None:
        """Hand in the events the follower derived from one log entry (maybe none)."""
        waiting = self._waiting.get(key)
        while waiting:
            claim = waiting.popleft()
            if not claim.done():
                self._claimed_at = self.clock()
                claim.set_result(found)
                if not waiting:
                    del self._waiting[key]
                return
        self._waiting.pop(key, None)
        self._hold(key, _Held(self.clock(), found))
        self._expire()

    def _hold(self, key: bytes, held: _Held, *, first: bool = False) -> None:
        entries = self._held.setdefault(key, [])
        if first:
            entries.insert(0, held)
        else:
            entries.append(held)
        self._order.append((key, held))
        self._count += 1

    def _expire(self) -> None:
        # Claimed entries leave _order here, lazily (it is in holding order); bounding it
        # bounds everything held.
        horizon = -1.0 if self._claimed_at is None else self._claimed_at - self.hold_s
        while self._order and (len(self._order) > self.max_held
                               or self._order[0][1].at < horizon):
            key, held = self._order.popleft()
            entries = self._held.get(key)
            if entries is not None and held in entries:
                self._take(key, entries, held)
                self._dropped[key] = None
                self._dropped.move_to_end(key)
                if len(self._dropped) > self.max_held:
                    self._dropped.popitem(last=False)

    def _take(self, key: bytes, entries: list[_Held], held: _Held) -> Found:
        entries.remove(held)
        if not entries:
            del self._held[key]
        self._count -= 1
        return held.found

    async def claim(self, key: bytes, timeout: float | None = None) -> Found | None:
        """Return the events of the log entry named ``key``, waiting for the follower to derive
        them; None when it has not within ``timeout`` (default: the hold time)."""
        entries = self._held.get(key)
        if entries:
            held = entries[0]
            if self._claimed_at is None or held.at > self._claimed_at:
                self._claimed_at = held.at
            return self._take(key, entries, held)
        if key in self._dropped:  # dropped unclaimed: the follower passed it long ago
            del self._dropped[key]
            return None
        claim: asyncio.Future[Found] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(key, deque())
        waiting.append(claim)
        try:
            return await asyncio.wait_for(claim, self.hold_s if timeout is None else timeout)
        except TimeoutError:
            return None
        finally:
            if claim in waiting:  # timed out or cancelled: nobody will hand it anything
                waiting.remove(claim)
                if not waiting and self._waiting.get(key) is waiting:
                    del self._waiting[key]

    def restore(self, key: bytes, found: Found) -> None:
        """Put back claimed events that could not be published: a redelivery claims them again."""
        self._hold(key, _Held(self.clock(), found), first=True)
