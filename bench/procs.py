"""One child process of a benchmark, and what ``/proc`` says about processes.

Every child is started fresh in its own session (so a Ctrl-C in the terminal
reaches only the bench, which then stops the children itself) and with a
parent-death signal (so even a SIGKILLed bench leaves no orphan behind). Each
child's stderr (and stdout after its ready line) goes to a log file in one
temporary directory, named in the bench's output. :class:`bench.harness.Harness`
starts them and stops every one at the end.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiohttp

ROOT: Final = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG: Final = 1
READY_TIMEOUT_S: Final = 30.0
_STOP_TIMEOUT_S: Final = 30.0
#: Polled while waiting: why the wait must end early (a child exited), or None.
Watch = Callable[[], str | None]


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
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
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
    """CPU seconds of named processes and of the whole machine, from start() to stop()."""

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

    def start(self) -> CpuMeter:
        self._start = self._read()
        return self

    def stop(self) -> dict[str, float | None]:
        """Return CPU seconds used since start() per name, plus the machine's busy share.

        ``others`` is what the machine spent on anything not measured (neighbours, kernel).
        """
        end = self._read()
        used = {name: None if before is None or end[name] is None else (end[name] or 0) - before
                for name, before in self._start.items()}
        total = used.pop("machine_total") or 0.0
        busy = used.pop("machine_busy") or 0.0
        used["machine_busy_share"] = busy / total if total > 0 else None
        measured = sum(v for k, v in used.items() if v is not None and k != "machine_busy_share")
        used["others"] = max(0.0, busy - measured)
        return used


async def spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None) -> Proc:
    """Start ``argv`` from the repository root; stdout is a pipe, stderr the log file."""
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
    return child


class Proc:
    """One child process, its log file, its /metrics port (a worker), and how to stop it."""

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

    def memory_kb(self) -> dict[str, int]:
        """Return VmRSS and VmHWM (peak RSS) in kB from /proc/PID/status (empty once gone)."""
        return memory_kb(self.pid)

    def cpu(self) -> float | None:
        """Return the CPU seconds used so far (None once it has exited)."""
        return cpu_seconds(self.pid)

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S, poll_s: float = 0.1) -> float:
        """Wait until the worker's /readyz answers 200; return seconds since it was spawned."""
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < self.started_at + timeout and self.alive:
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

    async def metrics(self) -> str:
        """Return the worker's /metrics text ("" when it does not answer)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            async with aiohttp.ClientSession() as session, session.get(
                url, timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                return await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return ""

    async def ready_line(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
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
            raise BenchError(f"{self.name}: first stdout line is not JSON: {line[:200]!r}"
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
        text = self.log_lines()
        return "\n".join(f"    {line}" for line in text[-lines:]) or "    (empty log)"

    def log_lines(self) -> list[str]:
        """Return every line the child has logged (for warnings and errors)."""
        try:
            return [line for line in self.log.read_text(errors="replace").splitlines() if line]
        except OSError:
            return []

    def event(self, name: str) -> dict[str, Any] | None:
        """Return the child's first JSON log line whose ``event`` is ``name`` (None: none yet)."""
        return next(iter(self.events(name)), None)

    def events(self, name: str) -> list[dict[str, Any]]:
        """Return the child's JSON log lines whose ``event`` is ``name``."""
        found = []
        for line in self.log_lines():
            if f'"{name}"' in line:
                with contextlib.suppress(json.JSONDecodeError):
                    event = json.loads(line)
                    if isinstance(event, dict) and event.get("event") == name:
                        found.append(event)
        return found

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


def watcher(*procs: Proc) -> Watch:
    """Return a watch function that reports the first of ``procs`` that exited."""
    return lambda: next((f"{p.name} exited with code {p.process.returncode}"
                         for p in procs if not p.alive), None)


async def wait_until(done: Callable[[], bool], timeout: float, watch: Watch,
                     poll_s: float = 0.2) -> str | None:
    """Poll ``done`` until true; return why not (timeout, or ``watch``'s reason) or None."""
    deadline = time.monotonic() + timeout
    while not done():
        if (problem := watch()) is not None:
            return problem
        if time.monotonic() >= deadline:
            return "timed out"
        await asyncio.sleep(poll_s)
    return None
