"""``python -m bench``: run benchmark scenarios, print a table, merge figures into results.json.

Scenarios are ``async def run(h: Harness) -> Outcome`` registered in
:data:`SCENARIOS`; each owns one key of ``bench/results.json``. Each runs inside
its own :class:`~bench.harness.Harness`, which stops every child process it
started at the end, on errors and on Ctrl-C alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import aio_pika

from bench import broadcast, flood, registry, results, stop_load, stop_poison, throughput
from bench.harness import Harness, Options, Outcome
from bench.procs import BenchError
from bench.profile import render

Scenario = Callable[[Harness], Awaitable[Outcome]]
#: name -> (scenario, what it measures); each writes results.json key ``name``.
SCENARIOS: Final[dict[str, tuple[Scenario, str]]] = {
    "throughput": (throughput.run, "N identical commands for N users, baseline vs worker, "
                   "per delay"),
    "scheduler": (throughput.run_scheduler, "N distinct commands for N users (nothing merges, "
                  "cap raised), baseline vs worker"),
    "flood": (flood.run, "10,000 commands for one uid at 1,000/s: rate budget, supersede, "
              "last command on time"),
    "broadcast": (broadcast.run, "one command for 10,000 uids: comma-joined calls, time to "
                  "result"),
    "stop_load": (stop_load.run, "Stops through the Stop lane while 100,000 commands are "
                  "backlogged: latency, nothing older after a Stop"),
    "stop_poison": (stop_poison.run, "stop_load with 1,000 poison messages on the Stop lane and "
                    "the shards; then RSS around 100 Stops for 10,000 uids x 32 toys"),
    "registry": (registry.run, "1,000,000 paired users: worker A follows the log while it is "
                 "written, snapshot, RSS, worker B's start-up"),
    "registry_after": (registry.run_after, "the same, worker A started after the log is "
                       "written (a full replay at start-up)"),
}
#: Not run by default (no --scenario): the ``during`` variant measures the same targets.
OPTIONAL: Final = frozenset({"registry_after"})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark lovense-worker against a bare aio-pika baseline measured in the "
        "same invocation. Figures go to bench/results.json (not with --quick).")
    add = parser.add_argument
    add("--scenario", action="append", choices=sorted(SCENARIOS),
        help="scenario to run (repeatable; default: all)")
    add("--quick", action="store_true", help="smoke run: every scenario at a tenth of its size "
        "or less, results.json left alone unless --output is given")
    add("--commands", type=int, default=None, help="the scenario's main size: commands "
        "(throughput, scheduler, flood), uids (broadcast), backlog (stop_load, stop_poison), "
        "users (registry); default each scenario's own (see bench/README.md)")
    add("--delays", default=None, help="simulator delays in ms, comma-separated (default: the "
        "scenario's own, e.g. 0,100 for throughput)")
    add("--gc-stats", action="store_true", help="throughput, scheduler, flood: run the worker "
        "under `python -m bench.gcstats` and report its garbage collections")
    add("--rate", type=float, default=None, help="flood: commands per second (default 1000)")
    add("--repeat", type=int, default=None, help="rounds of baseline-then-worker per delay, "
        "alternating; figures are the median round's (default: scheduler 3, others 1; 1 with "
        "--quick)")
    add("--worker-env", action="append", default=[], metavar="NAME=VALUE", help="extra "
        "LOVENSE_* variable for the worker, e.g. LOVENSE_BATCH_WINDOW_MS=0 (repeatable)")
    add("--timeout", type=float, default=None, help="seconds to wait for all results of one "
        "run (default: the scenario's own, e.g. 60 + commands/100)")
    add("--amqp-url", default=os.environ.get("LOVENSE_AMQP_URL",
                                             "amqp://guest:guest@localhost:5672/"))
    add("--output", type=Path, default=None,
        help=f"results file to merge into (default {results.DEFAULT_PATH})")
    add("--profile", action="store_true", help="record the baseline and the worker with py-spy "
        "during their runs and print where their CPU goes (needs .venv/bin/pip install py-spy)")
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
    if (args.commands is not None and args.commands < 1) or (
            args.repeat is not None and args.repeat < 1):
        parser.error("--commands and --repeat: at least 1")
    return args


async def _broker_version(url: str) -> str | None:
    try:
        connection = await aio_pika.connect(url, timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure means the same to the user
        raise BenchError(f"RabbitMQ does not answer at {url} ({exc!r}); "
                         "run `make rabbitmq` or `rabbitmq-server -detached`") from None
    async with connection:
        transport = connection.transport
        version = transport.connection.server_properties.get("version") if transport else None
    if isinstance(version, bytes | bytearray):
        return version.decode()
    return version if isinstance(version, str) else None


async def _main(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    env = results.environment(await _broker_version(args.amqp_url))
    log_dir = Path(tempfile.mkdtemp(prefix="lovense-bench-"))
    opts = Options(
        amqp_url=args.amqp_url, commands=args.commands, delays=args.delay_list,
        timeout_s=args.timeout, log_dir=log_dir, profile=args.profile, repeat=args.repeat,
        worker_env=args.worker_env, quick=args.quick, rate=args.rate, gc_stats=args.gc_stats)
    write_to = args.output or (None if args.quick else results.DEFAULT_PATH)
    print(f"bench: {env['nproc']} CPUs, load {env['loadavg_at_start']}, python "
          f"{env['versions']['python']}, aio-pika {env['versions']['aio-pika']}, aiohttp "
          f"{env['versions']['aiohttp']}, RabbitMQ {env['versions']['rabbitmq']}; "
          f"child logs in {log_dir}", flush=True)
    summary: list[tuple[str, bool, Any]] = []
    for name in args.scenario or [n for n in SCENARIOS if n not in OPTIONAL]:
        scenario, what = SCENARIOS[name]
        print(f"\n== {name}: {what}", flush=True)
        started = time.monotonic()
        async with Harness(opts) as h:
            outcome = await scenario(h)
        outcome.data["scenario_seconds"] = round(time.monotonic() - started, 1)
        print(f"\n{outcome.table}")
        _print_profiles(outcome.data)
        if write_to is not None:
            results.merge(write_to, outcome.key,
                          {**env, "quick": args.quick, "ok": outcome.ok, **outcome.data})
            print(f"figures written to {write_to} (key {outcome.key!r})")
        else:
            print("figures not written (--quick without --output)")
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


def _print_profiles(data: dict[str, Any]) -> None:
    for name, summary in (data.get("profiles") or {}).items():
        if summary is not None:
            print(f"\n{render(name, summary)}")
    for delay, rows in data.get("delays_ms", {}).items():
        for subject in ("baseline", "worker"):
            if (summary := rows.get(subject, {}).get("profile")) is not None:
                print(f"\n{render(f'{subject} at {delay} ms', summary)}")


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
