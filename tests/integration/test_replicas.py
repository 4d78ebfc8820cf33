"""Three worker processes share the shards: order and limits hold, load spreads, and a killed
replica's shards are taken over within seconds."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.support import AMQP_URL, ResultLog, free_port
from worker.producer import Producer
from worker.simulator import SIMULATOR_TOKEN, Simulator

REPLICAS = 3
USERS = 24
ROUND = 5


class Replica:
    """One `lovense-worker run` process."""

    def __init__(self, ordinal: int, sim: Simulator) -> None:
        self.ordinal = ordinal
        self.port = free_port()
        self.env = {
            **os.environ, "LOVENSE_AMQP_URL": AMQP_URL, "LOVENSE_API_BASE": sim.server_url,
            "LOVENSE_DEVELOPER_TOKEN": SIMULATOR_TOKEN, "LOVENSE_REPLICAS": str(REPLICAS),
            "LOVENSE_REPLICA": str(ordinal), "LOVENSE_METRICS_PORT": str(self.port),
            "LOVENSE_METRICS_HOST": "127.0.0.1", "LOVENSE_LOG_FORMAT": "json",
            "LOVENSE_LOG_LEVEL": "warning", "LOVENSE_BATCH_WINDOW_MS": "0",
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "run", env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    async def metric(self, name: str) -> float:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{self.port}/metrics")).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name))

    async def ready(self) -> None:
        async with httpx.AsyncClient() as client, asyncio.timeout(30):
            while True:
                try:
                    answer = await client.get(f"http://127.0.0.1:{self.port}/readyz")
                    if answer.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)
            await asyncio.wait_for(self.process.wait(), 30)


@pytest.fixture
async def replicas(sim: Simulator, clean_broker: None) -> AsyncIterator[list[Replica]]:
    started = [Replica(n, sim) for n in range(REPLICAS)]
    try:
        for replica in started:
            await replica.start()
        await asyncio.gather(*(r.ready() for r in started))
        await asyncio.sleep(2.5)  # presence round: stand-ins hand shards back to owners
        yield started
    finally:
        for replica in started:
            await replica.stop()


async def run_round(producer: Producer, results: ResultLog, tag: str) -> list[str]:
    idents = []
    for step in range(ROUND):
        for user in range(USERS):
            ident = f"{tag}-{user}-{step}"
            idents.append(ident)
            await producer.publish({
                "command": "Function", "uid": f"replica-user-{user}", "id": ident,
                "action": f"Vibrate:{step + 1}", "timeSec": 5, "stopPrevious": 0,
                "mode": "server"})
    done = await asyncio.gather(*(results.wait_for(i, 30) for i in idents))
    assert {r.status for r in done} == {"ok"}
    return idents


async def test_three_replicas_keep_order_and_limits_spread_and_take_over(
    sim: Simulator, replicas: list[Replica], producer: Producer, results: ResultLog
) -> None:
    """Per uid, calls keep publish order and the rate limit; every replica works; after one is
    killed the others take its shards and every command still gets its result."""
    await run_round(producer, results, "r1")
    handled = [await r.metric("lovense_worker_messages_total") for r in replicas]
    assert all(count > 0 for count in handled), handled
    assert sum(handled) == USERS * ROUND

    by_user: dict[str, list[tuple[int, str]]] = {}
    for request in sim.requests:
        by_user.setdefault(request.body["uid"], []).append(
            (request.received_ms, request.body["action"]))
    for uid, calls in by_user.items():
        assert [a for _, a in calls] == [f"Vibrate:{n}" for n in range(1, ROUND + 1)], uid
        times = [t for t, _ in calls]
        for i, start in enumerate(times):
            for k in range(i, len(times)):
                # Default server limit: burst 4, 2 per second. Times are taken where the
                # calls arrive, so allow 50 ms of send-to-arrival jitter (a first call
                # also opens its connection).
                assert k - i + 1 <= 4 + 2 * (times[k] - start + 50) / 1000, uid

    await replicas[1].stop(signal.SIGKILL)
    sim.clear()
    await run_round(producer, results, "r2")
    survivors = [await r.metric("lovense_worker_messages_total") for r in (replicas[0],
                                                                            replicas[2])]
    assert sum(survivors) - sum(handled[i] for i in (0, 2)) == USERS * ROUND
