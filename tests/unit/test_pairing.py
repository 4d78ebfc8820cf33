"""Pairing: a verified callback records an endpoint, a forged one changes nothing, a tombstone
forgets; what it counts and which log offset it reached."""

from __future__ import annotations

import ipaddress

import msgspec

from worker.config import Secret, Settings
from worker.contract import topology
from worker.core.bodies import utoken_for
from worker.core.registry import Registry
from worker.metrics import Metrics
from worker.services.pairing import Pairing

SECRET = "pairing-secret"
NOW = 1_764_171_534.0


class Clock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make(clock: Clock | None = None) -> tuple[Pairing, Metrics]:
    settings = Settings(utoken_secret=Secret(SECRET),
                        lan_allow=(ipaddress.ip_network("192.168.0.0/16"),))
    metrics, clock = Metrics(), clock or Clock()
    return Pairing(settings, Registry(3600, clock), metrics, clock=clock), metrics


def callback(uid: str = "user-1", *, utoken: str | None = None, ip: str = "192-168-1-20") -> bytes:
    return msgspec.json.encode({
        "uid": uid, "domain": f"{ip}.lovense.club", "httpsPort": 30010,
        "utoken": utoken_for(uid, SECRET) if utoken is None else utoken,
        "toys": {"ff922f7fd345": {"id": "ff922f7fd345", "name": "lush", "status": 1}},
    })


def counted(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("lovense_worker_callbacks_total",
                                              {"outcome": outcome})
    return value or 0.0


def test_a_verified_callback_is_accepted_and_recorded() -> None:
    pairing, metrics = make()
    assert pairing.check(callback()) is None
    assert counted(metrics, "accepted") == 1
    pairing.apply(callback(), None, offset=7)
    endpoint = pairing.registry.get("user-1")
    assert endpoint is not None
    assert pairing.last_offset == 7
    assert metrics.registry.get_sample_value("lovense_worker_registry_users") == 1


def test_a_forged_utoken_is_refused_with_a_reason_and_changes_nothing() -> None:
    pairing, metrics = make()
    forged = callback(utoken="0" * 64)
    reason = pairing.check(forged)
    assert reason is not None and "utoken" in reason
    assert counted(metrics, "refused") == 1
    pairing.apply(forged, None, offset=8)
    assert "user-1" not in pairing.registry
    assert pairing.last_offset == 8  # the offset moves on: the entry was read, not applied


def test_an_address_outside_the_lan_is_refused() -> None:
    pairing, _ = make()
    reason = pairing.check(callback(ip="8-8-8-8"))
    assert reason is not None
    pairing.apply(callback(ip="8-8-8-8"), None, offset=None)
    assert "user-1" not in pairing.registry


def test_a_tombstone_forgets_the_user_whatever_the_header_type() -> None:
    pairing, _ = make()
    pairing.apply(callback("a"), None, offset=1)
    pairing.apply(callback("b"), None, offset=2)
    pairing.apply(b"", {topology.FORGET_HEADER: "a"}, offset=3)
    pairing.apply(b"", {topology.FORGET_HEADER: b"b"}, offset=4)
    assert "a" not in pairing.registry and "b" not in pairing.registry
    assert pairing.last_offset == 4


def test_a_tombstone_updates_the_registry_users_gauge() -> None:
    """lovense_worker_registry_users drops when a tombstone (Forget) removes a user."""
    pairing, metrics = make()
    pairing.apply(callback("a"), None, offset=1)
    pairing.apply(callback("b"), None, offset=2)
    assert metrics.registry.get_sample_value("lovense_worker_registry_users") == 2
    pairing.apply(b"", {topology.FORGET_HEADER: "a"}, offset=3)
    assert metrics.registry.get_sample_value("lovense_worker_registry_users") == 1
    pairing.apply(b"", {topology.FORGET_HEADER: "unknown"}, offset=4)
    assert metrics.registry.get_sample_value("lovense_worker_registry_users") == 1


def test_prune_forgets_entries_past_their_ttl() -> None:
    clock = Clock()
    pairing, metrics = make(clock)
    pairing.apply(callback("old"), None, offset=1)
    clock.now += 3000
    pairing.apply(callback("new"), None, offset=2)
    clock.now += 1000  # "old" is 4,000 s old, past the 3,600 s TTL; "new" is 1,000 s old
    assert pairing.prune() == 1
    assert "old" not in pairing.registry and "new" in pairing.registry
    assert metrics.registry.get_sample_value("lovense_worker_registry_users") == 1
