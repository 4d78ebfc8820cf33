"""The registry: compact entries, freshness, forgetting, snapshots."""

from __future__ import annotations

import msgspec

from worker.core.callbacks import Callback
from worker.core.lan import LanAddress
from worker.core.registry import Registry


class Clock:
    s = 1_000.0

    def __call__(self) -> float:
        return self.s


def callback(uid: str = "u1", port: int = 34568) -> Callback:
    return msgspec.json.decode(msgspec.json.encode({
        "uid": uid, "domain": "192-168-1-44.lovense.club", "httpsPort": str(port),
        "platform": "android", "appType": "remote", "version": "101",
        "toys": {"t1": {"id": "t1", "name": "nora", "nickName": "N", "status": "1"}},
    }), type=Callback)


ADDRESS = LanAddress("192.168.1.44", 34568, "192-168-1-44.lovense.club")


def test_recorded_endpoint_reads_back_whole() -> None:
    """Everything a callback says comes back from the compact entry."""
    registry = Registry(ttl_s=60, clock=Clock())
    registry.record(callback(), ADDRESS, verified=True)
    endpoint = registry.get("u1")
    assert endpoint is not None
    assert (endpoint.ip, endpoint.port, endpoint.verified, endpoint.seen_s) == (
        "192.168.1.44", 34568, True, 1000.0)
    assert (endpoint.platform, endpoint.app_type, endpoint.version) == ("android", "remote", "101")
    assert endpoint.toys == (("t1", "nora", "N", 1, "", -1),)
    assert endpoint.domain == "192-168-1-44.lovense.club"


def test_stale_entries_are_not_used_and_prune_forgets_them() -> None:
    """An entry older than the TTL is not returned, and prune removes it."""
    clock = Clock()
    registry = Registry(ttl_s=60, clock=clock)
    registry.record(callback(), ADDRESS, verified=True)
    clock.s += 61
    assert registry.get("u1") is None
    assert registry.get("u1", fresh_only=False) is not None
    assert (registry.prune(), len(registry)) == (1, 0)


def test_forget_removes_the_user() -> None:
    """Forget removes an entry and says whether it existed."""
    registry = Registry(ttl_s=60, clock=Clock())
    registry.record(callback(), ADDRESS, verified=False)
    assert (registry.forget("u1"), registry.forget("u1"), "u1" in registry) == (True, False, False)


def test_learned_functions_survive_a_later_callback() -> None:
    """fullFunctionNames from GetToys are kept when the app's next heartbeat arrives."""
    registry = Registry(ttl_s=60, clock=Clock())
    registry.record(callback(), ADDRESS, verified=True)
    registry.learn_toys("u1", {"t1": ["Vibrate", "Rotate"]}, {})
    registry.record(callback(), ADDRESS, verified=True)
    endpoint = registry.get("u1")
    assert endpoint is not None and endpoint.toys[0][4] == "Vibrate,Rotate"


def test_snapshot_round_trip_keeps_newer_entries() -> None:
    """dump/load carries every entry in chunks; a newer local entry is not overwritten."""
    clock = Clock()
    source = Registry(ttl_s=600, clock=clock)
    for n in range(5):
        source.record(callback(f"u{n}"), ADDRESS, verified=True)
    chunks = list(source.dump(2))
    target = Registry(ttl_s=600, clock=clock)
    clock.s += 10
    target.record(callback("u0", port=40000), LanAddress("192.168.1.44", 40000, "x"), True)
    assert sum(target.load(c) for c in chunks) == 5
    assert len(chunks) == 3 and len(target) == 5
    newer = target.get("u0")
    assert newer is not None and newer.port == 40000
