"""Publishing events once: claims match the validator's callback with the follower's entry, and
Events publishes, counts and survives a broker that fails (worker.services.events)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from worker.contract.users import UserForgotten, UserReachable, event_decoder
from worker.metrics import Metrics
from worker.services.events import PIPELINE, Claims, Events, claim_key

GONE = UserForgotten(id="e1", uid="u1", at="2025-11-26T15:38:54.456Z", known=True)
BACK = UserReachable(id="e2", uid="u1", at="2025-11-26T15:38:54.456Z", replica="host-1a2b")


class Clock:
    def __init__(self) -> None:
        self.s = 100.0

    def __call__(self) -> float:
        return self.s


def test_claim_keys_tell_published_messages_apart() -> None:
    """The same body and message id make one key; another id or body makes another."""
    assert claim_key(b"{}", "m1") == claim_key(b"{}", "m1")
    assert len({claim_key(b"{}", "m1"), claim_key(b"{}", "m2"), claim_key(b"{ }", "m1"),
                claim_key(b"{}", None)}) == 4


async def test_a_claim_takes_what_the_follower_derived_first_or_later() -> None:
    """Log ahead of the queue, or behind it: the validator gets the entry's events either way."""
    claims = Claims()
    claims.derived(b"a", (GONE,))
    assert await claims.claim(b"a") == (GONE,)
    waiting = asyncio.ensure_future(claims.claim(b"b"))
    # Called back after the claim's first step: it waits when the follower derives.
    asyncio.get_running_loop().call_soon(claims.derived, b"b", (BACK,))
    assert await waiting == (BACK,)
    assert len(claims) == 0


async def test_claims_of_one_key_are_served_first_come_first_served() -> None:
    """Two identical messages: the first claim gets the first entry's events."""
    claims = Claims()
    first, second = (asyncio.ensure_future(claims.claim(b"k")) for _ in range(2))
    loop = asyncio.get_running_loop()
    loop.call_soon(claims.derived, b"k", (GONE,))
    loop.call_soon(claims.derived, b"k", ())
    assert (await first, await second) == ((GONE,), ())
    assert len(claims) == 0


async def test_entries_the_validator_moved_past_are_dropped_and_not_waited_for() -> None:
    """Entries held hold_s before the newest claimed one were another replica's to validate:
    dropped, and a claim for one (a redelivery) answers None at once instead of waiting."""
    clock = Clock()
    claims = Claims(hold_s=10.0, clock=clock)
    claims.derived(b"old", (GONE,))
    clock.s += 11
    claims.derived(b"new", ())
    assert len(claims) == 2  # age alone drops nothing
    assert await claims.claim(b"new") == ()
    claims.derived(b"newer", ())  # expiry runs as the follower goes on
    assert len(claims) == 1
    async with asyncio.timeout(1):  # a wait would last hold_s = 10 s
        assert await claims.claim(b"old") is None
    assert claims._waiting == {}


async def test_a_validator_far_behind_its_follower_still_finds_its_entries() -> None:
    """The follower may run minutes ahead of a busy validator: nothing it holds ages out, so the
    validator is not made to wait hold_s per callback (which it could never catch up from)."""
    clock = Clock()
    claims = Claims(hold_s=10.0, clock=clock)
    for n in range(100):
        claims.derived(bytes([n]), (GONE,) if n == 0 else ())
        clock.s += 1  # 100 s of log, ten times hold_s
    async with asyncio.timeout(1):
        assert await claims.claim(bytes([0])) == (GONE,)
        assert [await claims.claim(bytes([n])) for n in range(1, 100)] == [()] * 99
    assert len(claims) == 0


async def test_a_claim_the_follower_has_not_reached_gives_up_after_its_timeout() -> None:
    claims = Claims()
    assert await claims.claim(b"later", timeout=0.01) is None
    assert claims._waiting == {}  # the given-up claim is not left behind


def test_at_most_max_held_entries_are_kept() -> None:
    """A replica that does not validate holds a bounded number of entries."""
    claims = Claims(max_held=3)
    for n in range(5):
        claims.derived(bytes([n]), ())
    assert len(claims) == 3 and sorted(claims._held) == [b"\x02", b"\x03", b"\x04"]


async def test_restored_events_are_claimed_again_first() -> None:
    """Events whose publishing failed go back ahead of later ones, for the redelivery."""
    claims = Claims()
    claims.derived(b"k", (BACK,))
    claims.restore(b"k", (GONE,))
    assert (await claims.claim(b"k"), await claims.claim(b"k")) == ((GONE,), (BACK,))


async def test_events_are_published_in_order_with_their_type_and_id_and_counted() -> None:
    """Each event goes out as JSON, routing key its type, message id its id; the metric counts."""
    sent: list[tuple[bytes, str, str]] = []

    async def publish(body: bytes, routing_key: str, message_id: str) -> None:
        sent.append((body, routing_key, message_id))

    metrics = Metrics()
    await Events(publish, metrics).publish([GONE, BACK])
    assert [(event_decoder.decode(b), k, i) for b, k, i in sent] == [
        (GONE, "user.forgotten", "e1"), (BACK, "user.reachable", "e2")]
    assert metrics.registry.get_sample_value("lovense_worker_events_total",
                                             {"type": "user.forgotten"}) == 1
    assert msgspec.json.decode(sent[0][0])["type"] == "user.forgotten"


async def test_a_failing_broker_loses_the_event_not_the_command() -> None:
    """send() says False and raises nothing; emit() publishes in the background; close() waits."""
    async def broken(body: bytes, routing_key: str, message_id: str) -> None:
        raise ConnectionError("broker gone")

    sent: list[str] = []

    async def publish(body: bytes, routing_key: str, message_id: str) -> None:
        sent.append(message_id)

    assert await Events(broken, Metrics()).send([GONE]) is False
    events = Events(publish, Metrics())
    events.emit([GONE])
    await events.close()
    assert sent == ["e1"]
    with pytest.raises(ConnectionError):
        await Events(broken, Metrics()).publish([GONE])


async def test_a_sweeps_events_go_out_pipelined_a_callbacks_one_by_one() -> None:
    """Independent users' events await their confirms together (at most PIPELINE at once);
    one callback's events each wait for the previous one's confirm, so they keep their order."""
    in_flight, most = 0, []
    release = asyncio.Event()

    async def publish(body: bytes, routing_key: str, message_id: str) -> None:
        nonlocal in_flight
        in_flight += 1
        most.append(in_flight)
        if in_flight == PIPELINE:
            release.set()  # a whole pipeline is in flight: let it land
        if len(most) <= PIPELINE:
            await release.wait()
        in_flight -= 1

    metrics = Metrics()
    many = [UserForgotten(id=f"e{n}", uid=f"u{n}", at="t", known=True) for n in range(300)]
    async with asyncio.timeout(5):  # one at a time, the first would wait for ever
        await Events(publish, metrics).publish(many, independent=True)
    assert max(most) == PIPELINE and len(most) == 300
    assert metrics.registry.get_sample_value("lovense_worker_events_total",
                                             {"type": "user.forgotten"}) == 300
    most.clear()
    await Events(publish, Metrics()).publish(many[:3])
    assert most == [1, 1, 1]
