"""Shard assignment among self-organising members: balance, determinism, few moves, handover."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.core.assignment import Membership, Plan, assign

TTL, LISTEN, STABLE = 3.0, 1.0, 0.5


class Clock:
    s = 0.0

    def __call__(self) -> float:
        return self.s


def members(count: int) -> list[str]:
    return [f"worker-{n}-{n * 7919 % 1000:03x}" for n in range(count)]


def test_every_member_owns_the_floor_or_the_ceiling_for_all_sizes_up_to_64() -> None:
    """For every S ≤ 64 and M ≤ S, each shard has one owner and each member ⌊S/M⌋ or ⌈S/M⌉."""
    bad = []
    for shards in range(1, 65):
        for count in range(1, shards + 1):
            owners = assign(members(count), shards)
            per_member = sorted(list(owners.values()).count(m) for m in members(count))
            if sorted(owners) != list(range(shards)) or not (
                    per_member[0] >= shards // count and per_member[-1] <= -(-shards // count)):
                bad.append((shards, count, per_member))
    assert bad == []


def test_four_members_own_two_of_eight_shards_each() -> None:
    """The integration test's shape: 8 shards over 4 members is 2 each."""
    owners = assign(members(4), 8)
    assert sorted(list(owners.values()).count(m) for m in members(4)) == [2, 2, 2, 2]


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=12, unique=True),
       st.integers(1, 64), st.randoms())
def test_the_assignment_does_not_depend_on_the_order_members_are_given_in(
        names: list[str], shards: int, rnd: object) -> None:
    """Any order (and duplicates) of the same member set gives the same owners."""
    shuffled = list(names) + names[:1]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert assign(shuffled, shards) == assign(names, shards)


def test_one_join_or_departure_moves_few_shards_beyond_those_that_must_move() -> None:
    """Beyond the newcomer's or the leaver's own shards, one change moves at most 9 others
    (4 on average over all S ≤ 64, M ≤ S); reassigning by `s % M` would move most."""
    extras = []
    for shards in range(1, 65):
        for count in range(1, shards + 1):
            before = assign(members(count), shards)
            joined = assign([*members(count), "newcomer"], shards)
            must = list(joined.values()).count("newcomer")
            extras.append(sum(before[s] != joined[s] for s in range(shards)) - must)
            if count > 1:
                left = assign(members(count)[1:], shards)
                must = list(before.values()).count(members(count)[0])
                extras.append(sum(before[s] != left[s] for s in range(shards)) - must)
    assert max(extras) <= 9
    assert sum(extras) / len(extras) < 4


def view(me: str, clock: Clock, shards: int = 8) -> Membership:
    return Membership(me, shards, ttl_s=TTL, listen_s=LISTEN, stable_s=STABLE, clock=clock)


def test_a_lone_member_takes_every_shard_after_listening() -> None:
    """Nothing is taken while listening; then a lone member takes all its shards."""
    clock = Clock()
    me = view("a", clock)
    assert me.plan() == Plan()
    clock.s = LISTEN
    assert me.plan() == Plan(take=tuple(range(8)))
    assert me.holding() == list(range(8))
    assert me.plan() == Plan()


def test_a_joining_member_waits_for_the_holder_to_release_its_shards() -> None:
    """The holder releases what the newcomer owns; the newcomer takes it only once the holder's
    heartbeat no longer lists it."""
    clock = Clock()
    old, new = view("a", clock), view("b", clock)
    clock.s = LISTEN
    old.plan()
    assert new.heard("a", old.holding()) is True
    assert old.heard("b", []) is True
    mine = {s for s, m in assign(["a", "b"], 8).items() if m == "b"}
    clock.s = LISTEN + STABLE
    released = old.plan().release
    assert set(released) == mine
    assert new.plan() == Plan()  # a still lists them: their deliveries may be settling
    new.heard("a", old.holding())
    assert new.plan() == Plan()
    for shard in released:
        old.released(shard)
    new.heard("a", old.holding())
    assert set(new.plan().take) == mine


def test_a_dead_members_shards_are_taken_once_its_heartbeats_expire() -> None:
    """A member not heard within the TTL is gone: its shards go to the others, after the
    live set has been stable for a moment."""
    clock = Clock()
    a = view("a", clock)
    a.heard("b", [s for s, m in assign(["a", "b"], 8).items() if m == "b"])
    clock.s = LISTEN
    taken = a.plan().take
    assert set(taken) == {s for s, m in assign(["a", "b"], 8).items() if m == "a"}
    clock.s = TTL + 0.1
    assert a.live() == ("a",)
    assert a.plan() == Plan()  # the live set just changed
    clock.s = TTL + 0.1 + STABLE
    assert set(a.plan().take) == set(range(8)) - set(taken)


def test_a_member_never_takes_a_shard_another_live_member_holds() -> None:
    """Even when its view says it owns a shard, it waits while another member lists it."""
    clock = Clock()
    a = view("a", clock, shards=2)
    a.heard("b", [0, 1])
    clock.s = 2.0
    a.heard("b", [0, 1])
    assert a.plan().take == ()
    a.heard("b", [1])
    ours = {s for s, m in assign(["a", "b"], 2).items() if m == "a"}
    assert set(a.plan().take) == ours - {1}


def test_a_lost_connection_forgets_held_and_releasing_shards() -> None:
    """After the connection goes nothing is held; after listening again it takes its shards."""
    clock = Clock()
    a = view("a", clock, shards=3)
    clock.s = LISTEN
    a.plan()
    a.rejoin()
    assert a.holding() == []
    assert a.plan() == Plan()  # listening again
    clock.s = 2 * LISTEN
    assert a.plan() == Plan(take=(0, 1, 2))


def test_its_own_heartbeat_is_not_a_member() -> None:
    """Hearing itself changes nothing."""
    a = view("a", Clock())
    assert a.heard("a", [1]) is False
    assert a.live() == ("a",)
