"""Child processes of a benchmark: the simulator, the worker and the baseline.

Every child is started fresh in its own session (so a Ctrl-C in the terminal
reaches only the bench, which then stops the children itself) and with a
parent-death signal (so even a SIGKILLed bench leaves no orphan behind).
:class:`Procs` owns them all and stops every one on exit, errors included.
Each child's stderr (and stdout after its ready line) goes to a log file in
one temporary directory, named in the bench's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp

ROOT: Final = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG: Final = 1
_READY_TIMEOUT_S: Final = 30.0
_STOP_TIMEOUT_S: Final = 30.0


class BenchError(RuntimeError):
    """A benchmark could not run or its run failed; the message says why."""


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM this child when the bench process dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def cpu_seconds(pid: int) -> float | None:
    """Return the user+system CPU seconds a live process has used, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of a live process in kB, from /proc/PID/status."""
    found: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def broker_pid() -> int | None:
    """Return the pid of a local RabbitMQ node (``beam.smp``), if one runs on this machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "beam.smp":
                    return int(entry.name)
    return None


def machine_cpu() -> tuple[float, float]:
    """Return (busy, total) CPU seconds of the whole machine, all CPUs, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    busy = user + nice + system + irq + softirq + steal
    hz = os.sysconf("SC_CLK_TCK")
    return busy / hz, (busy + idle + iowait) / hz


class CpuMeter:
    """CPU seconds of named processes and of the whole machine, between two readings."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self._start: dict[str, float | None] = {}

    def _read(self) -> dict[str, float | None]:
        busy, total = machine_cpu()
        reading: dict[str, float | None] = {"machine_busy": busy, "machine_total": total,
                                            "bench": time.process_time()}
        for name, pid in self.pids.items():
            reading[name] = cpu_seconds(pid) if pid is not None else None
        return reading

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float | None]:
        """Return CPU seconds used since start() per name, plus the machine's busy share."""
        end = self._read()
        used: dict[str, float | None] = {}
        for name, before in self._start.items():
            after = end[name]
            used[name] = None if before is None or after is None else after - before
        total = used.pop("machine_total") or 0.0
        busy = used.pop("machine_busy") or 0.0
        used["machine_busy_share"] = busy / total if total > 0 else None
        measured = sum(v for k, v in used.items() if v is not None and k != "machine_busy_share")
        used["others"] = max(0.0, busy - measured)
        return used


def lovense_cli() -> list[str]:
    """Return the command that runs ``lovense-worker`` from this virtualenv."""
    script = Path(sys.executable).parent / "lovense-worker"
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker"]


class Proc:
    """One child process, its log file, and how to stop it."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.pid = process.pid
        self.metrics_port: int | None = None
        #: time.monotonic() just before the process was spawned, and seconds to /readyz 200.
        self.started_at = time.monotonic()
        self.ready_s: float | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def wait_ready(self, timeout: float = _READY_TIMEOUT_S, poll_s: float = 0.1) -> float:
        """Wait until the worker's /readyz answers 200; return seconds since it was spawned."""
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        deadline = self.started_at + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if not self.alive:
                    break
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            self.ready_s = time.monotonic() - self.started_at
                            return self.ready_s
                await asyncio.sleep(poll_s)
        if not self.alive:
            raise BenchError(f"{self.name} exited with code {self.process.returncode} "
                             f"{time.monotonic() - self.started_at:.0f} s after it was spawned, "
                             f"before /readyz answered 200:\n{self.tail()}")
        raise BenchError(f"{self.name} was not ready within {timeout:.0f} s:\n{self.tail()}")

    def memory_kb(self) -> dict[str, int]:
        """Return VmRSS and VmHWM (peak RSS) in kB from /proc/PID/status (empty once gone)."""
        return memory_kb(self.pid)

    def cpu(self) -> float | None:
        """Return the CPU seconds used so far (None once it has exited)."""
        return cpu_seconds(self.pid)

    async def ready_line(self, timeout: float = _READY_TIMEOUT_S) -> dict[str, Any]:
        """Read the child's first stdout line as JSON, then copy the rest to its log."""
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            raise BenchError(f"{self.name}: no ready line within {timeout:.0f} s "
                             f"(see {self.log})") from None
        if not line:
            await self.process.wait()
            raise BenchError(f"{self.name} exited with code {self.process.returncode} before "
                             f"it was ready:\n{self.tail()}")
        try:
            event: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            raise BenchError(
                f"{self.name}: first stdout line is not JSON: {line[:200]!r}"
            ) from None
        self._drain = asyncio.create_task(self._copy_stdout())
        return event

    async def _copy_stdout(self) -> None:
        assert self.process.stdout is not None
        with self.log.open("ab") as out:
            while chunk := await self.process.stdout.read(65536):
                out.write(chunk)
                out.flush()

    def tail(self, lines: int = 20) -> str:
        """Return the last lines of the child's log."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"    {line}" for line in text[-lines:]) or "    (empty log)"

    def log_lines(self) -> list[str]:
        """Return every line the child has logged (for warnings and errors)."""
        try:
            return [line for line in self.log.read_text(errors="replace").splitlines() if line]
        except OSError:
            return []

    async def stop(
        self, timeout: float = _STOP_TIMEOUT_S, sig: signal.Signals = signal.SIGTERM
    ) -> int | None:
        """Signal the child's process group, SIGKILL it after ``timeout``; return its code."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                print(f"bench: {self.name} (pid {self.pid}) ignored {sig.name} for "
                      f"{timeout:.0f} s; killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                await self.process.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 5)
        return self.process.returncode


