"""RabbitMQ goes away and comes back: the worker notices, says so, and consumes again by itself."""

from __future__ import annotations

import asyncio
import subprocess

import httpx

from tests.integration.support import AMQP_URL, free_port, until, worker_settings
from tests.integration.test_callback_endpoint import callback, endpoint_settings, post
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.endpoint import CallbackService
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


async def test_the_callback_endpoint_answers_503_while_rabbitmq_is_away(clean_broker: None) -> None:
    """With RabbitMQ stopped the callback URL answers 503 (the app posts again on its next
    heartbeat) and /readyz 503; once RabbitMQ is back it publishes again, by itself."""
    async with CallbackService(endpoint_settings()) as service:
        assert service.health is not None
        assert await service.forwarder.wait_connected(10)
        assert (await post(service, callback("away-1"))).status_code == 200
        try:
            await asyncio.to_thread(rabbitmqctl, "stop_app")
            await until_status(service.health.port, 503, 30)
            away = await post(service, callback("away-2"))
        finally:
            await asyncio.to_thread(rabbitmqctl, "start_app")
        await until_status(service.health.port, 200, 90)
        back = await post(service, callback("away-3"))
    assert away.status_code == 503
    assert "RabbitMQ" in away.json()["error"]
    assert back.status_code == 200
