"""Shard assignment: owners by ordinal, stand-ins, hand-back when an owner returns."""

from __future__ import annotations

from worker.core.assignment import Assignment, owner_of


class Clock:
    s = 0.0

    def __call__(self) -> float:
        return self.s


def test_each_shard_has_exactly_one_owner() -> None:
    """With 3 replicas and 4 shards every shard is owned once, spread by ordinal."""
    owned = [Assignment(r, 3, 4, presence_ttl_s=3, clock=Clock()).owned() for r in range(3)]
    assert owned == [[0, 3], [1], [2]]
    assert sorted(s for shards in owned for s in shards) == [0, 1, 2, 3]
    assert [owner_of(s, 3) for s in range(4)] == [0, 1, 2, 0]


def test_stand_in_hands_back_once_when_the_owner_returns() -> None:
    """Hearing an owner that was away returns its shards once; hearing it again returns none."""
    clock = Clock()
    me = Assignment(0, 3, 4, presence_ttl_s=3, clock=clock)
    assert me.standing_in() == [1, 2]
    assert me.heard(1) == [1]
    assert me.heard(1) == []
    assert me.estimated_active() == 3  # shards 0 and 3, plus 2 whose owner is away
    clock.s = 10
    me.expire()
    assert me.present(1) is False
    assert me.heard(1) == [1]


def test_own_and_unknown_replicas_are_ignored() -> None:
    """Presence from oneself or from an ordinal outside the set changes nothing."""
    me = Assignment(0, 2, 4, presence_ttl_s=3, clock=Clock())
    assert (me.heard(0), me.heard(7)) == ([], [])
