"""A benchmark's child processes (own session, parent-death signal, log file) and ``/proc``."""

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
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    busy, hz = user + nice + system + irq + softirq + steal, os.sysconf("SC_CLK_TCK")
    return busy / hz, (busy + idle + iowait) / hz


def cpu_meter(pids: dict[str, int | None]) -> Callable[[], dict[str, float | None]]:
    """Start metering CPU seconds of ``pids``; the returned function gives each one's since,
    ``machine_busy_share``, and ``others`` (the machine's not measured: neighbours, kernel)."""
    def read() -> dict[str, float | None]:
        busy, total = machine_cpu()
        return {"machine_busy": busy, "machine_total": total, "bench": time.process_time(),
                **{name: None if pid is None else cpu_seconds(pid) for name, pid in pids.items()}}

    start = read()

    def stop() -> dict[str, float | None]:
        end = read()
        used = {k: None if v is None or end[k] is None else (end[k] or 0) - v
                for k, v in start.items()}
        total, busy = used.pop("machine_total") or 0.0, used.pop("machine_busy") or 0.0
        measured = sum(v for v in used.values() if v is not None)
        return {**used, "machine_busy_share": busy / total if total > 0 else None,
                "others": max(0.0, busy - measured)}

    return stop


async def spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None) -> Proc:
    """Start ``argv`` from the repository root; stdout is a pipe, stderr the log file."""
    with log.open("wb") as err:  # the child keeps its own descriptor
        err.write(f"$ {' '.join(argv)}\n".encode())
        err.flush()
        spawned_at = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=True,
            preexec_fn=_die_with_parent)
    return Proc(name, process, log, spawned_at)


class Proc:
    """One child process, its log file, its /metrics port (a worker), and how to stop it."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path,
                 started_at: float) -> None:
        self.name, self.process, self.log, self.pid = name, process, log, process.pid
        self.metrics_port: int | None = None
        #: time.monotonic() just before the process was spawned, and seconds to /readyz 200.
        self.started_at = started_at
        self.ready_s: float | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def memory_kb(self) -> dict[str, int]:
        """Return VmRSS and VmHWM (peak RSS) in kB from /proc/PID/status (empty once gone)."""
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
            return {name: int(value.split()[0]) for name, _, value in
                    (line.partition(":") for line in lines) if name in ("VmRSS", "VmHWM")}
        return {}

    def cpu(self) -> float | None:
        """Return the CPU seconds used so far (None once it has exited)."""
        return cpu_seconds(self.pid)

    async def _get(self, path: str) -> tuple[int, str]:
        """GET the worker's ``path`` on its metrics port: (status, text); (0, "") on no answer."""
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return 0, ""

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S, poll_s: float = 0.1) -> float:
        """Wait until the worker's /readyz answers 200; return seconds since it was spawned."""
        while time.monotonic() < self.started_at + timeout and self.alive:
            if (await self._get("/readyz"))[0] == 200:
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
        return (await self._get("/metrics"))[1]

    async def ready_line(self, event_name: str, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Read the child's first stdout line, a JSON ``event_name``; copy the rest to its log."""
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
        if not isinstance(event := _json_line(line), dict) or event.get("event") != event_name:
            raise BenchError(f"{self.name}: first stdout line is not {event_name}: {line[:200]!r}")
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
        return "\n".join(f"    {line}" for line in self.log_lines()[-lines:]) or "    (empty log)"

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
        found = [_json_line(line) for line in self.log_lines() if f'"{name}"' in line]
        return [e for e in found if isinstance(e, dict) and e.get("event") == name]

    async def stop(self, timeout: float = _STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the child's process group, SIGKILL it after ``timeout``; return its code."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                print(f"bench: {self.name} (pid {self.pid}) ignored SIGTERM for {timeout:.0f} s; "
                      "killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                await self.process.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 5)
        return self.process.returncode


def _json_line(line: str | bytes) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


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