class Procs:
    """Start children and make sure every one of them is stopped at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Proc] = []
        self._counter = 0

    async def __aenter__(self) -> Procs:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_all()

    async def stop_all(self) -> None:
        """Stop every child still running (newest first); shielded from cancellation."""
        children, self._children = self._children[::-1], []
        for child in children:
            await asyncio.shield(child.stop())

    async def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> Proc:
        """Start ``argv`` from the repository root; stdout is a pipe, stderr the log file."""
        self._counter += 1
        log = self.log_dir / f"{self._counter:02d}-{name}.log"
        with log.open("wb") as err:
            err.write(f"$ {' '.join(argv)}\n".encode())
            err.flush()
            spawned_at = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Proc(name, process, log)
        child.started_at = spawned_at
        self._children.append(child)
        return child

    async def stop(self, child: Proc, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Stop one child now; return its exit code."""
        if child in self._children:
            self._children.remove(child)
        return await asyncio.shield(child.stop(sig=sig))

    async def simulator(
        self, delay_ms: int, token: str, *, record: bool = False
    ) -> tuple[Proc, dict[str, Any]]:
        """Start ``lovense-worker simulate`` answering after ``delay_ms``; return it, its event.

        With ``record`` the simulator keeps every request it gets (``GET /_sim/requests``
        lists them with ``received_ms``); without, it keeps nothing (long runs).
        """
        argv = [*lovense_cli(), "simulate", "--host", "127.0.0.1", "--server-port", "0",
                "--apps", "1", "--delay-ms", str(delay_ms), "--token", token,
                *([] if record else ["--no-record"]), "--quiet"]
        child = await self.start(f"simulator-{delay_ms}ms", argv)
        event = await child.ready_line()
        if event.get("event") != "simulator_ready" or "serverUrl" not in event:
            raise BenchError(f"simulator: unexpected ready line {event!r}")
        return child, event

    async def worker(
        self, name: str, env: dict[str, str], *, ready_timeout: float = _READY_TIMEOUT_S,
        poll_s: float = 0.1, wait: bool = True, gc_stats: bool = False,
    ) -> Proc:
        """Start ``lovense-worker run`` with ``env``; return once its /readyz answers 200.

        With ``wait=False`` return at once (then :meth:`Proc.wait_ready`). The child's
        ``ready_s`` is the time from just before it was spawned to its first 200.
        With ``gc_stats`` it runs under ``python -m bench.gcstats`` (its collector timed).
        """
        port = int(env["LOVENSE_METRICS_PORT"])
        argv = ([sys.executable, "-m", "bench.gcstats", "run"] if gc_stats
                else [*lovense_cli(), "run"])
        child = await self.start(name, argv, env)
        child.metrics_port = port
        if wait:
            try:
                await child.wait_ready(ready_timeout, poll_s)
            except BenchError:
                await self.stop(child)
                raise
        return child

    async def baseline(self, name: str, argv: list[str]) -> Proc:
        """Start the baseline consumer; return once it says it consumes."""
        child = await self.start(name, [sys.executable, "-m", "bench.baseline", *argv])
        event = await child.ready_line()
        if event.get("event") != "baseline_ready":
            raise BenchError(f"baseline: unexpected ready line {event!r}")
        return child


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """Return this process's environment without any LOVENSE_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOVENSE_")}
    env.update(extra)
    return env
