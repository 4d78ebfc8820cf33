"""A memory alarm on the local cluster (never the system node on 5672): the worker stops
taking work while it cannot publish, still sends a Stop it receives, says so on /readyz and
lovense_worker_broker_blocked, loses and doubles nothing, and resumes by itself."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import aio_pika
import httpx
import msgspec
import pytest
from aio_pika.abc import AbstractIncomingMessage

from tests.cluster.support import NODES, SHARDS, Cluster, listen_to_results
from tests.integration.support import WorkerProcess
from worker.adapters.amqp.producer import Producer
from worker.contract.messages import Result, result_decoder
from worker.simulator import Simulator

pytestmark = pytest.mark.timeout(300)

COMMANDS = 12
#: The simulated Lovense answers this late, so commands are in flight when the alarm rises.
DELAY_MS = 4000


async def _until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what}")
        await asyncio.sleep(0.2)  # this condition's poll


async def _readyz(worker: WorkerProcess) -> tuple[int, dict[str, str]]:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{worker.port}/readyz")
    body: dict[str, str] = answer.json()
    return answer.status_code, body


def _alarm(cluster: Cluster, watermark: str) -> None:
    for n in NODES:
        cluster.ctl(n, "set_vm_memory_high_watermark", watermark)


async def test_memory_alarm_pauses_and_resumes(cluster: Cluster, sim: Simulator) -> None:
    answered: list[Result] = []

    async def on_result(message: AbstractIncomingMessage) -> None:
        try:
            answered.append(result_decoder.decode(message.body))
        except msgspec.ValidationError:
            pass  # not a result of ours

    run = uuid.uuid4().hex[:8]
    idents = [f"alarm-{run}-{i}" for i in range(COMMANDS)]
    stop_uid, stop_id = f"alarm-stop-{run}", f"alarm-{run}-stop"
    # The server timeout outlasts the simulator's delay: no retry muddles the call count.
    worker = WorkerProcess(sim, LOVENSE_AMQP_URL=cluster.url(2), LOVENSE_SHARDS=str(SHARDS),
                           LOVENSE_SERVER_TIMEOUT_MS=str(DELAY_MS * 3))
    await worker.start()
    try:
        async with await aio_pika.connect(cluster.url(1)) as connection:
            await listen_to_results(connection, on_result)

            sim.set_faults(delay_ms=DELAY_MS)
            async with Producer(cluster.url(3)) as producer:
                for i, ident in enumerate(idents):
                    await producer.publish({"command": "Function", "uid": f"alarm-u{i}",
                                            "id": ident, "action": "Vibrate:5", "timeSec": 10,
                                            "mode": "server"})
                # Received before the alarm, sent to Lovense while its result cannot go out.
                await producer.publish({"command": "Stop", "uid": stop_uid, "id": stop_id,
                                        "mode": "server"})
            try:
                _alarm(cluster, "0.0001")

                async def blocked() -> bool:
                    return await worker.metric("lovense_worker_broker_blocked") == 1
                await _until(blocked, 60, "the worker's connection is blocked")
                status, body = await _readyz(worker)
                assert status == 503, body
                assert "blocked" in body.get("reason", ""), body
                assert "memory" in body["reason"] or "alarm" in body["reason"], body
                finished = len(answered)

                async def stop_sent() -> bool:
                    return any(r.body.get("uid") == stop_uid for r in sim.requests)
                await _until(stop_sent, 60, "the Stop reached the simulated Lovense")
                assert await worker.metric("lovense_worker_broker_blocked") == 1
                assert len(answered) == finished, "a result went out while blocked"
                assert stop_id not in {r.id for r in answered}
                assert (await _readyz(worker))[0] == 503
            finally:
                _alarm(cluster, "0.4")

            async def unblocked() -> bool:
                return await worker.metric("lovense_worker_broker_blocked") == 0
            await _until(unblocked, 60, "the worker is unblocked")

            async def all_answered() -> bool:
                return {r.id for r in answered} >= {*idents, stop_id}
            await _until(all_answered, 90, "every command and the Stop answered")
            await asyncio.sleep(1)  # room for a doubled answer to show
            assert (await _readyz(worker))[0] == 200
        ids = [r.id for r in answered if r.id in {*idents, stop_id}]
        assert sorted(ids) == sorted([*idents, stop_id]), "lost or doubled"
        calls = [uid for r in sim.requests for uid in str(r.body.get("uid", "")).split(",")
                 if uid.startswith("alarm-u")]
        assert sorted(calls) == sorted(f"alarm-u{i}" for i in range(COMMANDS))
    finally:
        sim.set_faults()
        code = await worker.signal(signal.SIGTERM) if worker.process is not None else None
    assert code == 0, "the worker did not stop cleanly on SIGTERM"
