"""Every request example of Lovense's Standard API docs (docs/lovense-api.md), end to end.

Each example is published as a command message (its fields as the docs give
them, ``uid`` added, the docs' ``token`` left out) to ``lovense.commands``; the
test checks the HTTP request the simulator saw (method, path, headers, every
field) and the ``ok`` result on ``reply_to`` and on ``lovense.results``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.integration.support import ResultLog
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.simulator import SIMULATOR_TOKEN, Simulator

DOCS_TOKEN = "FE1TxWpTciAl4E2QfYEfPLvo2jf8V6WJWkLJtzLqv/nB2AMos9XuWzgQNrbXSi6n"

# The docs' request bodies, verbatim (LAN: Step 3A; server: Step 3B).
LAN_EXAMPLES: dict[str, dict[str, Any]] = {
    "Function 1": {"command": "Function", "action": "Vibrate:16", "timeSec": 20,
                   "loopRunningSec": 9, "loopPauseSec": 4, "toy": "ff922f7fd345", "apiVer": 1},
    "Function 2": {"command": "Function", "action": "Vibrate:2,Rotate:3,Pump:3", "timeSec": 20,
                   "loopRunningSec": 9, "loopPauseSec": 4, "apiVer": 1},
    "Function 3": {"command": "Function", "action": "Vibrate:2,All:10", "timeSec": 20,
                   "loopRunningSec": 9, "loopPauseSec": 4, "apiVer": 1},
    "Function 4": {"command": "Function", "action": "Stroke:0-20,Thrusting:10", "timeSec": 20,
                   "apiVer": 1},
    "Function 5": {"command": "Function", "action": "Stop", "timeSec": 0, "apiVer": 1},
    "Pattern 1": {"command": "Pattern", "rule": "V:1;F:v;S:1000#", "strength": "20;20;5;20;10",
                  "timeSec": 9, "toy": "ff922f7fd345", "apiVer": 2},
    "Pattern 2": {"command": "Pattern", "rule": "V:1;F:v,r,p;S:100#", "strength": "20;20;5;20;10",
                  "timeSec": 9, "apiVer": 2},
    "PatternV2 Setup": {"command": "PatternV2", "type": "Setup", "actions": [
        {"ts": 0, "pos": 10}, {"ts": 100, "pos": 100}, {"ts": 200, "pos": 10},
        {"ts": 400, "pos": 15}, {"ts": 800, "pos": 88}], "apiVer": 1},
    "PatternV2 Play": {"command": "PatternV2", "type": "Play", "toy": "ff922f7fd345",
                       "startTime": 100, "offsetTime": 300, "apiVer": 1},
    "PatternV2 Stop": {"command": "PatternV2", "type": "Stop", "toy": "ff922f7fd345", "apiVer": 1},
    "Preset": {"command": "Preset", "name": "pulse", "timeSec": 9, "toy": "ff922f7fd345",
               "apiVer": 1},
    "GetToys": {"command": "GetToys"},
    "GetToyName": {"command": "GetToyName"},
    # Not in the base document; Lovense's newer pages give Position's shape (docs/lovense-api.md).
    "Position": {"command": "Position", "value": "50", "toy": "c1a7e0501234", "apiVer": 1},
}

# A pattern is played after it was set up, as a real client does.
PRELUDES: dict[str, list[dict[str, Any]]] = {
    "PatternV2 Play": [{**LAN_EXAMPLES["PatternV2 Setup"], "toy": "ff922f7fd345"}],
}

SERVER_EXAMPLES: dict[str, dict[str, Any]] = {
    "Function 1": {"token": DOCS_TOKEN, "uid": "1132fsdfsd", "command": "Function",
                   "action": "Vibrate:16", "timeSec": 20, "loopRunningSec": 9,
                   "loopPauseSec": 4, "apiVer": 1},
    "Function 2": {"token": DOCS_TOKEN, "uid": "1132fsdfsd", "command": "Function",
                   "action": "Vibrate:2,Rotate:3,Pump:3", "timeSec": 20, "loopRunningSec": 9,
                   "loopPauseSec": 4, "apiVer": 1},
    "Pattern 1": {"token": DOCS_TOKEN, "uid": "1ads22adsf", "command": "Pattern",
                  "rule": "V:1;F:v;S:1000#", "strength": "20;20;5;20;10", "timeSec": 9,
                  "apiVer": 2},
    "Pattern 2": {"token": DOCS_TOKEN, "uid": "1ads22adsf", "command": "Pattern",
                  "rule": "V:1;F:v,r,p;S:100#", "strength": "20;20;5;20;10", "timeSec": 9,
                  "apiVer": 2},
    "Preset": {"token": DOCS_TOKEN, "uid": "1adsf2323", "command": "Preset", "name": "pulse",
               "timeSec": 9, "apiVer": 1},
}


def _without_token(example: dict[str, Any]) -> dict[str, Any]:
    message = copy.deepcopy(example)
    message.pop("token", None)
    return message


async def _check_result(
    producer: Producer, results: ResultLog, message: dict[str, Any], via: str, code: int
) -> Any:
    reply = await producer.call(message, timeout=10)
    published = await results.wait_for(reply.id)
    assert reply.status == "ok", reply.message
    assert (reply.via, reply.code, reply.attempts, reply.fallback) == (via, code, 1, False)
    assert published == reply
    assert results.routing_keys[reply.id] == f"ok.{message['command']}"
    return reply.data


@pytest.mark.parametrize("name", sorted(LAN_EXAMPLES))
async def test_lan_example(
    name: str, sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """A docs LAN example reaches the Remote app byte-for-field as documented and comes back ok."""
    app = sim.apps[0]
    target = {"uid": app.uid, "mode": "lan",
              "lan": {"domain": app.domain, "httpsPort": app.https_port}}
    for before in PRELUDES.get(name, []):
        await _check_result(producer, results, {**before, **target}, "lan", 200)
    body = LAN_EXAMPLES[name]
    data = await _check_result(producer, results, {**body, **target}, "lan", 200)

    lan_requests = [r for r in sim.requests if r.side == "lan"]
    if name == "Function 5":
        # A Stop on the LAN also ends a playing PatternV2, right after the Function Stop.
        seen, v2_stop = lan_requests[-2:]
        assert v2_stop.body == {"command": "PatternV2", "type": "Stop", "apiVer": 1}
    else:
        seen = lan_requests[-1]
    assert (seen.method, seen.path, seen.scheme, seen.app) == ("POST", "/command", "https", app.uid)
    assert seen.headers["x-platform"] == "lovense-worker"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == body
    if name == "GetToys":
        assert sorted(data["toys"]) == sorted(app.toys)
        assert data["toys"]["f082c00246fa"]["fullFunctionNames"] == ["Vibrate", "Rotate"]
    elif name == "GetToyName":
        assert data == ["Nora", "Max", "Solace Pro"]
    else:
        assert data is None


@pytest.mark.parametrize("name", sorted(SERVER_EXAMPLES))
async def test_server_example(
    name: str, sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """A docs server example reaches the server API with every field and the worker's token."""
    example = SERVER_EXAMPLES[name]
    message = {**_without_token(example), "mode": "server"}
    await _check_result(producer, results, message, "server", 200)

    [seen] = [r for r in sim.requests if r.side == "server"]
    assert (seen.method, seen.path) == ("POST", "/api/lan/v2/command")
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == {**example, "token": SIMULATOR_TOKEN}


async def test_get_qr_code_example(
    sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """getQrCode goes to the server with token, uid, uname, utoken and v 2; qr, code come back."""
    message = {"command": "GetQrCode", "uid": "11111", "uname": "user name", "v": 2}
    data = await _check_result(producer, results, message, "server", 0)

    [seen] = [r for r in sim.requests if r.side == "server"]
    assert (seen.method, seen.path) == ("POST", "/api/lan/getQrCode")
    assert seen.body == {"token": SIMULATOR_TOKEN, "uid": "11111", "uname": "user name",
                         "utoken": "", "v": 2}
    assert sorted(data) == ["code", "expiresAt", "qr"]
    assert data["qr"].endswith(f"/UploadFiles/qr/{data['code']}.jpg")
