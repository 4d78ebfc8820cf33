"""Shard assignment across replicas: owners by ordinal, stand-ins while an owner is away.

Pure, on an injected clock (seconds). With ``replicas`` replicas, replica ``i``
owns shard ``s`` when ``s % replicas == i`` and subscribes to every other shard
as a stand-in. RabbitMQ's single active consumer makes whoever subscribed
first the active one, and keeps it so (on 3.10 it ignores consumer priority),
so a stand-in that took over a shard while its owner was away must hand it
back: when it hears the owner is present again (``lovense.presence``), it
cancels its subscription and subscribes again, behind the owner. Single active
consumer stays the safety net: at most one replica is ever active on a shard.
"""

from __future__ import annotations

from collections.abc import Callable


def owner_of(shard: int, replicas: int) -> int:
    """Return the replica that owns a shard."""
    return shard % replicas


class Assignment:
    """Which shards this replica owns, stands in for, and must hand back."""

    def __init__(self, replica: int, replicas: int, shards: int, *, presence_ttl_s: float,
                 clock: Callable[[], float]) -> None:
        self.replica = replica
        self.replicas = replicas
        self.shards = shards
        self._ttl = presence_ttl_s
        self._clock = clock
        self._seen: dict[int, float] = {}
        #: Owners that were away when we last (re)subscribed to their shards.
        self._away: set[int] = {r for r in range(replicas) if r != replica}

    def owned(self) -> list[int]:
        """Return the shards this replica owns (subscribed to first)."""
        return [s for s in range(self.shards) if owner_of(s, self.replicas) == self.replica]

    def standing_in(self) -> list[int]:
        """Return the shards this replica subscribes to as a stand-in."""
        return [s for s in range(self.shards) if owner_of(s, self.replicas) != self.replica]

    def present(self, replica: int) -> bool:
        """Return whether a replica was heard from recently."""
        at = self._seen.get(replica)
        return at is not None and self._clock() - at <= self._ttl

    def heard(self, replica: int) -> list[int]:
        """Note a presence message; return the shards to hand back to that replica now."""
        if replica == self.replica or not 0 <= replica < self.replicas:
            return []
        self._seen[replica] = self._clock()
        if replica not in self._away:
            return []
        self._away.discard(replica)
        return [s for s in self.standing_in() if owner_of(s, self.replicas) == replica]

    def expire(self) -> None:
        """Mark owners not heard from within the TTL as away (their shards may be taken over)."""
        for replica in range(self.replicas):
            if replica != self.replica and not self.present(replica):
                self._away.add(replica)

    def estimated_active(self) -> int:
        """Return how many shards this replica is likely consuming actively."""
        return len(self.owned()) + sum(
            1 for s in self.standing_in() if not self.present(owner_of(s, self.replicas))
        )
