"""``python -m bench``: run :data:`SCENARIOS`, each in its own :class:`Harness`; print tables,
merge figures into results.json (bench/README.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bench import broadcast, callbacks, flood, registry, soak, stops, throughput, tracing
from bench.harness import Harness, Options, Scenario
from bench.procs import ROOT, BenchError
from worker.adapters.amqp.nodes import connect_first
from worker.core.brokers import parse_brokers

#: name -> (scenario, what it measures); each writes results.json key ``name``.
SCENARIOS: Final[dict[str, tuple[Scenario, str]]] = {
    "throughput": (throughput.run, "N identical commands for N users, baseline vs worker"),
    "scheduler": (throughput.run_scheduler, "N distinct commands (nothing merges), baseline vs "
                  "worker"),
    "flood": (flood.run, "10,000 commands for one uid at 1,000/s: rate budget, last on time"),
    "broadcast": (broadcast.run, "one command for 10,000 uids: calls, time to result"),
    "stop_load": (stops.run_load, "Stops while 100,000 commands are backlogged"),
    "stop_poison": (stops.run_poison, "stop_load with 1,000 poison messages; then wide Stops"),
    "registry": (registry.run, "1,000,000 paired users: follow, snapshot, RSS, B's start-up"),
    "registry_after": (registry.run_after, "the same, A started after the log is written"),
    "callbacks": (callbacks.run, "callback POSTs/s with confirms: endpoint vs bare aiohttp"),
    "heartbeats": (callbacks.run_heartbeats, "100,000 users' callbacks a minute: workers' CPU"),
    "soak": (soak.run, "30 min of mixed traffic at half capacity, connections closed: slopes"),
    "tracing": (tracing.run, "the scheduler load: worker before tracing vs tracing off vs on"),
}
#: Run only when named (``--scenario``): a repeat of ``registry``, and the 30-minute soak.
OPT_IN: Final = frozenset({"registry_after", "soak"})
#: One key per scenario, merged so other scenarios' figures stay.
DEFAULT_PATH: Final = ROOT / "bench" / "results.json"
_PACKAGES: Final = ("aio-pika", "aiormq", "aiohttp", "httpx", "httpx-aiohttp", "msgspec",
                    "structlog")


def _version(package: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(package)
    return None


def _git(*argv: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
    return None


def environment(rabbitmq: str | None) -> dict[str, Any]:
    """Return when and where the figures were taken."""
    load1, load5, _ = os.getloadavg()
    dirty = _git("status", "--porcelain", "--", "worker")
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "nproc": os.cpu_count(), "loadavg_at_start": [round(load1, 2), round(load5, 2)],
        "versions": {"python": platform.python_version(),
                     **{name: _version(name) for name in _PACKAGES}, "rabbitmq": rabbitmq},
        "git": {"commit": _git("rev-parse", "HEAD") or None,
                "dirty": None if dirty is None else bool(dirty)},
    }


def merge(path: Path, key: str, figures: dict[str, Any]) -> None:
    """Write ``figures`` under ``key`` in ``path``, keeping every other key (atomic replace)."""
    try:
        loaded = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as exc:
        raise SystemExit(f"bench: {path} is not JSON ({exc}); move it away first") from None
    existing = {**(loaded if isinstance(loaded, dict) else {}), key: figures}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(existing, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark lovense-worker against a bare aio-pika baseline measured in the "
        "same invocation. Figures go to bench/results.json (not with --quick).")
    add = parser.add_argument
    add("--scenario", action="append", choices=sorted(SCENARIOS),
        help="scenario to run (repeatable; default: all but registry_after and soak)")
    add("--quick", action="store_true", help="smoke run at a tenth of the size or less; "
        "results.json left alone unless --output is given")
    add("--commands", type=int, default=None, help="the scenario's main size (commands, uids, "
        "backlog or users; bench/README.md)")
    add("--delays", default=None, help="simulator delays in ms, comma-separated")
    add("--rate", type=float, default=None, help="flood: commands per second (default 1000)")
    add("--repeat", type=int, default=None, help="alternating baseline/worker rounds per delay; "
        "figures: the median round's (default: scheduler 3, others 1)")
    add("--worker-env", action="append", default=[], metavar="NAME=VALUE",
        help="extra LOVENSE_* setting for the worker (repeatable)")
    add("--timeout", type=float, default=None, help="seconds to wait for a run's results")
    add("--amqp-url", default=os.environ.get("LOVENSE_AMQP_URL",
                                             "amqp://guest:guest@localhost:5672/"),
        help="one AMQP URL, or a cluster's nodes comma-separated: the workers get the list, "
        "the bench's own clients the first node that answers (default: LOVENSE_AMQP_URL)")
    add("--output", type=Path, default=None, help=f"results file (default {DEFAULT_PATH})")
    args = parser.parse_args(argv)
    args.delay_list = None
    if args.delays is not None:
        try:
            args.delay_list = tuple(int(d) for d in args.delays.split(",") if d.strip())
        except ValueError:
            parser.error(f"--delays: not a list of whole numbers: {args.delays!r}")
        if not args.delay_list or min(args.delay_list) < 0:
            parser.error("--delays: give at least one delay, none negative")
    pairs = [item.partition("=") for item in args.worker_env]
    if any(not sep or not name.startswith("LOVENSE_") for name, sep, _ in pairs):
        parser.error("--worker-env: give LOVENSE_NAME=VALUE")
    args.worker_env = tuple((name, value) for name, _, value in pairs)
    if any(n is not None and n < 1 for n in (args.commands, args.repeat)):
        parser.error("--commands and --repeat: at least 1")
    return args


async def _broker(urls: str) -> tuple[str, str | None]:
    """Return the URL of the first node of ``urls`` that answers, and its RabbitMQ version."""
    try:
        brokers = parse_brokers(urls)
    except ValueError as exc:
        raise BenchError(f"--amqp-url: {exc}") from None
    try:
        connection, node = await connect_first(brokers, "bench-version", random.Random())
    except ConnectionError as exc:
        raise BenchError(f"RabbitMQ does not answer at {brokers.names} ({exc}); "
                         "run `make rabbitmq` or `rabbitmq-server -detached`") from None
    async with connection:
        transport = connection.transport
        version = transport.connection.server_properties.get("version") if transport else None
    return node.url, version.decode() if isinstance(version, bytes | bytearray) else (
        version if isinstance(version, str) else None)


async def _main(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    node_url, version = await _broker(args.amqp_url)
    env = environment(version)
    log_dir = Path(tempfile.mkdtemp(prefix="lovense-bench-"))
    opts = Options(amqp_url=node_url, commands=args.commands, delays=args.delay_list,
                   timeout_s=args.timeout, log_dir=log_dir, repeat=args.repeat,
                   worker_env=args.worker_env, quick=args.quick, rate=args.rate,
                   worker_amqp_url=args.amqp_url)
    write_to = args.output or (None if args.quick else DEFAULT_PATH)
    print(f"bench: {env['nproc']} CPUs, load {env['loadavg_at_start']}, {env['versions']}; "
          f"child logs in {log_dir}", flush=True)
    summary: list[tuple[str, bool, Any]] = []
    for name in args.scenario or [n for n in SCENARIOS if n not in OPT_IN]:
        scenario, what = SCENARIOS[name]
        print(f"\n== {name}: {what}", flush=True)
        started = time.monotonic()
        async with Harness(opts) as h:
            outcome = await scenario(h)
        outcome.data["scenario_seconds"] = round(time.monotonic() - started, 1)
        print(f"\n{outcome.table}")
        if write_to is not None:
            merge(write_to, outcome.key, {**env, "quick": args.quick, "ok": outcome.ok,
                                          **outcome.data})
        print(f"figures written to {write_to} (key {outcome.key!r})" if write_to else
              "figures not written (--quick without --output)")
        summary.append((name, outcome.ok, outcome.data.get("target", {}).get("met")))
        if not outcome.ok:
            print(f"bench: {name} FAILED: a correctness check failed or a run did not "
                  f"finish (child logs in {log_dir})", file=sys.stderr)
    if len(summary) > 1:
        print("\nscenario     run  target")
        for name, ok, met in summary:
            target = "-" if met is None else ("met" if met else "NOT MET")
            print(f"{name:<12} {'ok' if ok else 'FAILED':<4} {target}")
    return 0 if all(ok for _, ok, _ in summary) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return asyncio.run(_main(args))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; every child process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
