"""The callback endpoint's gate: rate limits first, then size, shape and utoken."""

from __future__ import annotations

import dataclasses
import ipaddress

import msgspec
import pytest

from worker.config import Settings
from worker.core.bodies import utoken_for
from worker.core.callbacks import MAX_CALLBACK_BYTES
from worker.core.gate import Gate, client_address

SECRET = "s3cret"


def _gate(**overrides: object) -> Gate:
    options: dict[str, object] = {
        "source_rate": 5.0, "source_burst": 20, "rate": 3000.0, "secret": SECRET,
        "allow_unverified": False,
    }
    options.update(overrides)
    return Gate(**options)  # type: ignore[arg-type]


def _callback(uid: str = "u1", utoken: str | None = None, **extra: object) -> bytes:
    body: dict[str, object] = {
        "uid": uid, "domain": "192-168-1-44.lovense.club", "httpsPort": "30010",
        "utoken": utoken_for(uid, SECRET) if utoken is None else utoken,
        "toys": {"a0": {"id": "a0", "name": "lush", "status": "1"}},
    }
    body.update(extra)
    return msgspec.json.encode(body)


def test_a_source_gets_its_burst_then_its_rate() -> None:
    gate = _gate()
    assert [gate.admit("10.0.0.1", 0.0).status for _ in range(20)] == [200] * 20
    refused = gate.admit("10.0.0.1", 0.0)
    assert (refused.status, refused.reason) == (429, "too many callbacks from this address")
    # 5/s: one more token 200 ms later, not before.
    assert gate.admit("10.0.0.1", 199.0).status == 429
    assert gate.admit("10.0.0.1", 200.0).status == 200
    assert gate.admit("10.0.0.1", 200.0).status == 429


def test_sources_are_limited_apart() -> None:
    gate = _gate(source_burst=1)
    assert gate.admit("10.0.0.1", 0.0).status == 200
    assert gate.admit("10.0.0.1", 0.0).status == 429
    assert gate.admit("10.0.0.2", 0.0).status == 200


def test_the_process_rate_caps_every_source_together() -> None:
    gate = _gate(rate=3.0)
    statuses = [gate.admit(f"10.0.0.{n}", 0.0) for n in range(5)]
    assert [v.status for v in statuses] == [200, 200, 200, 429, 429]
    assert statuses[3].reason.startswith("too many callbacks;")
    assert gate.admit("10.0.0.9", 334.0).status == 200  # 3/s: a token every 333 ms


def test_a_post_refused_for_its_source_costs_the_process_nothing() -> None:
    gate = _gate(source_burst=1, rate=2.0)
    assert gate.admit("10.0.0.1", 0.0).status == 200
    for _ in range(100):
        assert gate.admit("10.0.0.1", 0.0).status == 429
    assert gate.admit("10.0.0.2", 0.0).status == 200


def test_tracked_sources_are_bounded_least_recent_first() -> None:
    gate = _gate(source_burst=1, max_sources=2)
    gate.admit("a", 0.0)
    gate.admit("b", 0.0)
    gate.admit("a", 0.0)  # a is the most recent now
    gate.admit("c", 0.0)  # b is dropped
    assert gate.sources == 2
    assert gate.admit("a", 0.0).status == 429  # a kept its empty bucket
    assert gate.admit("b", 0.0).status == 200  # b starts again with a full one


def test_a_callback_with_its_utoken_passes() -> None:
    assert _gate().check(_callback()).status == 200


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b"x" * (MAX_CALLBACK_BYTES + 1), 413, "body larger than 65536 bytes"),
    (b"uid=u1&domain=d", 400, "callback: JSON is malformed"),
    (b'["uid"]', 400, "callback: Expected `object`, got `array`"),
    (b'{"uid": "u1"}', 400, "callback: Object missing required field `domain`"),
    (b'{"uid": "u1", "domain": "d", "httpsPort": {}}', 400, "callback: Expected"),
    (_callback(utoken=""), 403, "utoken: missing"),
    (_callback(utoken=utoken_for("u2", SECRET)), 403, "utoken: does not match the uid"),
    (_callback(utoken=utoken_for("u1", "another secret")), 403, "utoken: does not match"),
])
def test_refusals_say_why(body: bytes, status: int, reason: str) -> None:
    verdict = _gate().check(body)
    assert verdict.status == status
    assert verdict.reason.startswith(reason), verdict.reason
    assert not verdict.accepted


def test_without_a_secret_every_callback_is_forbidden() -> None:
    verdict = _gate(secret="").check(_callback())
    assert verdict.status == 403
    assert "LOVENSE_UTOKEN_SECRET" in verdict.reason


def test_without_a_secret_unverified_callbacks_pass_only_when_allowed() -> None:
    assert _gate(secret="", allow_unverified=True).check(_callback(utoken="")).status == 200


PROXY = (ipaddress.ip_network("10.1.0.0/16"),)


@pytest.mark.parametrize(("peer", "forwarded", "trusted", "source"), [
    ("203.0.113.9", None, PROXY, "203.0.113.9"),
    # From a peer that is not a trusted proxy, the header is anyone's words.
    ("203.0.113.9", "198.51.100.7", PROXY, "203.0.113.9"),
    ("10.1.2.3", "198.51.100.7", (), "10.1.2.3"),
    # From a trusted proxy: the rightmost hop that is not a trusted proxy.
    ("10.1.2.3", "198.51.100.7", PROXY, "198.51.100.7"),
    ("10.1.2.3", "6.6.6.6, 198.51.100.7, 10.1.9.9", PROXY, "198.51.100.7"),
    ("10.1.2.3", "10.1.8.8, 10.1.9.9", PROXY, "10.1.8.8"),
    ("10.1.2.3", "not-an-address", PROXY, "10.1.2.3"),
    ("10.1.2.3", " , ", PROXY, "10.1.2.3"),
    (None, None, PROXY, "unknown"),
])
def test_client_address(peer: str | None, forwarded: str | None,
                        trusted: tuple[ipaddress.IPv4Network, ...], source: str) -> None:
    assert client_address(peer, forwarded, trusted) == source


def test_the_callback_settings_defaults() -> None:
    """The documented defaults: 0.0.0.0:8080, /lovense/callback, 5/s burst 20, 3,000/s."""
    defaults = dataclasses.asdict(Settings())
    assert {k: defaults[k] for k in ("callback_host", "callback_port", "callback_path",
                                     "callback_source_rate", "callback_source_burst",
                                     "callback_rate", "callback_trusted_proxies")} == {
        "callback_host": "0.0.0.0", "callback_port": 8080, "callback_path": "/lovense/callback",
        "callback_source_rate": 5.0, "callback_source_burst": 20, "callback_rate": 3000.0,
        "callback_trusted_proxies": (),
    }
