"""The harness every scenario runs in: its options, children and CPU meter (bench/README.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec

from bench import load
from bench.procs import READY_TIMEOUT_S, BenchError, Proc, broker_pid, cpu_meter, free_port, spawn

SHARDS: Final = 4
PREFETCH: Final = 256
COMMAND_PATH: Final = "/api/lan/v2/command"
_CLI: Final = (sys.executable, "-m", "worker")  # lovense-worker, from this virtualenv


@dataclass(frozen=True)
class Options:
    """What a scenario is asked to do (from the command line)."""

    #: The options of ``python -m bench`` (``--help``); None: the scenario's own.
    #: ``amqp_url`` is the one node the bench's own clients use; the workers get the whole
    #: ``--amqp-url`` list (``worker_amqp_url``, the same node when it is empty).
    amqp_url: str
    commands: int | None
    delays: tuple[int, ...] | None
    timeout_s: float | None
    log_dir: Path
    repeat: int | None = None
    worker_env: tuple[tuple[str, str], ...] = ()
    quick: bool = False
    rate: float | None = None
    worker_amqp_url: str = ""

    def size(self, full: int, quick: int) -> int:
        """Return the scenario's main size: ``--commands``, else ``quick`` or ``full``."""
        return self.commands or (quick if self.quick else full)

    def rounds_or(self, default: int) -> int:
        """Return ``--repeat`` if given, else 1 with ``--quick``, else the scenario's own."""
        return self.repeat if self.repeat is not None else (1 if self.quick else default)


@dataclass
class Outcome:
    """A scenario's figures for results.json (under ``key``), its table, and whether it passed."""

    key: str
    data: dict[str, Any]
    table: str
    ok: bool


Scenario = Callable[["Harness"], Awaitable[Outcome]]


class SimRequest(msgspec.Struct):
    """One request the simulator recorded (headers are not decoded)."""
    side: str
    path: str
    body: Any
    received_ms: int
    status: int


_requests: Final = msgspec.json.Decoder(list[SimRequest])


def server_calls(requests: Iterable[SimRequest]) -> list[tuple[int, SimRequest, list[str]]]:
    """Return (position in the log, request, its uids) of every server-API command call."""
    return [(index, r, r.body["uid"].split(",") if isinstance(r.body.get("uid"), str) else [])
            for index, r in enumerate(requests)
            if r.side == "server" and r.path == COMMAND_PATH and isinstance(r.body, dict)]


@dataclass
class Simulator:
    """A running ``lovense-worker simulate``: its process, server URL and token."""

    proc: Proc
    url: str
    token: str

    async def call(self, method: str, path: str, **kwargs: Any) -> bytes:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            async with session.request(method, f"{self.url}{path}", **kwargs) as response:
                response.raise_for_status()
                return await response.read()

    async def requests(self) -> list[SimRequest]:
        """Return every request the simulator recorded, in the order it handled them."""
        return _requests.decode(await self.call("GET", "/_sim/requests"))

    async def clear(self) -> None:
        """Make the simulator forget the requests it recorded."""
        await self.call("POST", "/_sim/clear", data=b"")


class Harness:
    """One scenario's options and children; every child is stopped when it ends."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.token = f"bench-{secrets.token_hex(8)}"
        self._children: list[Proc] = []

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for child in self._children[::-1]:  # newest first
            await self.stop(child)

    async def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start a child; its log is ``NN-name.log`` (numbered in start order) in the log dir."""
        number = len(list(self.opts.log_dir.glob("*.log"))) + 1
        child = await spawn(name, argv, self.opts.log_dir / f"{number:02d}-{name}.log", env)
        self._children.append(child)
        return child

    async def stop(self, child: Proc) -> int | None:
        """Stop one child now (shielded from cancellation); return its exit code."""
        if child in self._children:
            self._children.remove(child)
        return await asyncio.shield(child.stop())

    async def simulator(self, delay_ms: int, *, record: bool = False) -> Simulator:
        """Start a simulator answering after ``delay_ms`` (checked), recording requests with
        ``record``; purge the bench's queues."""
        child = await self.start(f"simulator-{delay_ms}ms", [
            *_CLI, "simulate", "--host", "127.0.0.1", "--server-port", "0", "--apps", "1",
            "--delay-ms", str(delay_ms), "--token", self.token,
            *([] if record else ["--no-record"]), "--quiet"])
        event = await child.ready_line("simulator_ready")
        sim = Simulator(child, event["serverUrl"], event["token"])
        state = json.loads(await sim.call("GET", "/_sim/state"))
        if (actual := state.get("faults", {}).get("delay_ms")) != delay_ms:
            raise BenchError(f"simulator: asked for --delay-ms {delay_ms}, its state says {actual}")
        await load.prepare(self.opts.amqp_url, SHARDS)
        return sim

    def worker_env(self, sim: Simulator | None, extra: dict[str, str] | None = None,
                   log_level: str = "warning") -> dict[str, str]:
        """Return a worker's environment: this bench's broker and simulator (else a closed
        port), 4 shards, JSON logs, then ``extra``, then ``--worker-env``; no other LOVENSE_*."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("LOVENSE_")}
        return inherited | {
            "LOVENSE_AMQP_URL": self.opts.worker_amqp_url or self.opts.amqp_url,
            "LOVENSE_API_BASE": sim.url if sim else "http://127.0.0.1:9",
            "LOVENSE_DEVELOPER_TOKEN": sim.token if sim else "bench-no-server",
            "LOVENSE_SHARDS": str(SHARDS), "LOVENSE_PREFETCH": str(PREFETCH),
            "LOVENSE_METRICS_PORT": str(free_port()), "LOVENSE_METRICS_HOST": "127.0.0.1",
            "LOVENSE_LOG_LEVEL": log_level, "LOVENSE_LOG_FORMAT": "json",
            **(extra or {}), **dict(self.opts.worker_env)}

    async def worker(self, name: str, env: dict[str, str], *, wait: bool = True,
                     ready_timeout: float = READY_TIMEOUT_S, poll_s: float = 0.1,
                     command: str = "run") -> Proc:
        """Start ``lovense-worker run`` (or ``command``: ``callbacks``); return once /readyz
        answers 200 (or at once)."""
        child = await self.start(name, [*_CLI, command], env)
        child.metrics_port = int(env["LOVENSE_METRICS_PORT"])
        if wait:
            try:
                await child.wait_ready(ready_timeout, poll_s)
            except BenchError:
                await self.stop(child)
                raise
        return child

    async def baseline(self, name: str, sim: Simulator) -> Proc:
        """Start the baseline consumer (``python -m bench.baseline``); return once it consumes."""
        child = await self.start(name, [
            sys.executable, "-m", "bench.baseline", "--amqp-url", self.opts.amqp_url,
            "--server-url", sim.url, "--token", sim.token, "--queue", load.BASELINE_QUEUE,
            "--prefetch", str(PREFETCH)])
        await child.ready_line("baseline_ready")
        return child

    @contextlib.asynccontextmanager
    async def measure(self, subject: Proc, label: str,
                      sim: Simulator) -> AsyncIterator[dict[str, float | None]]:
        """Meter CPU seconds of ``subject`` (as ``label``), the simulator, RabbitMQ and the rest
        (:func:`cpu_meter`) over the block, into the yielded dict."""
        stop = cpu_meter({label: subject.pid, "simulator": sim.proc.pid, "broker": broker_pid()})
        cpu: dict[str, float | None] = {}
        yield cpu
        cpu.update(stop())

