"""Pairing and the LAN registry through the real broker and the simulator."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import aio_pika
import msgspec

from tests.integration.support import AMQP_URL, ResultLog, WorkerProcess, until, worker_settings
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.config import Secret
from worker.contract import topology
from worker.core.bodies import utoken_for
from worker.simulator import SIMULATOR_TOKEN, AppSpec, Simulator

SECRET = Secret("pairing-secret")


async def post_callback(body: dict[str, Any] | bytes) -> None:
    """Forward a callback body to lovense.callbacks, as a platform's callback handler does."""
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.CALLBACKS_EXCHANGE)
        await exchange.publish(aio_pika.Message(raw), routing_key="")


async def pair(sim: Simulator, producer: Producer, uid: str) -> dict[str, Any]:
    """Run GetQrCode for uid and return the callback the app posts after the scan."""
    result = await producer.call({"command": "GetQrCode", "uid": uid, "uname": "Pat"})
    assert result.status == "ok", result.message
    body = sim.callback_body(uid)
    await post_callback(body)
    return body


async def test_qr_scan_callback_then_auto_goes_over_the_lan(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """GetQrCode, the app's callback with the utoken it was given, then mode auto uses the LAN."""
    app = sim.apps[0]
    async with Worker(worker_settings(sim, utoken_secret=SECRET)) as worker:
        body = await pair(sim, producer, app.uid)
        assert body["utoken"] == sim.qr_requests[app.uid]["utoken"] != ""
        await until(lambda: worker.registry.get(app.uid) is not None)
        sim.clear()
        result = await producer.call({"command": "Function", "uid": app.uid,
                                      "action": "Vibrate:8", "timeSec": 5})
    assert (result.status, result.via, result.fallback) == ("ok", "lan", False)
    [seen] = sim.requests
    assert (seen.side, seen.app, seen.body["action"]) == ("lan", app.uid, "Vibrate:8")


async def test_endpoint_survives_restart_and_reaches_a_second_worker(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """A restarted worker, and another started later, route the first command over the LAN."""
    app = sim.apps[0]
    settings = worker_settings(sim, utoken_secret=SECRET)
    async with Worker(settings) as worker:
        await pair(sim, producer, app.uid)
        await until(lambda: worker.registry.get(app.uid) is not None)
    async with Worker(settings) as restarted:
        assert restarted.registry.get(app.uid) is not None
        sim.clear()
        first = await producer.call({"command": "Preset", "uid": app.uid, "name": "wave",
                                     "timeSec": 3})
    assert (first.status, first.via) == ("ok", "lan")
    async with Worker(settings) as second:
        assert second.registry.get(app.uid) is not None
        assert second.registry_log is not None
        await second.registry_log.write_snapshot()
        written = second.registry_log.written_snapshot
    async with Worker(settings) as from_snapshot:
        assert from_snapshot.registry.get(app.uid) is not None
        assert from_snapshot.registry_log is not None
        assert from_snapshot.registry_log.loaded_snapshot == written


async def test_a_snapshot_older_than_the_lookback_is_still_found(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """Start-up reads two intervals back first; with nothing there it reads the whole stream."""
    app = sim.apps[0]
    settings = worker_settings(sim, utoken_secret=SECRET, snapshot_interval_s=1)
    async with Worker(settings) as worker:
        await pair(sim, producer, app.uid)
        await until(lambda: worker.registry.get(app.uid) is not None)
        assert worker.registry_log is not None
        await worker.registry_log.close()  # no more snapshots of its own
        await worker.registry_log.write_snapshot()
        written = worker.registry_log.written_snapshot
    # Deliberate timing: the snapshot's age on the broker's clock is what this test is about;
    # 2.5 s makes it older than the 2 intervals of 1 s that start-up reads first.
    await asyncio.sleep(2.5)
    async with Worker(settings) as later:
        assert later.registry_log is not None
        assert later.registry_log.loaded_snapshot == written
        assert later.registry.get(app.uid) is not None


async def test_lan_app_going_away_falls_back_and_the_circuit_opens_and_closes(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """With the app gone, commands fall back to the server; the circuit opens, then closes."""
    app = sim.apps[0]
    settings = worker_settings(sim, utoken_secret=SECRET, breaker_failures=2,
                               breaker_cooldown_s=1)
    async with Worker(settings) as worker:
        await pair(sim, producer, app.uid)
        await until(lambda: worker.registry.get(app.uid) is not None)
        await app.go_offline()
        sim.clear()
        fell = [await producer.call({"command": "Function", "uid": app.uid,
                                     "action": f"Vibrate:{n}", "timeSec": 2}) for n in (1, 2, 3)]
        tried_lan = [r for r in sim.requests if r.side == "lan"]
        open_gauge = worker.metrics.circuits_open.labels("lan")._value.get()
        await app.go_online()
        # Deliberate timing: the circuit's cool-down (1 s on the monotonic clock, from its
        # opening above) is what this test is about; after it one trial call may go.
        await asyncio.sleep(1.1)
        sim.clear()
        back = await producer.call({"command": "Function", "uid": app.uid,
                                    "action": "Vibrate:4", "timeSec": 2})
        closed_gauge = worker.metrics.circuits_open.labels("lan")._value.get()
    assert [(r.status, r.via, r.fallback) for r in fell] == [("ok", "server", True)] * 3
    assert tried_lan == []  # refused connections are never recorded by the app
    assert (open_gauge, closed_gauge) == (1, 0)
    assert (back.status, back.via, back.fallback) == ("ok", "lan", False)


async def test_forget_removes_a_user_everywhere_and_after_restart(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """Forget erases the endpoint on every replica, and replays after a restart keep it gone."""
    app = sim.apps[0]
    settings = worker_settings(sim, utoken_secret=SECRET)
    async with Worker(settings) as one, Worker(settings) as two:
        await pair(sim, producer, app.uid)
        await until(lambda: two.registry.get(app.uid) is not None
                    and one.registry.get(app.uid) is not None)
        forgotten = await producer.call({"command": "Forget", "uid": app.uid})
        await until(lambda: app.uid not in one.registry and app.uid not in two.registry)
    assert forgotten.status == "ok"
    async with Worker(settings) as restarted:
        assert app.uid not in restarted.registry
        result = await producer.call({"command": "Function", "uid": app.uid,
                                      "action": "Vibrate:3", "timeSec": 2})
    assert result.via == "server"


async def test_toy_that_cannot_do_it_is_refused(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """Rotate to the paired Max is invalid, naming what the Max can do."""
    app = sim.apps[0]
    async with Worker(worker_settings(sim, utoken_secret=SECRET)) as worker:
        await pair(sim, producer, app.uid)
        await until(lambda: worker.registry.get(app.uid) is not None)
        result = await producer.call({"command": "Function", "uid": app.uid,
                                      "toy": "ff922f7fd345", "action": "Rotate:5",
                                      "timeSec": 2})
    assert (result.status, result.message) == (
        "invalid", "toy: Max ff922f7fd345 cannot Rotate; it can Pump, Vibrate")


async def test_endpoint_survives_sigkill_across_processes(
    producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """A worker process killed with SIGKILL and restarted routes its first command over the
    LAN to the endpoint learned before; a process started later knows it too."""
    # A uid of its own: the log keeps earlier runs' users, so the registry's size says
    # when this one was added.
    async with Simulator(token=SIMULATOR_TOKEN,
                         apps=[AppSpec(uid=f"sigkill-{uuid.uuid4().hex[:8]}")]) as sim:
        await _endpoint_survives_sigkill(sim, producer)


async def _endpoint_survives_sigkill(sim: Simulator, producer: Producer) -> None:
    app = sim.apps[0]
    env = {"LOVENSE_UTOKEN_SECRET": SECRET.reveal(), "LOVENSE_LAN_ALLOW": "127.0.0.1/32",
           "LOVENSE_LAN_CA_FILE": sim.ca_file}
    first = WorkerProcess(sim, **env)
    await first.start()
    # Earlier tests' users are in the log too: wait for this one to be added to them.
    known_before = await first.metric("lovense_worker_registry_users")
    await pair(sim, producer, app.uid)

    async def added() -> bool:
        return await first.metric("lovense_worker_registry_users") > known_before

    await until(added, what=f"{app.uid} added to the registry")
    await first.signal(signal.SIGKILL)
    restarted = WorkerProcess(sim, **env)
    await restarted.start()
    later: WorkerProcess | None = None
    try:
        sim.clear()
        result = await producer.call({"command": "Function", "uid": app.uid,
                                      "action": "Vibrate:6", "timeSec": 3}, timeout=15)
        assert (result.status, result.via) == ("ok", "lan")
        later = WorkerProcess(sim, **env)
        await later.start()
        assert (await later.metric("lovense_worker_registry_users")
                == await restarted.metric("lovense_worker_registry_users"))
        await restarted.signal(signal.SIGTERM)  # the later process takes every shard
        second = await producer.call({"command": "Preset", "uid": app.uid, "name": "pulse",
                                      "timeSec": 3}, timeout=15)
        assert (second.status, second.via) == ("ok", "lan")
    finally:
        await restarted.signal(signal.SIGTERM)
        if later is not None:
            await later.signal(signal.SIGTERM)
    assert [r.side for r in sim.requests] == ["lan", "lan"]


async def test_a_log_longer_than_the_prefetch_window_replays_in_full(
    sim: Simulator, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """2,500 callbacks (more than the follower's window of 2,000) all reach a new worker.

    The follower acks a stream only every quarter window: this shows the credit keeps
    flowing through a replay and then while it follows live.
    """
    app = sim.apps[0]
    template = sim.callback_body(app.uid)
    settings = worker_settings(sim, utoken_secret=SECRET)
    tag = uuid.uuid4().hex[:8]
    uids = [f"bulk-{tag}-{n}" for n in range(2_500)]

    def bodies(chunk: list[str]) -> list[bytes]:
        return [msgspec.json.encode({**template, "uid": uid,
                                     "utoken": utoken_for(uid, SECRET.reveal())})
                for uid in chunk]

    async def append(chunk: list[str]) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await asyncio.gather(*(
                channel.default_exchange.publish(aio_pika.Message(body),
                                                 routing_key=topology.CALLBACKS_LOG)
                for body in bodies(chunk)))

    await append(uids[:2_100])
    async with Worker(settings) as worker:
        assert all(uid in worker.registry for uid in uids[:2_100])  # replayed before ready
        await append(uids[2_100:])  # followed live
        await until(lambda: all(uid in worker.registry for uid in uids))
