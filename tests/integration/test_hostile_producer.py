"""A hostile producer cannot stall a lane: every delivery on the shards, the Stop lane and the
callback queue ends settled, over-long and reused ids are judged by their bytes and their
command, oversized lists are refused (never for a Stop), and a restart calls nobody twice."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aio_pika
import msgspec
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection

from tests.integration.support import (
    AMQP_URL,
    SHARDS,
    ResultLog,
    ResultRecorder,
    capturing_results,
    dead_letters,
    ready_messages,
    unanswered,
    until,
    worker_settings,
)
from tests.integration.test_pairing import SECRET
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.contract import topology
from worker.contract.messages import Result
from worker.core.bodies import utoken_for
from worker.simulator import Simulator

MIB = 1024 * 1024
BOMB = b"[" * 1000
FUNCTION = b'"command":"Function","action":"Vibrate:5","timeSec":2,"mode":"server"'
STOP = b'"command":"Stop","mode":"server"'
#: The uid every hostile body names where it names one: nothing may ever reach it.
HOSTILE_UID = "hostile-user"
#: Rounds of hostile bodies per lane: well over the old 64 unsettled deliveries per lane.
ROUNDS = 20
ORDINARY = 60
LONG_ID_ERROR = "id: longer than 255 bytes"
#: What aiormq puts in a message_id left unset: it fills every missing one with a random UUID.
AIORMQ_STAND_IN = re.compile(r"[0-9a-f]{32}")
QUEUES = [topology.shard_queue(i) for i in range(SHARDS)] + [topology.STOP_QUEUE,
                                                               topology.CALLBACKS_QUEUE]


# ---------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Hostile:
    """One hostile message: its body, the message_id it is published with, its result's id."""

    name: str
    body: bytes
    message_id: str
    result_id: str


