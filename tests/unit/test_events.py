"""User lifecycle events from registry entries: pairing, toys, battery thresholds, expiry, and
GetUser's answer (worker.core.events, pure)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from worker.contract.users import UserExpired, UserInfo, UserPaired, UserToys, event_encoder
from worker.core import events
from worker.core.registry import Endpoint, ToyRecord

NORA: ToyRecord = ("t1", "nora", "", 1, "", 60)
MAX: ToyRecord = ("t2", "max", "", 1, "", -1)


def endpoint(*toys: ToyRecord, port: int = 34568, verified: bool = True,
             seen_s: float = 1_764_171_534.456) -> Endpoint:
    return Endpoint(uid="u1", ip="192.168.1.44", port=port, seen_s=seen_s, verified=verified,
                    platform="android", app_type="remote", version="101", toys=toys)


def toy(base: ToyRecord, *, status: int | None = None, battery: int | None = None) -> ToyRecord:
    return (base[0], base[1], base[2], base[3] if status is None else status, base[4],
            base[5] if battery is None else battery)


@pytest.mark.parametrize(("previous", "now", "thresholds"), [
    (50, 19, [20]),
    (21, 20, [20]),
    (25, 5, [20, 10]),
    (19, 15, []),
    (11, 10, [10]),
    (10, 11, [10]),
    (5, 60, [10, 20]),
    (20, 21, [20]),
    (40, 40, []),
    (None, 5, []),
    (5, None, []),
])
def test_battery_crossings_either_way(previous: int | None, now: int | None,
                                      thresholds: list[int]) -> None:
    """Only a level crossing 20 % or 10 % (at or below counts as below) is a change."""
    assert events.crossed(previous, now) == thresholds


def _changes(before: tuple[ToyRecord, ...], after: tuple[ToyRecord, ...]) -> list[Any]:
    return [(c.toy, c.change, c.battery, c.previous, c.crossed)
            for c in events.toy_changes(before, after)]


def test_toy_changes_name_connections_and_crossings_only() -> None:
    """Off, on, gone while on, new and on, battery crossing; nothing for a new toy that is off."""
    solace: ToyRecord = ("t3", "solace", "", 0, "", -1)
    assert _changes((NORA, MAX), (toy(NORA, status=0), MAX)) == [
        ("t1", "disconnected", 60, None, [])]
    assert _changes((toy(NORA, status=0),), (NORA,)) == [("t1", "connected", 60, None, [])]
    assert _changes((NORA, MAX), (NORA,)) == [("t2", "disconnected", None, None, [])]
    assert _changes((NORA,), (NORA, MAX, solace)) == [("t2", "connected", None, None, [])]
    assert _changes((NORA,), (toy(NORA, battery=9),)) == [("t1", "battery", 9, 60, [20, 10])]
    assert _changes((NORA, MAX), (toy(NORA, battery=21), toy(MAX, battery=5))) == []


def test_first_callback_pairs_and_lists_the_toys_with_the_address() -> None:
    """No entry before: one user.paired, with the address, and no toys event of its own."""
    [paired] = events.after_callback(None, endpoint(NORA, MAX), key="m1/7",
                                     at="2025-11-26T15:38:54.456Z")
    assert isinstance(paired, UserPaired)
    assert msgspec.to_builtins(paired) == {
        "type": "user.paired", "id": events.event_id("m1/7", "user.paired"), "uid": "u1",
        "at": "2025-11-26T15:38:54.456Z", "reason": "first-callback",
        "domain": "192-168-1-44.lovense.club", "httpsPort": 34568, "verified": True,
        "platform": "android", "appType": "remote", "version": "101",
        "toys": [{"id": "t1", "name": "nora", "status": "connected", "battery": 60},
                 {"id": "t2", "name": "max", "status": "connected", "battery": None}]}


def test_a_heartbeat_is_no_event_a_new_port_or_verification_pairs_again() -> None:
    """The same endpoint says nothing; a new port is a new endpoint; verified counts as first."""
    known = endpoint(NORA)
    assert events.after_callback(known, endpoint(NORA), key="k", at="t") == []
    [moved] = events.after_callback(known, endpoint(NORA, port=40000), key="k", at="t")
    [verified] = events.after_callback(endpoint(NORA, verified=False), known, key="k", at="t")
    assert isinstance(moved, UserPaired) and moved.reason == "new-endpoint"
    assert isinstance(verified, UserPaired) and verified.reason == "first-callback"


def test_toys_event_carries_every_change_and_the_toys_now() -> None:
    """One user.toys per callback, whatever changed in it, never with the address."""
    [changed] = events.after_callback(endpoint(NORA, MAX),
                                      endpoint(toy(NORA, battery=20), toy(MAX, status=0)),
                                      key="k", at="t")
    assert isinstance(changed, UserToys)
    assert (changed.source, [c.change for c in changed.changes]) == (
        "callback", ["battery", "disconnected"])
    assert [t.status for t in changed.toys] == ["connected", "disconnected"]
    assert b"192" not in event_encoder.encode(changed)


def test_a_get_toys_report_makes_an_event_only_for_a_crossing() -> None:
    """A report's batteries: a crossing is a user.toys from GetToys; a first level is not."""
    before = endpoint(NORA, MAX)
    assert events.after_report(before, endpoint(NORA, toy(MAX, battery=80)), key="k",
                               at="t") == []
    [low] = events.after_report(before, endpoint(toy(NORA, battery=15), MAX), key="k", at="t")
    assert isinstance(low, UserToys) and low.source == "GetToys"
    assert [(c.toy, c.crossed) for c in low.changes] == [("t1", [20])]


def test_event_ids_are_the_same_for_the_same_change_only() -> None:
    """Every replica names one log entry's events alike; another entry or type differs."""
    assert events.event_id("m1/7", "user.paired") == events.event_id("m1/7", "user.paired")
    assert len({events.event_id("m1/7", "user.paired"), events.event_id("m1/8", "user.paired"),
                events.event_id("m1/7", "user.toys")}) == 3


def test_expired_says_when_the_user_was_last_seen() -> None:
    """user.expired carries the last callback's time as RFC 3339 UTC."""
    gone = events.expired("u1", 1_764_171_534.456, key="u1@1", at="t")
    assert isinstance(gone, UserExpired)
    assert (gone.uid, gone.lastSeenAt) == ("u1", "2025-11-26T15:38:54.456Z")


def test_user_info_is_paired_false_alone_or_everything_known() -> None:
    """GetUser's data: only paired false for an unknown user; else route, toys, seen, circuit."""
    assert msgspec.json.encode(events.user_info(None, route="server", circuit="closed")) == (
        b'{"paired":false}')
    info = events.user_info(endpoint(NORA), route="lan", circuit="half-open")
    assert info == UserInfo(paired=True, route="lan", lastSeenAt="2025-11-26T15:38:54.456Z",
                            circuit="half-open", toys=events.toy_views(endpoint(NORA)))
    assert b"192" not in msgspec.json.encode(info)


@pytest.mark.parametrize(("ttl_s", "interval_s"), [(60, 3.0), (600, 30.0), (86400, 60.0),
                                                    (10, 1.0)])
def test_sweeps_come_often_beside_the_ttl_but_within_1_to_60_s(ttl_s: int,
                                                               interval_s: float) -> None:
    """The expiry sweep runs at a twentieth of the TTL, at least each minute, at most each 1 s."""
    assert events.sweep_interval_s(ttl_s) == interval_s
