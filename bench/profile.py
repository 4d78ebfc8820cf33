"""Optional sampling profile of a child during its run (``--profile``), with py-spy.

py-spy attaches to the running process from outside (no code change, no
restart), records collapsed stacks (``--format raw``) while the bench drives
load, and :func:`summarize` turns them into where the CPU went: self time by
function and by module, and inclusive time of the project's own functions.
py-spy only counts samples where the thread is active, so idle time in
``epoll`` is not in the totals. Install it with ``.venv/bin/pip install py-spy``.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Final

from bench.procs import BenchError

RATE: Final = 200  # samples per second
TOP: Final = 15
_FRAME: Final = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_PROJECT: Final = ("worker.", "bench.")


def record_argv(pid: int, out: Path) -> list[str]:
    """Return py-spy's command line recording ``pid`` into ``out`` (collapsed stacks)."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return [found, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
            "--nonblocking", "--output", str(out)]


def _module(path: str) -> str:
    """Return a short package name for a source path."""
    parts = Path(path).parts
    for anchor in ("site-packages", "lib"):
        if anchor in parts:
            rest = parts[parts.index(anchor) + 1 :]
            if rest and rest[0].startswith("python3"):
                rest = rest[1:]
            if rest:
                name = rest[0].removesuffix(".py")
                return name if name != "site-packages" else path
    for project in ("worker", "bench"):
        if project in parts:
            rest = parts[parts.index(project) :]
            return ".".join(rest).removesuffix(".py")
    return path


def _label(frame: str) -> tuple[str, str]:
    """Return (function label, module) of one collapsed-stack frame."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, "?"
    module = _module(match["file"])
    return f"{match['func']} ({module})", module


def summarize(raw: Path, cpu_ms_per_command: float | None, commands: int) -> dict[str, Any]:
    """Return where the samples went; µs/command scales shares by the measured CPU per command."""
    self_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_label(frame) for frame in stack.split(";")]
        leaf, leaf_module = frames[-1]
        self_fn[leaf] += n
        self_pkg[leaf_module] += n
        for label in {label for label, module in frames if module.startswith(_PROJECT)}:
            inclusive[label] += n
    if total == 0:
        return {"samples": 0, "file": str(raw)}
    unit = (cpu_ms_per_command or 0.0) * 1000 / total  # µs per command per sample

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"name": name, "share": round(n / total, 4), "us_per_command": round(n * unit, 1)}
            for name, n in counter.most_common(TOP)
        ]

    return {
        "file": str(raw),
        "samples": total,
        "rate_hz": RATE,
        "sampled_cpu_s": round(total / RATE, 2),
        "commands": commands,
        "cpu_ms_per_command": cpu_ms_per_command,
        "self_by_module": rows(self_pkg),
        "self_by_function": rows(self_fn),
        "inclusive_project_functions": rows(inclusive),
    }


def render(name: str, summary: dict[str, Any]) -> str:
    """Return a profile summary as text."""
    if not summary.get("samples"):
        return f"profile of {name}: no samples ({summary.get('file')})"
    lines = [f"profile of {name}: {summary['samples']} samples at {summary['rate_hz']} Hz "
             f"(~{summary['sampled_cpu_s']} s on CPU), raw stacks in {summary['file']}"]
    for title, key in (("self time by module", "self_by_module"),
                       ("self time by function", "self_by_function"),
                       ("inclusive time, project functions", "inclusive_project_functions")):
        lines.append(f"  {title}:")
        for row in summary[key]:
            lines.append(f"    {row['share'] * 100:5.1f}%  {row['us_per_command']:7.1f} µs/cmd  "
                         f"{row['name']}")
    return "\n".join(lines)
