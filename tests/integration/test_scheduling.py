"""Scheduling through the real broker: superseded, dropped, expired, and Stops that win."""

from __future__ import annotations

import time

from tests.integration.support import ResultLog, until, worker_settings
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.contract import topology
from worker.simulator import Simulator


def vibrate(ident: str, level: int, uid: str = "sched-user", **extra: object) -> dict[str, object]:
    return {"command": "Function", "uid": uid, "id": ident, "action": f"Vibrate:{level}",
            "timeSec": 10, "mode": "server", **extra}


def server_actions(sim: Simulator, uid: str) -> list[str]:
    return [r.body["action"] for r in sim.requests
            if r.side == "server" and r.body.get("uid") == uid]


async def test_newer_command_supersedes_the_waiting_one(
    sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """While a call is in flight, waiting commands for the key are replaced by the newest."""
    gate = sim.hold()
    await producer.publish(vibrate("s1", 1))
    await gate.arrived(1)
    for n in (2, 3, 4):
        await producer.publish(vibrate(f"s{n}", n))
    await results.wait_for("s3")  # superseded by s4: s4 waits behind s1 now
    gate.release()
    done = [await results.wait_for(f"s{n}") for n in (1, 2, 3, 4)]
    assert [(r.status, r.supersededBy) for r in done] == [
        ("ok", None), ("superseded", "s3"), ("superseded", "s4"), ("ok", None)]
    assert results.routing_keys["s2"] == "superseded.Function"
    assert server_actions(sim, "sched-user") == ["Vibrate:1", "Vibrate:4"]


async def test_stop_previous_zero_overflow_is_dropped(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """stopPrevious 0 commands beyond LOVENSE_KEY_QUEUE drop the oldest waiting one."""
    async with Worker(worker_settings(sim, key_queue=2)):
        gate = sim.hold()
        await producer.publish(vibrate("d0", 1, stopPrevious=0))
        await gate.arrived(1)
        for n in (1, 2, 3):
            await producer.publish(vibrate(f"d{n}", n + 1, stopPrevious=0))
        await results.wait_for("d1")  # dropped for d3: d2 and d3 wait behind d0 now
        gate.release()
        done = [await results.wait_for(f"d{n}") for n in range(4)]
    assert [r.status for r in done] == ["ok", "dropped", "ok", "ok"]
    assert done[1].supersededBy == "d3"
    assert server_actions(sim, "sched-user") == ["Vibrate:1", "Vibrate:3", "Vibrate:4"]


async def test_ordered_commands_for_one_key_are_bounded_too(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """Queries waiting for one user beyond LOVENSE_KEY_QUEUE drop the oldest, in order."""

    def qr(ident: str) -> dict[str, object]:
        return {"command": "GetQrCode", "uid": "sched-user", "uname": "Pat", "id": ident}

    async with Worker(worker_settings(sim, key_queue=2)):
        gate = sim.hold()
        await producer.publish(qr("g0"))
        await gate.arrived(1)
        for n in (1, 2, 3):
            await producer.publish(qr(f"g{n}"))
        await results.wait_for("g1")  # dropped for g3: g2 and g3 wait behind g0 now
        gate.release()
        done = [await results.wait_for(f"g{n}") for n in range(4)]
    assert [r.status for r in done] == ["ok", "dropped", "ok", "ok"]
    assert done[1].supersededBy == "g3"
    assert "PatternV2 and queries" in (done[1].message or "")
    calls = [r for r in sim.requests if r.side == "server" and r.body.get("uid") == "sched-user"]
    assert len(calls) == 3


async def test_command_past_its_deadline_expires_unsent(
    sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """A command published longer ago than its TTL gets status expired and is never sent."""
    old = int(time.time() * 1000) - 5_000
    await producer.publish(vibrate("e1", 5, ttlMs=1_000),
                           headers={topology.PUBLISHED_MS_HEADER: old})
    result = await results.wait_for("e1")
    assert (result.status, result.via, result.message) == ("expired", None,
                                                           "not sent by its deadline")
    assert results.routing_keys["e1"] == "expired.Function"
    assert server_actions(sim, "sched-user") == []


async def test_stop_on_the_stop_lane_cancels_pending_and_lands_last(
    sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """A Stop on lovense.stop supersedes waiting work and reaches Lovense after the call in
    flight, so the toy ends stopped."""
    gate = sim.hold()
    await producer.publish(vibrate("p1", 7))
    await gate.arrived(1)
    await producer.publish(vibrate("p2", 9))
    await until(lambda: worker.runtime.scheduler.pending == 1, what="p2 waits behind p1")
    await producer.publish({"command": "Stop", "uid": "sched-user", "id": "stop-1",
                            "mode": "server"})
    await results.wait_for("p2")  # superseded: the Stop is in the scheduler
    assert gate.arrivals == 1  # the Stop waits for p1's answer; it is not sent beside it
    gate.release()
    done = [await results.wait_for(i) for i in ("p1", "p2", "stop-1")]
    assert [(r.status, r.supersededBy) for r in done] == [
        ("ok", None), ("superseded", "stop-1"), ("ok", None)]
    assert results.routing_keys["stop-1"] == "ok.Stop"
    assert server_actions(sim, "sched-user") == ["Vibrate:7", "Stop"]


async def test_stop_watermark_survives_a_restart(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """After a restart, a command published before an earlier Stop is still never sent."""
    stop_at = int(time.time() * 1000)
    async with Worker(worker_settings(sim)):
        await producer.publish({"command": "Stop", "uid": "restart-user", "id": "stop-r",
                                "mode": "server"}, headers={topology.PUBLISHED_MS_HEADER: stop_at})
        assert (await results.wait_for("stop-r")).status == "ok"
    async with Worker(worker_settings(sim)):
        await producer.publish(vibrate("before", 3, uid="restart-user"),
                               headers={topology.PUBLISHED_MS_HEADER: stop_at - 10})
        await producer.publish(vibrate("after", 4, uid="restart-user"),
                               headers={topology.PUBLISHED_MS_HEADER: stop_at + 10})
        before, after = await results.wait_for("before"), await results.wait_for("after")
    assert (before.status, before.supersededBy) == ("superseded", "stop-r")
    assert after.status == "ok"
    assert server_actions(sim, "restart-user") == ["Stop", "Vibrate:4"]


async def test_stop_sent_on_the_command_exchange_also_reaches_the_stop_log(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """A Stop published to lovense.commands is sent and recorded for every replica."""
    stop_at = int(time.time() * 1000)
    async with Worker(worker_settings(sim)):
        exchange_stop = {"command": "Function", "uid": "cmd-stop-user", "action": "Stop",
                         "timeSec": 0, "id": "stop-c", "mode": "server"}
        await producer.publish(exchange_stop, routing_key="cmd-stop-user",
                               headers={topology.PUBLISHED_MS_HEADER: stop_at},
                               exchange=topology.COMMANDS_EXCHANGE)
        assert (await results.wait_for("stop-c")).status == "ok"
    async with Worker(worker_settings(sim)):
        await producer.publish(vibrate("stale", 2, uid="cmd-stop-user"),
                               headers={topology.PUBLISHED_MS_HEADER: stop_at - 1})
        stale = await results.wait_for("stale")
    assert (stale.status, stale.supersededBy) == ("superseded", "stop-c")
