"""Scenario ``tracing``: what tracing costs, against the code from before it, in one sitting.

The ``scheduler`` load (N distinct server commands, nothing merges, 100 ms simulator)
is driven through three workers in turn, a fresh process each, every round:

* ``before``: the worker at :data:`BEFORE` (the commit before tracing), extracted with
  ``git archive`` and run from there (``python -P`` with ``PYTHONPATH``);
* ``off``: this worker, no ``OTEL_*`` endpoint (tracing off);
* ``on``: this worker exporting every span (``OTEL_TRACES_SAMPLER=always_on``) over
  OTLP HTTP/protobuf to a receiver on loopback, in this bench process, which decodes and
  counts them;
* ``sampled``: the same with ``parentbased_traceidratio`` at 10 % (no target: guidance).

The figure is the worker's own CPU milliseconds per command (its threads included: the
span exporter's too), the median of the rounds, each divided by ``before``'s in the same
round. Targets: ``off`` ≤ 1.03×, ``on`` ≤ 1.15×.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from bench import load, throughput
from bench.figures import fmt, metric, per_unit, recorded_env
from bench.harness import SHARDS, Harness, Outcome, Simulator
from bench.procs import ROOT, BenchError, free_port, watcher

#: The last commit before tracing (issue 15).
BEFORE: Final = "43b49e0"
SUBJECTS: Final = ("before", "off", "on", "sampled")
#: ``sampled``: the ratio a busy platform would run with (the README's advice).
SAMPLED_RATIO: Final = "0.1"
TARGETS: Final = {"off": 1.03, "on": 1.15}
DELAY_MS: Final = 100
ROUNDS: Final = 3
#: Spans one Function command makes: receive, schedule, call, publish.
SPANS_PER_COMMAND: Final = 4
_HEAD: Final = (f"{'round':>5}  {'subject':<7} {'cmd/s':>6} {'p99 ms':>7}  {'results':<10} "
                f"{'spans/cmd':>9} | {'CPU ms/cmd':>10} {'÷ before':>8}")


class Receiver:
    """An OTLP/HTTP traces endpoint that decodes and counts what it is sent."""

    def __init__(self) -> None:
        self.spans = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        export = trace_service_pb2.ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        self.spans += sum(len(scope.spans) for resource in export.resource_spans
                          for scope in resource.scope_spans)
        return web.Response(body=trace_service_pb2.ExportTraceServiceResponse()
                            .SerializeToString(), content_type="application/x-protobuf")

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Receiver]:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()


def _extract_before(into: Path) -> Path:
    """Write the worker package as it was at :data:`BEFORE` under ``into``; return the dir."""
    try:
        archive = subprocess.run(["git", "archive", "--format=tar", BEFORE, "worker"],
                                 cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(f"tracing: cannot read commit {BEFORE} with git archive ({exc}); "
                         "the scenario needs the project's git history") from exc
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _env(h: Harness, sim: Simulator, subject: str, receiver: Receiver,
         before_dir: Path) -> dict[str, str]:
    env = h.worker_env(sim, {"LOVENSE_DEFAULT_TTL_MS": str(throughput.WORKER_TTL_MS),
                             "LOVENSE_SERVER_MAX_RPS": "1000000"})
    for name in [k for k in env if k.startswith("OTEL_")]:
        del env[name]
    if subject in ("on", "sampled"):
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_TRACES_SAMPLER="always_on",
                   OTEL_SERVICE_NAME="lovense-worker-bench")
    if subject == "sampled":
        env.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                   OTEL_TRACES_SAMPLER_ARG=SAMPLED_RATIO)
    if subject == "before":
        env["PYTHONPATH"] = str(before_dir)
    return env


async def _one(h: Harness, subject: str, sim: Simulator, receiver: Receiver,
               before_dir: Path, round_: int) -> dict[str, Any]:
    commands = h.opts.size(throughput.FULL_COMMANDS, throughput.QUICK_COMMANDS)
    name = f"tracing-{subject}-{round_ + 1}"
    await load.prepare(h.opts.amqp_url, SHARDS)
    env = _env(h, sim, subject, receiver, before_dir)
    # -P: the bench's working directory (this checkout) must not shadow PYTHONPATH's worker.
    child = await h.start(name, [sys.executable, "-P", "-m", "worker", "run"], env)
    child.metrics_port = int(env["LOVENSE_METRICS_PORT"])
    await child.wait_ready()
    spans_before = receiver.spans
    async with h.measure(child, "subject", sim) as cpu:
        row = await throughput._drive(
            h, worker=True, commands=commands, tag=f"{name}-{secrets.token_hex(4)}",
            distinct=True, timeout=h.opts.timeout_s or 60 + commands / 100,
            watch=watcher(child, sim.proc))
    calls = metric(await child.metrics(), "lovense_worker_upstream_requests_total")
    code = await h.stop(child)  # a graceful stop exports the spans still buffered
    await asyncio.sleep(0.5)
    row.update({
        "cpu_ms_per_command": per_unit(cpu.pop("subject"), commands),
        **{f"{k}_cpu_ms_per_command": per_unit(v, commands) for k, v in cpu.items()},
        "server_calls": None if calls is None else int(calls), "exit_code": code,
        "spans": receiver.spans - spans_before, "log_file": str(child.log),
    })
    row["spans_per_command"] = round(row["spans"] / commands, 3)
    if code not in (0, None) and row["failure"] is None:
        row.update(failure=f"{name} exited with code {code}", ok=False)
    if subject == "on" and row["spans"] < commands * SPANS_PER_COMMAND and row["ok"]:
        row.update(failure=f"{row['spans']} spans received, {commands * SPANS_PER_COMMAND} "
                   "made: the exporter dropped some", ok=False)
    return row


def _line(round_: str, subject: str, row: dict[str, Any], ratio: float | None) -> str:
    statuses = ", ".join(f"{k} {v}" for k, v in row["by_status"].items()) or "none"
    return (f"{round_:>5}  {subject:<7} {fmt(row['commands_per_s'], '.0f'):>6} "
            f"{fmt(row['p99_ms'], '.0f'):>7}  {statuses:<10} "
            f"{fmt(row['spans_per_command'], '.2f'):>9} | "
            f"{fmt(row['cpu_ms_per_command'], '.3f'):>10} {fmt(ratio, '.3f'):>8}"
            + (f"\n       FAILED: {row['failure']} (log: {row['log_file']})"
               if row["failure"] else ""))


def _ratio(row: dict[str, Any], before: dict[str, Any]) -> float | None:
    if not (row["ok"] and before["ok"] and before["cpu_ms_per_command"]):
        return None
    return round(float(row["cpu_ms_per_command"]) / float(before["cpu_ms_per_command"]), 3)


async def run(h: Harness) -> Outcome:
    """Run ``before``, ``off`` and ``on`` in turn, each round, against one simulator."""
    commands = h.opts.size(throughput.FULL_COMMANDS, throughput.QUICK_COMMANDS)
    repeat = h.opts.rounds_or(ROUNDS)
    print(f"  {commands} distinct server commands a run, {DELAY_MS} ms simulator; worker at "
          f"{BEFORE} vs tracing off vs on (100 %)\n{_HEAD}", flush=True)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lovense-before-") as tmp:
        before_dir = _extract_before(Path(tmp))
        receiver = Receiver()
        async with receiver.serving():
            sim = await h.simulator(DELAY_MS)
            try:
                for round_ in range(repeat):
                    pair: dict[str, Any] = {}
                    for subject in SUBJECTS:
                        pair[subject] = await _one(h, subject, sim, receiver, before_dir,
                                                   round_)
                        ratio = _ratio(pair[subject], pair["before"])
                        print(_line(str(round_ + 1), subject, pair[subject], ratio), flush=True)
                    pair["ratios"] = {s: _ratio(pair[s], pair["before"])
                                      for s in SUBJECTS[1:]}
                    rounds.append(pair)
            finally:
                await h.stop(sim.proc)
    ratios: dict[str, float | None] = {}
    for subject in SUBJECTS[1:]:
        got = [r["ratios"][subject] for r in rounds if r["ratios"][subject] is not None]
        ratios[subject] = round(statistics.median(got), 3) if len(got) == len(rounds) else None
    cpu = {s: statistics.median(float(r[s]["cpu_ms_per_command"]) for r in rounds)
           for s in SUBJECTS if all(r[s]["cpu_ms_per_command"] is not None for r in rounds)}
    met = {s: (r := ratios[s]) is not None and r <= limit for s, limit in TARGETS.items()}
    data = {
        "commands": commands, "before_commit": BEFORE, "delay_ms": DELAY_MS, "repeat": repeat,
        "command": throughput.SCHEDULER.body_text,
        "order": "per round: before, off, on; each a fresh worker process on purged queues; "
                 "ratio = the subject's CPU ms/command ÷ before's in the same round; figure: "
                 "the median of the rounds' ratios",
        "worker_env": recorded_env(_env(h, sim, "off", receiver, Path("(before)"))),
        "on_env": {"OTEL_EXPORTER_OTLP_ENDPOINT": "(loopback receiver in the bench)",
                   "OTEL_TRACES_SAMPLER": "always_on"},
        "sampled_env": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                        "OTEL_TRACES_SAMPLER_ARG": SAMPLED_RATIO},
        "cpu_ms_per_command_median": {s: round(v, 3) for s, v in cpu.items()},
        "ratios": ratios, "rounds": rounds,
        "target": {"what": "worker CPU ms/command vs the code before tracing: off <= 1.03x, "
                           "on (100 % sampled, exported) <= 1.15x",
                   "off": ratios["off"], "on": ratios["on"], "met": all(met.values()),
                   "met_each": met}}
    lines = [_HEAD, "-" * len(_HEAD)]
    for number, pair in enumerate(rounds, 1):
        lines += [_line(str(number), s, pair[s], pair["ratios"].get(s)) for s in SUBJECTS]
    lines.append(f"median ratio: off {fmt(ratios['off'], '.3f')} (target <= 1.03), "
                 f"on {fmt(ratios['on'], '.3f')} (target <= 1.15), sampled 10 % "
                 f"{fmt(ratios['sampled'], '.3f')}")
    return Outcome("tracing", data, "\n".join(lines),
                   all(pair[s]["ok"] for pair in rounds for s in SUBJECTS))
