"""Helpers shared by the integration tests: waiting on conditions, result capture, broker purge,
settings.

Tests wait on conditions, never on time: :func:`until` for every eventual assertion,
:meth:`ResultLog.wait_for` for a result, the simulator's ``hold()`` for a call in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import httpx
import msgspec
from aio_pika.abc import AbstractIncomingMessage

from worker.adapters.amqp.declare import declare
from worker.adapters.http.lovense import AiohttpSender, LovenseClient, Post, Sender
from worker.config import Secret, Settings
from worker.contract import topology
from worker.contract.messages import Result, result_decoder
from worker.simulator import SIMULATOR_TOKEN, Simulator

AMQP_URL = os.environ.get("LOVENSE_AMQP_URL", "amqp://guest:guest@localhost:5672/")
SHARDS = 4
#: How often :func:`until` looks again: short beside any timeout, long beside a loop turn.
POLL_S = 0.02

Check = Callable[[], bool] | Callable[[], Awaitable[bool]]


async def until(check: Check, timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``check()`` (plain or awaitable) is true; fail after ``timeout`` seconds."""
    async def holds() -> bool:
        value = check()
        return bool(await value if inspect.isawaitable(value) else value)

    try:
        async with asyncio.timeout(timeout):
            while not await holds():
                await asyncio.sleep(POLL_S)  # the condition's poll, not a wait on the system
    except TimeoutError:
        raise AssertionError(f"not true within {timeout} s: {what or check}") from None


class ResultLog:
    """Every result published to lovense.results while a test runs, by id."""

    def __init__(self) -> None:
        self.by_id: dict[str, Result] = {}
        self.routing_keys: dict[str, str] = {}
        self._changed = asyncio.Event()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            result = result_decoder.decode(message.body)
        except msgspec.ValidationError:
            return  # someone else's message on the shared broker (a benchmark's baseline)
        self.by_id[result.id] = result
        self.routing_keys[result.id] = message.routing_key or ""
        self._changed.set()

    async def wait_for(self, ident: str, timeout: float = 10.0) -> Result:
        """Return the result with this id, waiting up to ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while ident not in self.by_id:
                self._changed.clear()
                await self._changed.wait()
        return self.by_id[ident]


async def unanswered(results: ResultLog, idents: Iterable[str], timeout: float) -> list[str]:
    """Wait up to ``timeout`` seconds for a result to every id; return those still missing."""
    wanted = list(idents)
    try:
        async with asyncio.timeout(timeout):
            for ident in wanted:
                await results.wait_for(ident, timeout)
    except TimeoutError:
        pass
    return sorted(i for i in wanted if i not in results.by_id)


LogT = TypeVar("LogT", bound=ResultLog)


@contextlib.asynccontextmanager
async def capturing_results(log: LogT) -> AsyncIterator[LogT]:
    """Feed every result published to lovense.results into ``log`` while the block runs."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.RESULTS_EXCHANGE)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        await queue.consume(log.on_message, no_ack=True)
        yield log


async def purge_topology(url: str) -> None:
    """Empty the shard and dead-letter queues so no earlier test leaks into this one."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await declare(channel, SHARDS)
        for index in range(SHARDS):
            queue = await channel.get_queue(topology.shard_queue(index))
            await queue.purge()
        callbacks = await channel.declare_queue(topology.CALLBACKS_QUEUE, durable=True,
                                                arguments=topology.shard_arguments())
        await callbacks.bind(topology.CALLBACKS_EXCHANGE)  # as a worker binds it
        for name in (topology.DEAD_QUEUE, topology.STOP_QUEUE, topology.CALLBACKS_QUEUE):
            queue = await channel.get_queue(name)
            await queue.purge()


def free_port() -> int:
    """Return a TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_settings(sim: Simulator, **overrides: Any) -> Settings:
    """Return settings pointing a worker at the simulator and the local RabbitMQ."""
    values: dict[str, Any] = {
        "amqp_url": AMQP_URL,
        "developer_token": Secret(SIMULATOR_TOKEN),
        "api_base": sim.server_url,
        "lan_allow": (ipaddress.ip_network("127.0.0.1/32"),),
        "lan_ca_file": Path(sim.ca_file),
        "shards": SHARDS,
        "metrics_port": 0,
        "log_level": "warning",
        "log_format": "json",
    }
    values.update(overrides)
    return Settings(**values)


