"""The harness every scenario runs in: its options, its children, its measurements.

A scenario is ``async def run(h: Harness) -> Outcome``, registered in
``bench.__main__``. Its :class:`Harness` starts the simulator, the worker(s) and
the baseline, meters their CPU (:meth:`Harness.measure`, with py-spy under
``--profile``), and stops every child when the scenario ends, on errors and on
Ctrl-C alike. Scenarios read the worker through its ``/metrics`` and ``/proc``,
the simulator through ``GET /_sim/requests`` (``record=True``), never through
the worker's internals; what is left to them is what they publish and analyse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp
import msgspec

from bench import load, profile
from bench.procs import READY_TIMEOUT_S, BenchError, CpuMeter, Proc, broker_pid, free_port, spawn

SHARDS: Final = 4
PREFETCH: Final = 256
COMMAND_PATH: Final = "/api/lan/v2/command"


@dataclass(frozen=True)
class Options:
    """What a scenario is asked to do (from the command line)."""

    amqp_url: str
    #: ``--commands``: the scenario's main size (commands, uids, backlog, users); None = its own.
    commands: int | None
    #: ``--delays``: simulator delays in ms; None = the scenario's own.
    delays: tuple[int, ...] | None
    #: ``--timeout``: seconds to wait for one run's results; None = the scenario's own.
    timeout_s: float | None
    log_dir: Path
    profile: bool = False
    #: ``--repeat``: rounds per delay; None = the scenario's own.
    repeat: int | None = None
    #: Extra LOVENSE_* variables for the worker (``--worker-env``), e.g. batching off.
    worker_env: tuple[tuple[str, str], ...] = ()
    quick: bool = False
    #: ``--rate``: flood's publish rate (commands/s); None = its own (1,000).
    rate: float | None = None
    #: ``--gc-stats``: run workers under ``python -m bench.gcstats`` (collector timed).
    gc_stats: bool = False

    def size(self, full: int, quick: int) -> int:
        """Return the scenario's main size: ``--commands``, else ``quick`` or ``full``."""
        return self.commands or (quick if self.quick else full)

    def rounds_or(self, default: int) -> int:
        """Return ``--repeat`` if given, else 1 with ``--quick``, else the scenario's own."""
        return self.repeat if self.repeat is not None else (1 if self.quick else default)

    def delays_or(self, default: tuple[int, ...]) -> tuple[int, ...]:
        return self.delays or default

    def timeout_or(self, default: float) -> float:
        return self.timeout_s or default


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


@dataclass
class Measure:
    """What :meth:`Harness.measure` saw: CPU seconds per process over the block (plus the
    bench's, ``others`` and ``machine_busy_share``) and, with ``--profile``, the subject's
    profile."""

    cpu: dict[str, float | None] = field(default_factory=dict)
    profile: dict[str, Any] | None = None


