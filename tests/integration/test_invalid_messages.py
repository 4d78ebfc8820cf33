"""Invalid messages: each gets an ``invalid`` result naming the problem and lands in lovense.dead,
while the worker keeps serving valid messages in between."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.support import ResultLog, dead_letters
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.contract import topology
from worker.contract.errors import InvalidCommand
from worker.core import intake
from worker.simulator import Simulator

LAN = '"lan":{"domain":"127-0-0-1.lovense.club","httpsPort":34568}'

# (the field the message must name, the raw body)
INVALID: list[tuple[str, bytes]] = [
    ("message", b"this is not json"),
    ("message", b"\xff\xfe\x00garbage"),
    ("message", b"[1, 2, 3]"),
    ("message", b'"Function"'),
    ("command", b'{"uid": "u1"}'),
    ("command", b'{"command": "Vibrate", "uid": "u1"}'),
    ("uid", b'{"command": "Function", "action": "Vibrate:5", "timeSec": 2}'),
    ("uid", b'{"command": "Function", "uid": "u1", "uids": ["u2"], "action": "Vibrate:5",'
            b' "timeSec": 2}'),
    ("uid", b'{"command": "Function", "uid": 42, "action": "Vibrate:5", "timeSec": 2}'),
    ("uids", b'{"command": "Function", "uids": [], "action": "Vibrate:5", "timeSec": 2}'),
    ("uid", b'{"command": "Function", "uid": "a,b", "action": "Vibrate:5", "timeSec": 2}'),
    ("timesec", b'{"command": "Function", "uid": "u1", "action": "Vibrate:5", "timesec": 2}'),
    ("token", b'{"command": "Function", "uid": "u1", "action": "Vibrate:5", "timeSec": 2,'
              b' "token": "leaked"}'),
    ("apiVer", b'{"command": "Function", "uid": "u1", "action": "Vibrate:5", "timeSec": 2,'
               b' "apiVer": 2}'),
    ("timeSec", b'{"command": "Function", "uid": "u1", "action": "Vibrate:5", "timeSec": "2"}'),
    ("action", b'{"command": "Function", "uid": "u1", "action": "Vibrate:25", "timeSec": 2}'),
    ("action", b'{"command": "Function", "uid": "u1", "action": "Pump:4", "timeSec": 2}'),
    ("action", b'{"command": "Function", "uid": "u1", "action": "Wiggle:4", "timeSec": 2}'),
    ("action", b'{"command": "Function", "uid": "u1", "action": "Stroke:0-10,Thrusting:5",'
               b' "timeSec": 2}'),
    ("action", b'{"command": "Function", "uid": "u1", "action": "Stroke:0-50", "timeSec": 2}'),
    ("action", b'{"command": "Function", "uid": "u1", "action": "Stop,Vibrate:3", "timeSec": 0}'),
    ("timeSec", b'{"command": "Function", "uid": "u1", "action": "Vibrate:5", "timeSec": 0.5}'),
    ("timeSec", b'{"command": "Function", "uid": "u1", "action": "Vibrate:5"}'),
    ("loopRunningSec", b'{"command": "Function", "uid": "u1", "action": "Vibrate:5",'
                       b' "timeSec": 9, "loopRunningSec": 1, "loopPauseSec": 2}'),
    ("rule", b'{"command": "Pattern", "uid": "u1", "rule": "V:2;F:v;S:1000#",'
             b' "strength": "1;2", "timeSec": 9}'),
    ("rule", b'{"command": "Pattern", "uid": "u1", "rule": "V:1;F:v;S:50#",'
             b' "strength": "1;2", "timeSec": 9}'),
    ("strength", b'{"command": "Pattern", "uid": "u1", "rule": "V:1;F:v;S:100#",'
                 b' "strength": "1;2;21", "timeSec": 9}'),
    ("strength", b'{"command": "Pattern", "uid": "u1", "rule": "V:1;F:v;S:100#", "strength": "'
                 + b";".join([b"1"] * 51) + b'", "timeSec": 9}'),
    ("type", b'{"command": "PatternV2", "uid": "u1", "type": "Rewind"}'),
    ("actions[1].ts", b'{"command": "PatternV2", "uid": "u1", "type": "Setup",'
                      b' "actions": [{"ts": 100, "pos": 1}, {"ts": 100, "pos": 2}]}'),
    ("actions[0].pos", b'{"command": "PatternV2", "uid": "u1", "type": "Setup",'
                       b' "actions": [{"ts": 0, "pos": 101}]}'),
    ("offsetTime", b'{"command": "PatternV2", "uid": "u1", "type": "Play", "offsetTime": 20000}'),
    ("startTime", b'{"command": "PatternV2", "uid": "u1", "type": "Play", "startTime": 7200001}'),
    ("name", b'{"command": "Preset", "uid": "u1", "name": "tsunami", "timeSec": 9}'),
    ("value", b'{"command": "Position", "uid": "u1", "value": 101}'),
    ("command", b'{"command": "PatternV2", "uid": "u1", "type": "Stop", "mode": "server"}'),
    ("command", b'{"command": "GetToys", "uid": "u1", "mode": "server"}'),
    ("command", b'{"command": "Position", "uid": "u1", "value": 50, "mode": "server"}'),
    ("action", b'{"command": "Function", "uid": "u1", "action": "Depth:2", "timeSec": 2,'
               b' "mode": "server"}'),
    ("rule", b'{"command": "Pattern", "uid": "u1", "rule": "V:1;F:d;S:100#", "strength": "1",'
             b' "timeSec": 9, "mode": "server"}'),
    ("toy", b'{"command": "Function", "uids": ["u1", "u2"], "toy": "t1", "action": "Vibrate:5",'
            b' "timeSec": 2, "mode": "server"}'),
    ("lan.domain", b'{"command": "Stop", "uid": "u1", "mode": "lan",'
                   b' "lan": {"domain": "evil.example.com", "httpsPort": 443}}'),
    ("lan.httpsPort", b'{"command": "Stop", "uid": "u1", "mode": "lan",'
                      b' "lan": {"domain": "127-0-0-1.lovense.club", "httpsPort": 70000}}'),
]


def _expected(body: bytes) -> str:
    try:
        intake.decode(body)
    except InvalidCommand as exc:
        return str(exc)
    return ""  # lan.domain is refused later, at the LAN door


async def test_invalid_messages_get_results_and_dead_letters_while_valid_ones_flow(
    sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """Each invalid message is answered invalid naming its field and dead-lettered; valid ones
    published between them all succeed."""
    assert len({body for _, body in INVALID}) >= 30
    invalid_ids, valid_ids = [], []
    for index, (_field, body) in enumerate(INVALID):
        invalid_ids.append(await producer.publish(body, message_id=f"bad-{index}",
                                                  routing_key="u1"))
        valid_ids.append(await producer.publish(
            {"command": "Stop", "uid": f"good-{index}", "mode": "server"},
            message_id=f"good-{index}"))

    answered = await asyncio.gather(*(results.wait_for(i, 20) for i in invalid_ids + valid_ids))
    by_id = {r.id: r for r in answered}
    for index, (field, body) in enumerate(INVALID):
        result = by_id[f"bad-{index}"]
        assert result.status == "invalid", (body, result.message)
        assert result.message.startswith(f"{field}: "), (body, result.message)
        if expected := _expected(body):
            assert result.message == expected
        assert result.via is None and result.attempts == 0
        assert results.routing_keys[result.id] == f"invalid.{result.command}"
    assert all(by_id[i].status == "ok" for i in valid_ids)

    dead = await dead_letters(len(INVALID))
    reasons = {m.message_id: m.headers[topology.ERROR_HEADER] for m in dead}
    assert reasons == {f"bad-{i}": by_id[f"bad-{i}"].message for i in range(len(INVALID))}
    assert {m.message_id: m.body for m in dead} == {
        f"bad-{i}": body for i, (_f, body) in enumerate(INVALID)}
    # Nothing invalid ever reached Lovense; every valid Stop did.
    assert sorted(r.body["uid"] for r in sim.requests) == sorted(
        f"good-{i}" for i in range(len(INVALID)))


@pytest.mark.parametrize("command", ["Vibrate", "unknown"])
async def test_unknown_command_routes_as_invalid_unknown(
    command: str, sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """An unknown command's result is published with routing key invalid.unknown."""
    ident = await producer.publish({"command": command, "uid": "u1"})
    result = await results.wait_for(ident)
    assert (result.status, result.command, results.routing_keys[ident]) == (
        "invalid", "unknown", "invalid.unknown")
