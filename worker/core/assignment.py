"""Shard assignment among self-organising members: who owns which shard, and when to move one.

Pure, on an injected clock (seconds). Every worker process is a *member* with an
id of its own (no ordinal); members hear each other's heartbeats on
``lovense.presence``, and a member is live while heard within the presence TTL.

:func:`assign` maps the sorted live set to owners: balanced (each of M members
owns ⌊S/M⌋ or ⌈S/M⌉ of S shards) and deterministic (every member computes the
same map from the same set). It is rendezvous hashing with bounded capacity:
the S×M (member, shard) pairs are taken in order of a hash score, best first,
and a pair is kept while its shard is free and its member has room, where only
``S mod M`` members may reach the ceiling. Plain rendezvous is not balanced
(with 4 shards and 4 members all four get one only 9 % of the time); taking the
pairs globally rather than shard by shard keeps most of its stability, so one
join or departure moves few shards beyond the ones that must move.

:class:`Membership` is one member's view and its handover protocol, which keeps
per-uid order: only the owner subscribes to a shard (single active consumer
stays on the queues as the safety net). A member that stops owning a shard
cancels its consumer, lets the deliveries it took settle, and only then drops
the shard from the *holding* list its heartbeats carry. A member takes a shard
it owns only when no live member holds it: the old holder released it, or died
(its heartbeats stopped for the TTL; the broker returned its unacked
deliveries when its connection closed). A waiting consumer behind an owner
would not do: the broker makes it active the moment the owner cancels, while
the owner's deliveries for the same uid are still being sent.

Two waits keep members that briefly disagree from taking the same shard: a
member takes nothing until it has listened for ``listen_s`` after it started
(joining, it announces itself and the others answer at once), nor while its
live set changed within ``stable_s``. Releasing is always safe and never waits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass


def _score(member: str, key: str) -> int:
    """Return a stable 64-bit score of a member for a key (the same in every process)."""
    digest = hashlib.blake2b(f"{member}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(members: Iterable[str], shards: int) -> dict[int, str]:
    """Return each shard's owner among ``members``: balanced, deterministic, stable.

    Each member owns ⌊S/M⌋ or ⌈S/M⌉ shards; the result depends only on the set of
    members, never on their order. With more members than shards, some own none.
    """
    live = sorted(set(members))
    if not live or shards <= 0:
        return {}
    floor, extra = divmod(shards, len(live))
    pairs = sorted(((_score(m, str(s)), m, s) for m in live for s in range(shards)),
                   reverse=True)
    owners: dict[int, str] = {}
    counts = dict.fromkeys(live, 0)
    at_ceiling = 0
    for _, member, shard in pairs:
        if shard in owners:
            continue
        count = counts[member]
        if count > floor or (count == floor and at_ceiling == extra):
            continue
        owners[shard] = member
        counts[member] += 1
        if counts[member] == floor + 1:
            at_ceiling += 1
        if len(owners) == shards:
            break
    return owners


@dataclass(frozen=True)
class Plan:
    """What a member should do now: shards to subscribe to, and shards to let go."""

    take: tuple[int, ...] = ()
    release: tuple[int, ...] = ()


@dataclass
class _Heard:
    at: float
    holding: frozenset[int]


class Membership:
    """One member's view of the live members, and of the shards it holds, takes and releases."""

    def __init__(self, me: str, shards: int, *, ttl_s: float, listen_s: float,
                 stable_s: float, clock: Callable[[], float]) -> None:
        self.me = me
        self.shards = shards
        self._ttl = ttl_s
        self._stable = stable_s
        self._clock = clock
        self._others: dict[str, _Heard] = {}
        self._listen_s = listen_s
        self._listen_until = clock() + listen_s
        self._changed_at = clock()
        self._live: tuple[str, ...] = (me,)
        self._owners = assign(self._live, shards)
        #: Shards subscribed to, and shards cancelled whose deliveries are still settling.
        self.held: set[int] = set()
        self.releasing: set[int] = set()

    def heard(self, member: str, holding: Iterable[int]) -> bool:
        """Note a heartbeat; return whether the member was not live before (a join)."""
        if member == self.me:
            return False
        new = member not in self._live
        self._others[member] = _Heard(self._clock(), frozenset(holding))
        self._refresh()
        return new

    def live(self) -> tuple[str, ...]:
        """Return the live members (this one included), sorted."""
        self._refresh()
        return self._live

    def owned(self) -> list[int]:
        """Return the shards this member owns in its current view."""
        self._refresh()
        return sorted(s for s, m in self._owners.items() if m == self.me)

    def holding(self) -> list[int]:
        """Return the shards this member must still be counted on (what its heartbeat says)."""
        return sorted(self.held | self.releasing)

    def plan(self) -> Plan:
        """Return the shards to take and to release now, and mark the releases begun."""
        self._refresh()
        owned = set(self.owned())
        release = tuple(sorted(self.held - owned))
        self.held -= set(release)
        self.releasing |= set(release)
        now = self._clock()
        if now < self._listen_until or now - self._changed_at < self._stable:
            return Plan(release=release)
        held_elsewhere = {s for heard in self._others.values() for s in heard.holding}
        take = tuple(sorted(owned - self.held - self.releasing - held_elsewhere))
        self.held |= set(take)
        return Plan(take=take, release=release)

    def listening(self) -> bool:
        """Return whether this member is still listening (it takes nothing yet)."""
        return self._clock() < self._listen_until

    def released(self, shard: int) -> None:
        """Note that a released shard's deliveries all settled: it is no longer held."""
        self.releasing.discard(shard)

    def left(self, member: str) -> None:
        """Note that a member said goodbye: it holds nothing and is no longer live."""
        self._others.pop(member, None)
        self._refresh()

    def rejoin(self) -> None:
        """Start over: hold nothing (a lost connection's deliveries went back to the broker),
        and listen again before taking any shard."""
        self.held.clear()
        self.releasing.clear()
        self._listen_until = self._clock() + self._listen_s

    def _refresh(self) -> None:
        now = self._clock()
        for member in [m for m, h in self._others.items() if now - h.at > self._ttl]:
            del self._others[member]
        live = tuple(sorted({self.me, *self._others}))
        if live != self._live:
            self._live = live
            self._owners = assign(live, self.shards)
            self._changed_at = now