class Harness:
    """One scenario's options and children; every child is stopped when it ends."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.token = f"bench-{secrets.token_hex(8)}"
        self._children: list[Proc] = []
        self._spies: dict[str, Proc] = {}

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        for child in self._children[::-1]:  # newest first
            await self.stop(child)

    async def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start a child; its log is ``NN-name.log`` (numbered in start order) in the log dir."""
        number = len(list(self.opts.log_dir.glob("*.log"))) + 1
        child = await spawn(name, argv, self.opts.log_dir / f"{number:02d}-{name}.log", env)
        self._children.append(child)
        return child

    async def stop(self, child: Proc, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Stop one child now (shielded from cancellation); return its exit code."""
        if child in self._children:
            self._children.remove(child)
        return await asyncio.shield(child.stop(sig=sig))

    async def simulator(self, delay_ms: int, *, record: bool = False) -> Simulator:
        """Start a simulator answering after ``delay_ms`` (checked); purge the bench's queues.

        With ``record`` it keeps every request (``GET /_sim/requests`` lists them with
        ``received_ms``); without, it keeps nothing (long runs).
        """
        child = await self.start(f"simulator-{delay_ms}ms", [
            *_cli(), "simulate", "--host", "127.0.0.1", "--server-port", "0", "--apps", "1",
            "--delay-ms", str(delay_ms), "--token", self.token,
            *([] if record else ["--no-record"]), "--quiet"])
        event = await child.ready_line()
        if event.get("event") != "simulator_ready" or "serverUrl" not in event:
            raise BenchError(f"simulator: unexpected ready line {event!r}")
        sim = Simulator(child, event["serverUrl"], event["token"])
        state = json.loads(await sim.call("GET", "/_sim/state"))
        if (actual := state.get("faults", {}).get("delay_ms")) != delay_ms:
            raise BenchError(f"simulator: asked for --delay-ms {delay_ms}, its state says {actual}")
        await load.prepare(self.opts.amqp_url, SHARDS)
        return sim

    def worker_env(self, sim: Simulator | None, extra: dict[str, str] | None = None,
                   log_level: str = "warning") -> dict[str, str]:
        """Return a worker's environment: this bench's broker and simulator, 4 shards, JSON logs.

        ``extra`` are the scenario's own settings; ``--worker-env`` wins over them.
        Without a simulator the server API points at a closed port. No other LOVENSE_*
        variable of the bench's own environment gets through.
        """
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("LOVENSE_")}
        return inherited | {
            "LOVENSE_AMQP_URL": self.opts.amqp_url,
            "LOVENSE_API_BASE": sim.url if sim else "http://127.0.0.1:9",
            "LOVENSE_DEVELOPER_TOKEN": sim.token if sim else "bench-no-server",
            "LOVENSE_SHARDS": str(SHARDS), "LOVENSE_PREFETCH": str(PREFETCH),
            "LOVENSE_METRICS_PORT": str(free_port()), "LOVENSE_METRICS_HOST": "127.0.0.1",
            "LOVENSE_LOG_LEVEL": log_level, "LOVENSE_LOG_FORMAT": "json",
            **(extra or {}), **dict(self.opts.worker_env)}

    async def worker(self, name: str, env: dict[str, str], *, wait: bool = True,
                     ready_timeout: float = READY_TIMEOUT_S, poll_s: float = 0.1) -> Proc:
        """Start ``lovense-worker run`` with ``env``; return once its /readyz answers 200.

        With ``wait=False`` return at once (then :meth:`Proc.wait_ready`). With
        ``--gc-stats`` it runs under ``python -m bench.gcstats`` (its collector timed).
        """
        argv = ([sys.executable, "-m", "bench.gcstats", "run"] if self.opts.gc_stats
                else [*_cli(), "run"])
        child = await self.start(name, argv, env)
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
        if (event := await child.ready_line()).get("event") != "baseline_ready":
            raise BenchError(f"baseline: unexpected ready line {event!r}")
        return child

    async def spy(self, target: Proc) -> None:
        """With ``--profile``, start recording ``target`` with py-spy."""
        if self.opts.profile:
            argv = profile.record_argv(target.pid, self.opts.log_dir / f"{target.name}.pyspy.txt")
            spy = self._spies[target.name] = await self.start(f"py-spy-{target.name}", argv)
            await asyncio.sleep(1.0)  # give it a moment to attach
            if not spy.alive:
                raise BenchError(f"py-spy exited at once (code {spy.process.returncode}):\n"
                                 f"{spy.tail()}")

    async def unspy(self, target: Proc, cpu_s: float | None, units: int) -> dict[str, Any] | None:
        """Stop recording ``target``; return where its CPU went per unit (None: not profiled)."""
        if (spy := self._spies.pop(target.name, None)) is None:
            return None
        await self.stop(spy, sig=signal.SIGINT)  # py-spy writes its output on SIGINT
        raw = self.opts.log_dir / f"{target.name}.pyspy.txt"
        if not raw.exists():
            return {"samples": 0, "file": str(raw)}
        return profile.summarize(raw, None if cpu_s is None else cpu_s * 1000 / units, units)

    @contextlib.asynccontextmanager
    async def measure(self, subject: Proc, label: str, sim: Simulator,
                      units: int) -> AsyncIterator[Measure]:
        """Meter the CPU of ``subject`` (as ``label``), the simulator and RabbitMQ over the block.

        With ``--profile`` py-spy records the subject meanwhile (attached before the meter
        starts); its profile is per unit (command, message) of the measured CPU.
        """
        await self.spy(subject)
        meter = CpuMeter({label: subject.pid, "simulator": sim.proc.pid, "broker": broker_pid()})
        measured = Measure()
        meter.start()
        yield measured
        measured.cpu = meter.stop()
        measured.profile = await self.unspy(subject, measured.cpu[label], units)


def _cli() -> list[str]:
    """Return the command that runs ``lovense-worker`` from this virtualenv."""
    script = Path(sys.executable).parent / "lovense-worker"
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker"]