async def dead_letters(expected: int, timeout: float = 10.0) -> list[AbstractIncomingMessage]:
    """Return the messages in lovense.dead once there are at least ``expected`` of them."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.DEAD_QUEUE)
        taken: list[AbstractIncomingMessage] = []
        async with asyncio.timeout(timeout):
            while len(taken) < expected:
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.05)  # this condition's poll: the queue is empty now
                    continue
                taken.append(message)
        return taken


class Listener:
    """A TCP listener that counts the connections it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def start(self, host: str) -> None:
        self.server = await asyncio.start_server(self._accept, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


class RecordingSender:
    """The connect seam: every request the worker would dial passes here first."""

    def __init__(self, inner: Sender) -> None:
        self.inner = inner
        self.urls: list[str] = []

    async def __call__(self, post: Post) -> tuple[int, bytes]:
        self.urls.append(post.url)
        return await self.inner(post)

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


def recording_client(settings: Settings, sim: Simulator) -> tuple[LovenseClient, RecordingSender]:
    """Return a real Lovense client whose every request is recorded at the connect seam."""
    seam = RecordingSender(AiohttpSender(16, sim.ca_file))
    return LovenseClient(settings, send=seam), seam


class WorkerProcess:
    """A `lovense-worker run` process pointed at the simulator."""

    def __init__(self, sim: Simulator, **env: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ, "LOVENSE_AMQP_URL": AMQP_URL, "LOVENSE_API_BASE": sim.server_url,
            "LOVENSE_DEVELOPER_TOKEN": SIMULATOR_TOKEN, "LOVENSE_METRICS_PORT": str(self.port),
            "LOVENSE_METRICS_HOST": "127.0.0.1", "LOVENSE_LOG_FORMAT": "json",
            "LOVENSE_LOG_LEVEL": "warning", "LOVENSE_SERVER_MAX_RPS": "100000",
            "LOVENSE_SERVER_TIMEOUT_MS": "1000", **env,
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the process and wait until it is ready."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "run", env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        async with httpx.AsyncClient() as client, asyncio.timeout(60):
            while True:
                try:
                    answer = await client.get(f"http://127.0.0.1:{self.port}/readyz")
                    if answer.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)  # this condition's poll: /readyz is not 200 yet

    async def metric(self, name: str) -> float:
        """Return the sum of a metric's samples on this process's /metrics."""
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{self.port}/metrics")).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name))

    async def signal(self, sig: signal.Signals, wait: float = 40.0) -> int | None:
        """Send a signal and return the exit code once the process ends."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), wait)


class ResultRecorder(ResultLog):
    """A ResultLog that also keeps each result's AMQP ``message_id`` and every result in order."""

    def __init__(self) -> None:
        super().__init__()
        self.message_ids: dict[str, str | None] = {}
        self.history: list[Result] = []

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            result = result_decoder.decode(message.body)
        except msgspec.ValidationError:
            return
        self.history.append(result)
        self.message_ids[result.id] = message.message_id
        await super().on_message(message)


async def ready_messages(names: list[str]) -> dict[str, int]:
    """Return how many messages wait in each queue (a closed consumer's unacked ones are back)."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        counts: dict[str, int] = {}
        for name in names:
            queue = await channel.declare_queue(name, passive=True)
            result = queue.declaration_result
            counts[name] = int(result.message_count or 0)
        return counts


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True,
                          timeout=120).stdout


def close_worker_connections() -> int:
    """Close, from the 5672 broker, every connection a worker opened; return how many."""
    listing = _rabbitmqctl("list_connections", "pid", "client_properties",
                          "--no-table-headers", "-q")
    names = [line.split("\t", 1)[0] for line in listing.splitlines()
             if "lovense-worker" in line]
    closed = 0
    for name in names:
        # A connection may already be gone (or reconnecting) between list and close.
        done = subprocess.run(["rabbitmqctl", "close_connection", name, "fault suite"],
                              capture_output=True, timeout=60)
        closed += done.returncode == 0
    return closed
