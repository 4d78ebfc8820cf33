"""Forged callbacks are refused at the door: each is dead-lettered with a reason, changes
nothing, and makes the worker dial nothing."""

from __future__ import annotations

import ipaddress
from typing import Any

import msgspec

from tests.integration.support import (
    Listener,
    ResultLog,
    dead_letters,
    recording_client,
    until,
    worker_settings,
)
from tests.integration.test_pairing import SECRET, post_callback
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.core.bodies import utoken_for
from worker.simulator import Simulator

UID = "forged-user"
MARKER_UID = "forged-marker-user"


def callback(listener_port: int, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "uid": UID, "appVersion": "7.76.0", "toys": {"t1": {"nickName": "", "name": "lush",
                                                          "id": "t1", "status": 1}},
        "wssPort": "34568", "httpPort": "34567", "wsPort": "34567", "appType": "remote",
        "domain": "127-0-0-2.lovense.club", "utoken": utoken_for(UID, SECRET.reveal()),
        "httpsPort": str(listener_port), "version": "101", "platform": "android",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def marker(sim: Simulator) -> dict[str, Any]:
    """Return a genuine callback of another user, on an allowed address: the door takes it."""
    return {**sim.callback_body(sim.apps[0].uid), "uid": MARKER_UID,
            "utoken": utoken_for(MARKER_UID, SECRET.reveal())}


def hostile(port: int) -> dict[str, bytes]:
    """Return every forged callback by name: its raw body."""
    enc = msgspec.json.encode
    cases: dict[str, Any] = {
        "wrong utoken": callback(port, domain="127-0-0-1.lovense.club", utoken="0" * 64),
        "missing utoken": callback(port, domain="127-0-0-1.lovense.club", utoken=...),
        "another user's utoken": callback(port, domain="127-0-0-1.lovense.club",
                                          utoken=utoken_for("someone-else", SECRET.reveal())),
        "loopback outside allow list": callback(port),
        "cloud metadata": callback(port, domain="169-254-169-254.lovense.club", httpsPort="80"),
        "private network": callback(port, domain="10-0-0-1.lovense.club"),
        "name not under lovense.club": callback(port, domain="evil.example.com"),
        "lovense.club as a prefix": callback(port, domain="127-0-0-1.lovense.club.evil.com"),
        "userinfo trick": callback(port, domain="127-0-0-1.lovense.club@evil.com"),
        "port in the name": callback(port, domain="127-0-0-1.lovense.club:443"),
        "IPv6 literal": callback(port, domain="[::1]"),
        "IPv6 dashed": callback(port, domain="0--1.lovense.club"),
        "decimal IP": callback(port, domain="2130706433.lovense.club"),
        "octal IP": callback(port, domain="0177-0-0-1.lovense.club"),
        "hex IP": callback(port, domain="0x7f-0-0-1.lovense.club"),
        "port 0": callback(port, domain="127-0-0-1.lovense.club", httpsPort="0"),
        "port 70000": callback(port, domain="127-0-0-1.lovense.club", httpsPort=70000),
        "port not a number": callback(port, domain="127-0-0-1.lovense.club", httpsPort="44a"),
        "missing uid": callback(port, domain="127-0-0-1.lovense.club", uid=...),
    }
    raw = {name: enc(body) for name, body in cases.items()}
    valid = enc(callback(port, domain="127-0-0-1.lovense.club"))
    raw["oversized body"] = valid[:-1] + b',"pad":"' + b"x" * 70_000 + b'"}'
    raw["deeply nested"] = valid[:-1] + b',"deep":' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    raw["not UTF-8"] = valid.replace(b'"android"', b'"\xff\xfe"')
    raw["not JSON"] = b"uid=forged-user&domain=127-0-0-1.lovense.club"
    raw["JSON array"] = b"[" + valid + b"]"
    return raw


async def test_forged_callbacks_are_refused_and_dial_nothing(
    sim: Simulator, listener: Listener, producer: Producer, results: ResultLog,
    clean_broker: None,
) -> None:
    """Every forged callback lands in lovense.dead with a reason; no entry, no connection."""
    settings = worker_settings(sim, utoken_secret=SECRET,
                               lan_allow=(ipaddress.ip_network("127.0.0.1/32"),))
    client, seam = recording_client(settings, sim)
    cases = hostile(listener.port)
    assert len(cases) >= 20
    async with Worker(settings, client=client) as worker:
        for body in cases.values():
            await post_callback(body)
        dead = await dead_letters(len(cases), timeout=20)
        reasons = {m.body: str(m.headers["x-lovense-error"]) for m in dead}
        # A good callback after the forged ones: once the log follower has applied it, it has
        # applied everything the door let through before it.
        await post_callback(marker(sim))
        await until(lambda: MARKER_UID in worker.registry, what="the marker callback applied")
        assert UID not in worker.registry
        after = await producer.call({"command": "Function", "uid": UID, "action": "Vibrate:3",
                                     "timeSec": 2})
    assert sorted(reasons) == sorted(cases.values()), [
        n for n, b in cases.items() if b not in reasons]
    for name, body in cases.items():
        assert reasons[body].startswith("callback refused: "), name
    assert reasons[cases["wrong utoken"]] == (
        "callback refused: utoken: does not match the uid (forged or for another user)")
    assert reasons[cases["missing utoken"]] == (
        "callback refused: utoken: missing; the app echoes the utoken of its QR code")
    assert reasons[cases["cloud metadata"]] == (
        "callback refused: LAN address 169.254.169.254 is link-local (cloud metadata lives "
        "there); the worker never connects to it")
    assert reasons[cases["loopback outside allow list"]] == (
        "callback refused: LAN address 127.0.0.2 is outside LOVENSE_LAN_ALLOW; the worker did "
        "not connect")
    assert reasons[cases["port 70000"]] == "callback refused: httpsPort: must be 1–65535, got 70000"
    assert (after.status, after.via) == ("ok", "server")
    assert listener.connections == 0
    assert [url for url in seam.urls if not url.startswith(sim.server_url)] == []


async def test_callbacks_are_refused_without_a_secret_unless_allowed(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """Without LOVENSE_UTOKEN_SECRET callbacks are refused; with the opt-in they are taken."""
    app = sim.apps[0]
    body = sim.callback_body(app.uid)
    async with Worker(worker_settings(sim)) as strict:
        await post_callback(body)
        [dead] = await dead_letters(1)
        assert app.uid not in strict.registry
    assert str(dead.headers["x-lovense-error"]).startswith(
        "callback refused: utoken: cannot be verified without LOVENSE_UTOKEN_SECRET")
    async with Worker(worker_settings(sim, allow_unverified_callbacks=True)) as lax:
        assert lax.registry.get(app.uid) is not None  # replayed from the log
        endpoint = lax.registry.get(app.uid)
        assert endpoint is not None and endpoint.verified is False