class Raw:
    """Publish raw bodies with any id: Producer itself cannot decode a nesting bomb."""

    def __init__(self) -> None:
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def __aenter__(self) -> Raw:
        self._connection = await aio_pika.connect(AMQP_URL)
        self._channel = await self._connection.channel(publisher_confirms=True)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._connection is not None
        await self._connection.close()

    async def publish(self, body: bytes, *, exchange: str, routing_key: str = "",
                      message_id: str | None = None) -> None:
        """Publish one body, with x-lovense-published-ms as the producer helper sets it."""
        assert self._channel is not None
        target = await self._channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(
            body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={topology.PUBLISHED_MS_HEADER: time.time_ns() // 1_000_000}),
            routing_key=routing_key)


def _obj(*members: bytes) -> bytes:
    return b"{" + b",".join(members) + b"}"


def _padded(size: int) -> bytes:
    """Return a Function for HOSTILE_UID padded with an unknown field to exactly ``size`` bytes."""
    head = _obj(FUNCTION, f'"uid":"{HOSTILE_UID}"'.encode(), b'"pad":"')[:-1]
    return head + b"x" * (size - len(head) - 2) + b'"}'


def hostile_bodies() -> dict[str, bytes]:
    """Return every hostile command body by name (nesting bombs everywhere, not JSON, ...)."""
    uid = f'"uid":"{HOSTILE_UID}"'.encode()
    bodies = {
        "bomb as the body": BOMB,
        "bomb of objects": b'{"a":' * 1000,
        "bomb as the command": _obj(b'"command":' + BOMB),
        "not JSON": b"this is not json",
        "not UTF-8": b"\xff\xfe",
    }
    for kind, tag in (("Function", FUNCTION), ("Stop", STOP)):
        for field in ("uid", "uids", "toy", "id", "mode", "pad"):
            bomb = f'"{field}":'.encode() + BOMB
            ours = () if field in ("uid", "uids") else (uid,)
            bodies[f"{kind}, bomb as {field} before the command"] = _obj(bomb, tag, *ours)
            bodies[f"{kind}, bomb as {field} after the command"] = _obj(tag, *ours, bomb)
    lan = b'"lan":{"domain":' + BOMB + b"}"
    bodies["Stop, bomb inside lan before the command"] = _obj(lan, STOP, uid)
    bodies["Stop, bomb inside lan after the command"] = _obj(STOP, uid, lan)
    return bodies


def hostile_batch(lane: str) -> list[Hostile]:
    """Return ROUNDS rounds of hostile bodies for a lane, plus the 1 MiB ones, each named."""
    batch: list[Hostile] = []
    for round_ in range(ROUNDS):
        for name, body in hostile_bodies().items():
            ident = f"{lane}-{len(batch)}"
            batch.append(Hostile(name, body, ident, ident))
        if lane == "commands":
            # Over-long ids: the result carries them, so they are unique per round.
            for name, long_id in (("256 ASCII bytes", f"{round_:03d}" + "a" * 253),
                                  ("256 UTF-8 bytes", "é" * 127 + f"{round_:02d}")):
                body = msgspec.json.encode({"command": "Function", "uid": HOSTILE_UID,
                                            "id": long_id, "action": "Vibrate:5",
                                            "timeSec": 2, "mode": "server"})
                batch.append(Hostile(f"id of {name}", body, f"{lane}-{len(batch)}", long_id))
    for name, size in (("exactly 1 MiB", MIB), ("1 MiB and a byte", MIB + 1)):
        ident = f"{lane}-{len(batch)}"
        batch.append(Hostile(name, _padded(size), ident, ident))
    return batch


def check_hostile_result(item: Hostile, result: Result) -> None:
    """Assert the one result of a hostile message: invalid, saying why where that is pinned."""
    assert (result.status, result.via, result.attempts) == ("invalid", None, 0), (
        item.name, result.status, result.message)
    if item.name == "1 MiB and a byte":
        assert result.message.startswith("message: larger than"), result.message
    elif item.name == "exactly 1 MiB":
        assert result.message.startswith("pad: "), result.message
    elif item.name.startswith("id of "):
        assert result.message == LONG_ID_ERROR


def called_uids(sim: Simulator, action: str | None = None) -> list[str]:
    """Return the uid of every server call (comma-joined ones split), optionally one action."""
    uids: list[str] = []
    for request in sim.requests:
        body = request.body if isinstance(request.body, dict) else {}
        if request.side == "server" and (action is None or body.get("action") == action):
            uids += str(body.get("uid", "")).split(",")
    return uids


def calls_for(sim: Simulator, uid: str) -> list[dict[str, Any]]:
    """Return the bodies of the server calls that named ``uid``."""
    return [r.body for r in sim.requests if r.side == "server" and isinstance(r.body, dict)
            and uid in str(r.body.get("uid", "")).split(",")]


async def ordinary_traffic_flows(sim: Simulator, producer: Producer, results: ResultLog,
                                 tag: str) -> None:
    """Publish ORDINARY Functions for distinct users, then a Stop; assert all of it gets through."""
    idents = [await producer.publish({
        "command": "Function", "uid": f"{tag}-user-{n}", "id": f"{tag}-ordinary-{n}",
        "action": "Vibrate:5", "timeSec": 2, "mode": "server"}) for n in range(ORDINARY)]
    stop_uid = f"{tag}-stop-user"
    stop_id = await producer.publish({"command": "Stop", "uid": stop_uid, "mode": "server",
                                      "id": f"{tag}-stop"})
    assert await unanswered(results, idents, 30) == []
    assert {results.by_id[i].status for i in idents} == {"ok"}
    await until(lambda: stop_uid in called_uids(sim, "Stop"), 20, what=f"a Stop for {stop_uid}")
    stop = await results.wait_for(stop_id, 20)
    assert (stop.status, stop.command) == ("ok", "Stop")


@pytest.fixture
async def recorded(clean_broker: None) -> AsyncIterator[ResultRecorder]:
    """Every result, with its AMQP message_id, while the test runs."""
    async with capturing_results(ResultRecorder()) as log:
        yield log


# ---------------------------------------------------------------------------- lanes


@pytest.mark.parametrize(("lane", "exchange"), [("commands", topology.COMMANDS_EXCHANGE),
                                                ("stop", topology.STOP_EXCHANGE)])
async def test_hostile_commands_never_stall_a_lane(
    lane: str, exchange: str, sim: Simulator, producer: Producer, results: ResultLog,
    clean_broker: None,
) -> None:
    """Hundreds of hostile bodies on a lane each get an invalid result and a dead letter, and
    ordinary commands and a Stop published after them all get through."""
    batch = hostile_batch(lane)
    assert len(batch) > 600
    async with Worker(worker_settings(sim)), Raw() as raw:
        for n, item in enumerate(batch):
            await raw.publish(item.body, exchange=exchange, routing_key=f"hostile-{n}",
                              message_id=item.message_id)
        await ordinary_traffic_flows(sim, producer, results, lane)
        assert await unanswered(results, (h.result_id for h in batch), 20) == []
        for item in batch:
            check_hostile_result(item, results.by_id[item.result_id])
        dead = await dead_letters(len(batch), timeout=30)
    reasons = {m.message_id: m.headers.get(topology.ERROR_HEADER) for m in dead}
    assert reasons == {h.message_id: results.by_id[h.result_id].message for h in batch}
    assert HOSTILE_UID not in called_uids(sim)
    # The worker is gone: whatever it left unacked is back in its queue now.
    assert await ready_messages(QUEUES) == dict.fromkeys(QUEUES, 0)


def hostile_callbacks(valid: dict[str, Any]) -> dict[str, bytes]:
    """Return every hostile callback body by name."""
    encoded = msgspec.json.encode(valid)
    head = encoded[:-1] + b',"pad":"'
    return {
        "bomb as the body": BOMB,
        "bomb of objects": b'{"a":' * 1000,
        "bomb as the uid, first": b'{"uid":' + BOMB + b"," + encoded[1:],
        "bomb inside toys": encoded[:-1] + b',"toys":{"t1":' + BOMB + b"}}",
        "bomb as the domain": encoded[:-1] + b',"domain":' + BOMB + b"}",
        "not JSON": b"uid=sim-user-1&domain=127-0-0-1.lovense.club",
        "not UTF-8": b"\xff\xfe",
        "exactly 1 MiB": head + b"x" * (MIB - len(head) - 2) + b'"}',
        "1 MiB and a byte": head + b"x" * (MIB + 1 - len(head) - 2) + b'"}',
    }


async def test_hostile_callbacks_never_stall_the_callback_queue(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """Hundreds of hostile callbacks are dead-lettered as refused, and after them a good callback
    is applied and a forged one refused; commands and a Stop still get through."""
    app = sim.apps[0]
    valid = {**sim.callback_body(app.uid), "utoken": utoken_for(app.uid, SECRET.reveal())}
    bodies = hostile_callbacks(valid)
    batch = [(f"callback-{r}-{n}", name, body) for r in range(50)
             for n, (name, body) in enumerate(bodies.items()) if r == 0 or "MiB" not in name]
    assert len(batch) > 300
    async with Worker(worker_settings(sim, utoken_secret=SECRET)) as worker, Raw() as raw:
        for message_id, _name, body in batch:
            await raw.publish(body, exchange=topology.CALLBACKS_EXCHANGE, message_id=message_id)
        await raw.publish(msgspec.json.encode(valid), exchange=topology.CALLBACKS_EXCHANGE,
                          message_id="callback-valid")
        forged = {**valid, "utoken": "0" * 64}
        await raw.publish(msgspec.json.encode(forged), exchange=topology.CALLBACKS_EXCHANGE,
                          message_id="callback-forged")
        await until(lambda: worker.registry.get(app.uid) is not None, 20, what="callback-valid")
        dead = await dead_letters(len(batch) + 1, timeout=30)
        await ordinary_traffic_flows(sim, producer, results, "callbacks")
    reasons = {str(m.message_id): str(m.headers.get(topology.ERROR_HEADER)) for m in dead}
    assert sorted(reasons) == sorted([*(message_id for message_id, _n, _b in batch),
                                      "callback-forged"])
    refused = [i for i, reason in reasons.items() if not reason.startswith("callback refused: ")]
    assert refused == []
    # The queue still judges what comes after the flood, one by one.
    assert reasons["callback-forged"] == (
        "callback refused: utoken: does not match the uid (forged or for another user)")
    assert await ready_messages(QUEUES) == dict.fromkeys(QUEUES, 0)


# ---------------------------------------------------------------------------- ids


def unset_message_id(value: str | None, ident: str) -> bool:
    """Return whether a result's message_id was left unset rather than made from ``ident``."""
    return value is None or (AIORMQ_STAND_IN.fullmatch(value) is not None
                             and not ident.startswith(value))


def _function(uid: str, **extra: Any) -> dict[str, Any]:
    return {"command": "Function", "uid": uid, "action": "Vibrate:3", "timeSec": 2,
            "mode": "server", **extra}


async def test_ids_are_measured_in_utf8_bytes_and_longer_ones_are_refused(
    sim: Simulator, worker: Worker, recorded: ResultRecorder, clean_broker: None
) -> None:
    """A non-Stop id of 255 UTF-8 bytes runs and names its result's message_id; one of 256 is
    invalid, carried unchanged in the result body, with no message_id, and dead-lettered."""
    fits = {"a" * 255: "ascii-255", "é" * 127 + "a": "utf8-255", "😀" * 63 + "abc": "emoji-255"}
    too_long = {"a" * 256: "ascii-256", "é" * 128: "utf8-256", "😀" * 64: "emoji-256"}
    assert {len(i.encode()) for i in fits} == {255}
    assert {len(i.encode()) for i in too_long} == {256}
    async with Raw() as raw:
        for ident, uid in {**fits, **too_long}.items():
            await raw.publish(msgspec.json.encode(_function(uid, id=ident)),
                              exchange=topology.COMMANDS_EXCHANGE, routing_key=uid)
        # The AMQP message_id is the id when the body has none: 255 bytes fit there too.
        by_property = "é" * 127 + "b"
        await raw.publish(msgspec.json.encode(_function("property-255")),
                          exchange=topology.COMMANDS_EXCHANGE, routing_key="property-255",
                          message_id=by_property)
    everyone = [*fits, *too_long, by_property]
    assert await unanswered(recorded, everyone, 20) == []
    for ident in [*fits, by_property]:
        result = recorded.by_id[ident]
        assert (result.status, result.via) == ("ok", "server"), result.message
        assert recorded.message_ids[ident] == ident
    for ident in too_long:
        result = recorded.by_id[ident]
        assert (result.status, result.message, result.id) == ("invalid", LONG_ID_ERROR, ident)
        assert unset_message_id(recorded.message_ids[ident], ident)
        assert recorded.routing_keys[ident] == "invalid.Function"
    dead = await dead_letters(len(too_long))
    assert [m.headers.get(topology.ERROR_HEADER) for m in dead] == [LONG_ID_ERROR] * 3
    assert sorted(called_uids(sim)) == sorted([*fits.values(), "property-255"])


async def test_stop_with_an_over_long_id_is_still_carried_out(
    sim: Simulator, worker: Worker, recorded: ResultRecorder, clean_broker: None
) -> None:
    """A Stop is never refused for its id: it reaches Lovense, and its ok result carries the
    producer's id and says it ran under a worker-made one."""
    long_ids = {"a" * 256: "stop-ascii-256", "é" * 128: "stop-utf8-256",
                "😀" * 64: "stop-emoji-256", "x" * 1000: "stop-ascii-1000"}
    fitting = "a" * 255
    async with Raw() as raw:
        for ident, uid in {**long_ids, fitting: "stop-ascii-255"}.items():
            await raw.publish(msgspec.json.encode({"command": "Stop", "uid": uid, "id": ident,
                                                   "mode": "server"}),
                              exchange=topology.STOP_EXCHANGE)
    assert await unanswered(recorded, [*long_ids, fitting], 20) == []
    for ident in long_ids:
        result = recorded.by_id[ident]
        assert (result.status, result.command, result.id) == ("ok", "Stop", ident), (
            result.message)
        assert "longer than 255 bytes" in result.message
        assert unset_message_id(recorded.message_ids[ident], ident)
    assert recorded.by_id[fitting].status == "ok"
    assert recorded.message_ids[fitting] == fitting
    assert sorted(called_uids(sim, "Stop")) == sorted([*long_ids.values(), "stop-ascii-255"])


async def test_an_id_names_one_command(
    sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """An id reused with a different command is invalid; the same command again, serialised
    differently, is answered with the first result and never called twice."""
    first = await producer.call(_function("reuse-user", id="reuse-1"))
    other = await producer.call(_function("reuse-user", id="reuse-1", action="Vibrate:9"))
    again = await producer.call(
        b'{ "mode" : "server", "timeSec": 2,\n "id": "reuse-1", "uid": "reuse-user",'
        b'  "action": "Vibrate:3", "command": "Function" }')
    assert (first.status, first.id) == ("ok", "reuse-1")
    assert (other.status, other.message, other.id) == (
        "invalid", "id: already used by a different command", "reuse-1")
    assert again == first
    assert [c["action"] for c in calls_for(sim, "reuse-user")] == ["Vibrate:3"]


async def test_a_stop_reusing_an_id_is_sent_not_answered_from_memory(
    sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """A Stop whose id an earlier Function used still reaches Lovense and answers as a Stop."""
    started = await producer.call(_function("job-user", id="job-42", action="Vibrate:20",
                                            timeSec=0))
    stop = await producer.call({"command": "Stop", "uid": "job-user", "id": "job-42",
                                "mode": "server"})
    assert (started.status, started.command) == ("ok", "Function")
    assert (stop.status, stop.command, stop.id) == ("ok", "Stop", "job-42")
    assert [c["action"] for c in calls_for(sim, "job-user")] == ["Vibrate:20", "Stop"]


# ---------------------------------------------------------------------------- caps


async def test_toy_lists_are_capped_except_for_a_stop(
    sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """32 toy ids run and 33 are invalid; a Stop with 33 or 100,000 toy ids stops every toy of
    its user, without naming toys."""
    toys = [f"t{n:05d}" for n in range(100_000)]
    fits = await producer.call(_function("toys-32", toy=toys[:32]))
    over = await producer.call(_function("toys-33", toy=toys[:33]))
    assert (fits.status, fits.via) == ("ok", "server"), fits.message
    assert over.status == "invalid" and over.message.startswith("toy:"), over.message
    for uid, many in (("stop-toys-33", toys[:33]), ("stop-toys-100000", toys)):
        body = msgspec.json.encode({"command": "Stop", "uid": uid, "toy": many,
                                    "mode": "server"})
        assert len(body) < MIB
        stop = await producer.call(body, timeout=20)
        assert (stop.status, stop.command) == ("ok", "Stop"), stop.message
        assert "every toy" in stop.message
        [call] = calls_for(sim, uid)
        assert (call["action"], "toy" in call) == ("Stop", False)
    assert [c["toy"] for c in calls_for(sim, "toys-32")] == [toys[:32]]
    assert calls_for(sim, "toys-33") == []


async def test_uid_lists_are_capped_except_for_a_stop(
    sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """A Function for 10,001 users is invalid; a Stop for 10,001 users reaches every one."""
    users = [f"many-{n:05d}" for n in range(10_001)]
    over = await producer.call({"command": "Function", "uids": users, "action": "Vibrate:3",
                                "timeSec": 2, "mode": "server"})
    assert over.status == "invalid" and over.message.startswith("uids:"), over.message
    assert called_uids(sim) == []
    stop = await producer.call({"command": "Stop", "uids": users, "mode": "server"},
                               timeout=40)
    assert stop.status in ("ok", "failed"), stop.message
    assert sorted(set(called_uids(sim, "Stop"))) == users


# ---------------------------------------------------------------------------- restart


async def test_a_restart_after_hostile_traffic_calls_nobody_twice(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """After hostile and ordinary traffic is answered, a new worker on the same queues calls
    no user a second time: every delivery was settled by the first."""
    settings = worker_settings(sim)
    hostile = [*hostile_batch("commands")[:150], *hostile_batch("stop")[:150]]
    ordinary: list[str] = []
    async with Worker(settings), Raw() as raw:
        for n, item in enumerate(hostile):
            exchange = (topology.COMMANDS_EXCHANGE if item.message_id.startswith("commands")
                        else topology.STOP_EXCHANGE)
            await raw.publish(item.body, exchange=exchange, routing_key=f"hostile-{n}",
                              message_id=item.message_id)
        for n in range(40):
            ordinary.append(await producer.publish(_function(f"once-{n}", id=f"once-{n}")))
        for n in range(10):
            ordinary.append(await producer.publish({"command": "Stop", "uid": f"once-stop-{n}",
                                                    "id": f"once-stop-{n}", "mode": "server"}))
            long_id = f"{n:02d}" + "é" * 127
            await raw.publish(msgspec.json.encode({"command": "Stop", "uid": f"once-long-{n}",
                                                   "id": long_id, "mode": "server"}),
                              exchange=topology.STOP_EXCHANGE)
            ordinary.append(long_id)
        assert await unanswered(results, [*ordinary, *(h.result_id for h in hostile)], 30) == []
    assert {results.by_id[i].status for i in ordinary} == {"ok"}
    assert {results.by_id[h.result_id].status for h in hostile} == {"invalid"}
    assert await ready_messages(QUEUES) == dict.fromkeys(QUEUES, 0)

    async with Worker(settings):
        # Probes on every shard and the Stop lane: once they are answered, anything the first
        # worker left behind would have been taken before them.
        probes = [await producer.publish(_function(f"probe-{n}", id=f"probe-{n}"))
                  for n in range(40)]
        probes.append(await producer.publish({"command": "Stop", "uid": "probe-stop",
                                              "id": "probe-stop", "mode": "server"}))
        assert await unanswered(results, probes, 30) == []
    twice = {uid: n for uid, n in Counter(called_uids(sim)).items() if n > 1}
    assert twice == {}
    expected = {f"once-{n}" for n in range(40)} | {f"once-stop-{n}" for n in range(10)} | {
        f"once-long-{n}" for n in range(10)} | {f"probe-{n}" for n in range(40)} | {"probe-stop"}
    assert set(called_uids(sim)) == expected
