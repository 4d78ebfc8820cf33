"""The callback-log follower derives each entry's events for the claims, alike on every replica;
GetToys reports teach batteries; expiry is reported before the entry goes; batteries in the
registry (worker.services.pairing, worker.core.registry)."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import msgspec

from worker.config import Secret, Settings
from worker.contract import topology
from worker.contract.users import (
    ReportedToy,
    ToysReport,
    UserEvent,
    UserExpired,
    UserPaired,
    UserToys,
)
from worker.core.bodies import utoken_for
from worker.core.callbacks import decode
from worker.core.lan import LanAddress
from worker.core.registry import Registry, same_state
from worker.metrics import Metrics
from worker.services.events import Claims, claim_key
from worker.services.pairing import Pairing

SECRET = "pairing-secret"
NOW = 1_764_171_534.0


class Clock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make(clock: Clock | None = None) -> Pairing:
    settings = Settings(utoken_secret=Secret(SECRET),
                        lan_allow=(ipaddress.ip_network("192.168.0.0/16"),))
    clock = clock or Clock()
    return Pairing(settings, Registry(3600, clock), Metrics(), clock=clock, claims=Claims())


def callback(uid: str = "u1", *, port: int = 30010, status: int = 1,
             battery: Any = None) -> bytes:
    toy: dict[str, Any] = {"id": "t1", "name": "lush", "status": status}
    if battery is not None:
        toy["battery"] = battery
    return msgspec.json.encode({
        "uid": uid, "domain": "192-168-1-20.lovense.club", "httpsPort": port,
        "utoken": utoken_for(uid, SECRET), "toys": {"t1": toy}})


def applied(pairing: Pairing, body: bytes, offset: int, message_id: str = "m",
            headers: dict[str, Any] | None = None) -> list[UserEvent]:
    """Apply one log entry and return what the validator of the same message would claim."""
    pairing.apply(body, headers, offset, f"{message_id}{offset}")
    claims = pairing.claims
    assert claims is not None
    found = claims._held[claim_key(body, f"{message_id}{offset}")].pop()
    return list(found.found)


def test_each_entry_hands_its_events_to_the_claims_even_none() -> None:
    """First callback: paired; heartbeat: nothing (still handed in, so no claim waits);
    toy off, toy on with a first battery level, a crossing: one toys event each."""
    pairing = make()
    [paired] = applied(pairing, callback(), 1)
    assert applied(pairing, callback(), 2) == []
    [off] = applied(pairing, callback(status=0), 3)
    [on] = applied(pairing, callback(battery=25), 4)
    [low] = applied(pairing, callback(battery=18), 5)
    assert applied(pairing, callback(battery=12), 6) == []
    assert isinstance(paired, UserPaired) and paired.httpsPort == 30010
    assert [(c.change, c.battery, c.crossed) for e in (off, on, low)
            for c in (e.changes if isinstance(e, UserToys) else [])] == [
        ("disconnected", None, []), ("connected", 25, []), ("battery", 18, [20])]


def test_two_replicas_derive_the_same_events_with_the_same_ids() -> None:
    """The same log, applied by two followers, yields identical events: ids included."""
    bodies = [callback(), callback(port=30011), callback(battery=50), callback(battery=5)]
    one, two = make(), make()
    assert [applied(one, b, n) for n, b in enumerate(bodies)] == [
        applied(two, b, n) for n, b in enumerate(bodies)]


def test_a_stale_entry_pairs_again() -> None:
    """A callback after the TTL passed counts as a first callback (the user had expired)."""
    clock = Clock()
    pairing = make(clock)
    applied(pairing, callback(), 1)
    clock.now += 3601
    [again] = applied(pairing, callback(), 2)
    assert isinstance(again, UserPaired) and again.reason == "first-callback"


def test_refused_callbacks_and_tombstones_hand_nothing_in() -> None:
    """The validator dead-letters a refused callback and skips a tombstone: nothing to claim."""
    pairing = make()
    pairing.apply(msgspec.json.encode({"uid": "u1", "domain": "x", "httpsPort": 1}), None, 1)
    pairing.apply(b"", {topology.FORGET_HEADER: "u1"}, 2)
    assert pairing.claims is not None and len(pairing.claims) == 0


def test_a_get_toys_report_teaches_batteries_and_functions_and_reports_crossings() -> None:
    """A report entry sets what the toys can do and their batteries; a crossing is an event."""
    pairing = make()
    applied(pairing, callback(battery=30), 1)
    report = msgspec.json.encode(ToysReport(toys={
        "t1": ReportedToy(battery=7, fullFunctionNames=["Vibrate"]),
        "unknown": ReportedToy(battery=50)}))
    [low] = applied(pairing, report, 2, headers={topology.TOYS_HEADER: b"u1"})
    assert isinstance(low, UserToys) and low.source == "GetToys"
    assert [(c.battery, c.previous, c.crossed) for c in low.changes] == [(7, 30, [20, 10])]
    known = pairing.registry.get("u1")
    assert known is not None and known.toys == (("t1", "lush", "", 1, "Vibrate", 7),)
    assert applied(pairing, b"not json", 3, headers={topology.TOYS_HEADER: "u1"}) == []
    assert applied(pairing, report, 4, headers={topology.TOYS_HEADER: "nobody"}) == []


def test_expired_users_are_reported_then_dropped_unless_refreshed() -> None:
    """expired() names stale users without forgetting them; drop() forgets those still stale."""
    clock = Clock()
    pairing = make(clock)
    applied(pairing, callback("old"), 1)
    applied(pairing, callback("back"), 2)
    clock.now += 3601
    gone = pairing.expired()
    assert sorted((e.uid, e.lastSeenAt) for e in gone) == [
        ("back", "2025-11-26T15:38:54.000Z"), ("old", "2025-11-26T15:38:54.000Z")]
    assert all(isinstance(e, UserExpired) for e in gone)
    assert pairing.expired() == gone  # the same events, ids included, until dropped
    applied(pairing, callback("back"), 3)  # refreshed before the events went out
    pairing.drop(gone)
    assert ("old" in pairing.registry, "back" in pairing.registry) == (False, True)


def test_the_silent_prune_waits_a_few_sweeps_past_the_ttl() -> None:
    """A replica that does not sweep leaves a stale entry for the one that reports it."""
    clock = Clock()
    pairing = make(clock)
    applied(pairing, callback(), 1)
    clock.now += 3601
    assert pairing.prune() == 0 and "u1" in pairing.registry
    clock.now += 3 * pairing.sweep_interval_s
    assert pairing.prune() == 1


def test_callback_batteries_are_kept_until_a_later_callback_reports_another() -> None:
    """A battery stays until another is reported; one that is not a percent reports nothing."""
    registry = Registry(3600, Clock())
    address = LanAddress("192.168.1.20", 30010, "192-168-1-20.lovense.club")
    kept = []
    for battery in (55, None, "40", 101, "x", 0):
        registry.record(decode(callback(battery=battery)), address, True)
        known = registry.get("u1")
        assert known is not None
        kept.append(known.toys[0][5])
    assert kept == [55, 55, 40, 40, 40, 0]


def test_entries_from_before_batteries_read_back_with_none_known() -> None:
    """A snapshot entry of 5-field toys (an older worker's) reads back, battery unknown."""
    registry = Registry(3600, Clock())
    old_meta = msgspec.msgpack.encode(("ios", "remote", "101", [["t1", "lush", "", 1, ""]]))
    blob = struct.pack("!IHdB", 0xC0A80114, 30010, NOW, 1) + old_meta
    assert registry.load(msgspec.msgpack.encode([("u1", blob)])) == 1
    known = registry.get("u1")
    assert known is not None and known.toys == (("t1", "lush", "", 1, "", -1),)


def test_same_state_ignores_only_when_an_entry_was_seen() -> None:
    """Two entries alike but for their last-seen time are the same state; a port is not."""
    clock = Clock()
    pairing = make(clock)
    pairing.apply(callback(), None, 1)
    first = pairing.registry.raw("u1")
    clock.now += 5
    pairing.apply(callback(), None, 2)
    second = pairing.registry.raw("u1")
    pairing.apply(callback(port=30011), None, 3)
    third = pairing.registry.raw("u1")
    assert first is not None and second is not None and third is not None
    assert first != second and same_state(first, second) and not same_state(second, third)


def test_one_sweep_reports_at_most_its_limit_the_next_the_rest() -> None:
    """A mass expiry spreads over sweeps: each reports at most ``limit`` users, those silent
    longest first."""
    clock = Clock()
    pairing = make(clock)
    for n in range(5):
        applied(pairing, callback(f"u{n}"), n)
        clock.now += 1
    applied(pairing, callback("u0"), 5)  # u0 spoke last
    clock.now += 3601
    first = pairing.expired(limit=3)
    pairing.drop(first)
    assert [e.uid for e in first] == ["u1", "u2", "u3"]
    assert ([e.uid for e in pairing.expired(limit=3)], len(pairing.registry)) == (
        ["u4", "u0"], 2)
