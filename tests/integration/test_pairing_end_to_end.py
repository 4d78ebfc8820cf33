"""Pairing the way a user pairs, every hop over a real socket.

GetQrCode through a worker, a scan in the simulator (strict about uids, as
Lovense is), the app's callback POSTed to the callback endpoint, published to
RabbitMQ, validated by one replica and followed into the registry of both; a
LAN GetToys that works; heartbeats that refresh toy status without a second
``user.paired``; a toy switched off (``user.toys``); Forget (``user.forgotten``);
GetUser before, during and after. Then ``run --simulator`` as ``make run``
starts it: ``sim-user-1`` is paired before the banner.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.integration.support import AMQP_URL, free_port, until, worker_settings
from tests.integration.test_user_events import EventLog, listening
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.config import Secret, Settings
from worker.contract.users import UserForgotten, UserPaired, UserToys
from worker.endpoint import CallbackService
from worker.simulator import SIMULATOR_TOKEN, AppSpec, Simulator

SECRET = Secret("end-to-end-secret")
NORA = "f082c00246fa"


@pytest.fixture
async def events(clean_broker: None) -> AsyncIterator[EventLog]:
    async with listening() as log:
        yield log


async def test_a_user_pairs_through_the_callback_url_and_every_replica_learns_it(
    events: EventLog,
) -> None:
    uid = f"e2e-{uuid.uuid4().hex[:10]}"  # the callback log outlives tests: a new user
    async with Simulator(token=SIMULATOR_TOKEN, apps=[AppSpec(uid=uid)], strict_uids=True,
                         heartbeat_s=0.3) as sim:
        settings = [worker_settings(sim, utoken_secret=SECRET) for _ in (0, 1)]
        endpoint_settings = Settings(
            amqp_url=AMQP_URL, utoken_secret=SECRET, callback_host="127.0.0.1",
            callback_port=0, metrics_port=0, log_level="warning", log_format="json")
        async with (Worker(settings[0]) as one, Worker(settings[1]) as two,
                    CallbackService(endpoint_settings) as endpoint,
                    Producer(AMQP_URL) as producer):
            assert await endpoint.forwarder.wait_connected(10)
            sim.callback_url = endpoint.url

            before = await producer.call({"command": "GetUser", "uid": uid})
            assert (before.status, before.data) == ("ok", {"paired": False})
            # Lovense does not know the user yet: the server route says so (503).
            unknown = await producer.call({"command": "Function", "uid": uid,
                                           "action": "Vibrate:3", "timeSec": 2,
                                           "mode": "server"})
            assert (unknown.status, unknown.code) == ("failed", 503)

            qr = await producer.call({"command": "GetQrCode", "uid": uid, "uname": "Pat"})
            assert qr.status == "ok" and isinstance(qr.data, dict)
            posted = await sim.scan(qr.data["code"])
            assert posted["uid"] == uid and posted["httpsPort"] == str(sim.app(uid).https_port)
            assert sim.callbacks[-1].status == 200  # the endpoint answered after its confirm

            await until(lambda: one.registry.get(uid) is not None
                        and two.registry.get(uid) is not None, 10, "both replicas paired")
            toys = await producer.call({"command": "GetToys", "uid": uid, "mode": "lan"})
            assert (toys.status, toys.via) == ("ok", "lan")
            assert isinstance(toys.data, dict) and NORA in toys.data["toys"]
            served = await producer.call({"command": "Function", "uid": uid,
                                          "action": "Vibrate:3", "timeSec": 2,
                                          "mode": "server"})
            assert (served.status, served.code) == ("ok", 200)

            # Heartbeats keep coming; none of them pairs the user again.
            beats = len(sim.callbacks)
            await until(lambda: len(sim.callbacks) >= beats + 3, 10, "three more heartbeats")
            sim.switch_toy(uid, NORA, on=False)
            found = await events.wait(uid, 2)
            paired = [e for e in found if isinstance(e, UserPaired)]
            assert len(paired) == 1 and paired[0].reason == "first-callback"
            change = next(e for e in found if isinstance(e, UserToys))
            assert [(c.toy, c.change) for c in change.changes] == [(NORA, "disconnected")]
            assert all(p.status == 200 for p in sim.callbacks)

            during = await producer.call({"command": "GetUser", "uid": uid})
            assert isinstance(during.data, dict)
            assert (during.status, during.via, during.code, during.attempts) == (
                "ok", None, None, 0)
            assert during.data["paired"] is True and during.data["route"] == "lan"
            statuses = {t["id"]: t["status"] for t in during.data["toys"]}
            assert statuses[NORA] == "disconnected"

            gone = await producer.call({"command": "Forget", "uid": uid})
            assert gone.status == "ok"
            forgotten = await events.wait(uid, 3)
            assert isinstance(forgotten[2], UserForgotten)
            await until(lambda: one.registry.get(uid) is None and two.registry.get(uid) is None,
                        10, "both replicas forgot the user")
            after = await producer.call({"command": "GetUser", "uid": uid})
            assert (after.status, after.data) == ("ok", {"paired": False})
            # One event per change, though two replicas followed every callback.
            assert [e.kind for e in events.of(uid)] == [
                "user.paired", "user.toys", "user.forgotten"]


async def test_make_run_pairs_sim_user_1_before_its_banner(clean_broker: None) -> None:
    """``run --simulator``: the banner names the callback URL and a paired sim-user-1, and a
    LAN GetToys for it works at once."""
    port = free_port()
    env = {**os.environ, "LOVENSE_AMQP_URL": AMQP_URL, "LOVENSE_CALLBACK_PORT": str(port),
           "LOVENSE_METRICS_PORT": "0", "LOVENSE_LOG_FORMAT": "json",
           "LOVENSE_DEVELOPER_TOKEN": "", "LOVENSE_UTOKEN_SECRET": ""}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "run", "--simulator", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    banner: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any("=====" in line for line in banner[1:]):
                line = (await process.stderr.readline()).decode()
                assert line, f"run --simulator exited: {''.join(banner[-20:])}"
                if banner or "=====" in line:
                    banner.append(line)
        text = "".join(banner)
        assert f"callback URL   http://127.0.0.1:{port}/lovense/callback" in text
        assert "paired         sim-user-1" in text
        async with Producer(AMQP_URL) as producer:
            toys = await producer.call({"command": "GetToys", "uid": "sim-user-1",
                                        "mode": "lan"}, timeout=15)
        assert (toys.status, toys.via) == ("ok", "lan")
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
    assert process.returncode == 0
