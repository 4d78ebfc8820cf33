"""``bench/results.json``: one key per scenario, merged so other scenarios' figures stay."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bench.procs import ROOT

DEFAULT_PATH: Final = ROOT / "bench" / "results.json"
_PACKAGES: Final = ("aio-pika", "aiormq", "aiohttp", "httpx", "httpx-aiohttp", "msgspec",
                    "structlog")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git() -> dict[str, Any]:
    def run(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=False)
        return done.stdout.strip()

    try:
        return {"commit": run("rev-parse", "HEAD") or None,
                "dirty": bool(run("status", "--porcelain", "--", "worker"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(rabbitmq: str | None) -> dict[str, Any]:
    """Return when and where the figures were taken."""
    load1, load5, _ = os.getloadavg()
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "nproc": os.cpu_count(),
        "loadavg_at_start": [round(load1, 2), round(load5, 2)],
        "versions": {
            "python": platform.python_version(),
            **{name: _version(name) for name in _PACKAGES},
            "rabbitmq": rabbitmq,
        },
        "git": _git(),
    }


def merge(path: Path, key: str, figures: dict[str, Any]) -> None:
    """Write ``figures`` under ``key`` in ``path``, keeping every other key (atomic replace)."""
    existing: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            existing = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError as exc:
            raise SystemExit(f"bench: {path} is not JSON ({exc}); move it away first") from None
    existing[key] = figures
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(existing, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
