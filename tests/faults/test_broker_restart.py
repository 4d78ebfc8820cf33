"""RabbitMQ goes away and comes back: the worker notices, says so, and consumes again by itself."""

from __future__ import annotations

import asyncio
import subprocess

import httpx

from tests.integration.support import AMQP_URL, free_port, until, worker_settings
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.simulator import Simulator


async def readyz(port: int) -> int:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code


async def until_status(port: int, status: int, timeout: float) -> None:
    """Wait until the worker's /readyz answers ``status``."""
    async def answers() -> bool:
        return await readyz(port) == status

    await until(answers, timeout, what=f"/readyz answers {status}")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def test_worker_consumes_again_after_rabbitmq_restarts(
    sim: Simulator, clean_broker: None
) -> None:
    """After RabbitMQ stops and starts, /readyz goes 503 then 200 and commands flow again,
    without restarting the worker."""
    port = free_port()
    async with Worker(worker_settings(sim, metrics_port=port, metrics_host="127.0.0.1")):
        async with Producer(AMQP_URL) as producer:
            before = await producer.call({"command": "Stop", "uid": "restart-1",
                                          "mode": "server"})
        assert before.status == "ok"
        try:
            await asyncio.to_thread(rabbitmqctl, "stop_app")
            await until_status(port, 503, 30)
        finally:
            await asyncio.to_thread(rabbitmqctl, "start_app")
        await until_status(port, 200, 90)
        async with Producer(AMQP_URL) as producer:
            after = await producer.call({"command": "Function", "uid": "restart-1",
                                         "action": "Vibrate:3", "timeSec": 2,
                                         "mode": "server"}, timeout=30)
    assert (after.status, after.via) == ("ok", "server")
