"""Scenarios ``throughput`` and ``scheduler``: N commands for N users, baseline vs worker.

For each simulator delay one simulator process is started with ``--delay-ms``;
against it the baseline runs first, then the worker, each a fresh OS process
consuming a freshly purged queue. The figure that matters is the ratio
worker/baseline of commands per second, measured seconds apart on the same
machine, broker and simulator.

* ``throughput``: identical commands (Vibrate:5, 3 s), default settings, 0 and
  100 ms: the worker may merge them into comma-joined calls.
* ``scheduler``: every command distinct (its own ``timeSec``), so nothing
  merges and the worker makes one call per command like the baseline; the
  per-process cap raised out of the way (``LOVENSE_SERVER_MAX_RPS=1000000``);
  100 ms. What remains is the scheduler's and the worker's own cost.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from bench import load, profile
from bench.procs import BenchError, CpuMeter, Proc, Procs, broker_pid, clean_env, free_port
from bench.scenario import Options, Outcome

SHARDS: Final = 4
PREFETCH: Final = 256
TARGET_DELAY_MS: Final = 100
TARGET_RATIO: Final = 0.8
SUBJECTS: Final = ("baseline", "worker")
UPSTREAM_METRIC: Final = "lovense_worker_upstream_requests_total{"
FULL_COMMANDS: Final = 20_000
QUICK_COMMANDS: Final = 2_000


@dataclass(frozen=True)
class Variant:
    """What distinguishes ``throughput`` from ``scheduler``."""

    key: str
    #: Command n for uid "bench-<n>", as JSON.
    body: Callable[[int, str], bytes]
    body_text: str
    delays: tuple[int, ...]
    #: The scenario's own worker settings (``--worker-env`` wins over them).
    worker_env: tuple[tuple[str, str], ...] = ()
    #: Alternating rounds per delay by default (``--repeat`` wins); figures: the median.
    rounds: int = 1


THROUGHPUT: Final = Variant(
    key="throughput", body=load.identical_body,
    body_text="Function Vibrate:5, timeSec 3, mode server (identical: may merge)",
    delays=(0, 100),
)
SCHEDULER: Final = Variant(
    key="scheduler", body=load.distinct_body,
    body_text="Function Vibrate:5, timeSec 2+n, mode server (all distinct: nothing merges)",
    delays=(100,),
    worker_env=(("LOVENSE_SERVER_MAX_RPS", "1000000"),),
    # Its ratio sits nearest its target, and one round on this shared machine can
    # be a third off (a whole run slower, broker and bench included): three rounds.
    rounds=3,
)


async def _check_delay(server_url: str, delay_ms: int) -> None:
    """Make sure the simulator really answers after ``delay_ms`` (its state says so)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server_url}/_sim/state") as response:
            state = await response.json()
    actual = state.get("faults", {}).get("delay_ms")
    if actual != delay_ms:
        raise BenchError(f"simulator: asked for --delay-ms {delay_ms}, its state says {actual}")


#: The bench publishes everything at once, so the last commands wait in RabbitMQ for as
#: long as the whole run takes; the worker's default deadline (LOVENSE_DEFAULT_TTL_MS,
#: 10 s from publish) would expire them unsent, which is cheaper than sending them and
#: not what the baseline does. One hour keeps every command live.
WORKER_TTL_MS: Final = 3_600_000


def _worker_env(
    amqp_url: str, event: dict[str, Any], extra: tuple[tuple[str, str], ...] = ()
) -> dict[str, str]:
    """Return the worker's environment; ``extra`` is the variant's then ``--worker-env``."""
    return clean_env({
        "LOVENSE_AMQP_URL": amqp_url,
        "LOVENSE_DEFAULT_TTL_MS": str(WORKER_TTL_MS),
        "LOVENSE_API_BASE": event["serverUrl"],
        "LOVENSE_DEVELOPER_TOKEN": event["token"],
        "LOVENSE_SHARDS": str(SHARDS),
        "LOVENSE_PREFETCH": str(PREFETCH),
        "LOVENSE_METRICS_PORT": str(free_port()),
        "LOVENSE_METRICS_HOST": "127.0.0.1",
        "LOVENSE_LOG_LEVEL": "warning",
        "LOVENSE_LOG_FORMAT": "json",
        **dict(extra),
    })


async def _start(procs: Procs, subject: str, name: str, opts: Options,
                 event: dict[str, Any], variant: Variant) -> Proc:
    if subject == "worker":
        return await procs.worker(name, _worker_env(opts.amqp_url, event,
                                                    variant.worker_env + opts.worker_env),
                                  gc_stats=opts.gc_stats)
    return await procs.baseline(name, [
        "--amqp-url", opts.amqp_url, "--server-url", event["serverUrl"],
        "--token", event["token"], "--queue", load.BASELINE_QUEUE,
        "--prefetch", str(PREFETCH),
    ])


async def _upstream_calls(worker: Proc) -> int | None:
    """Return how many calls to Lovense the worker made, from its /metrics (None: unknown)."""
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
    except (aiohttp.ClientError, OSError):
        return None
    total = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith(UPSTREAM_METRIC)]
    return int(sum(total)) if total else None


def _per_command_ms(seconds: float | None, commands: int) -> float | None:
    """Return CPU milliseconds per command (over the whole run, publishing included)."""
    return None if seconds is None else round(seconds * 1000 / commands, 3)


async def _one(procs: Procs, subject: str, delay_ms: int, sim: Proc,
               event: dict[str, Any], opts: Options, round_: int,
               variant: Variant) -> dict[str, Any]:
    """Run one subject once against the running simulator; return its figures."""
    commands = opts.size(FULL_COMMANDS, QUICK_COMMANDS)
    name = (f"{variant.key}-{subject}-{delay_ms}ms"
            + (f"-{round_ + 1}" if opts.rounds_or(variant.rounds) > 1 else ""))
    await load.prepare(opts.amqp_url, SHARDS)
    child = await _start(procs, subject, name, opts, event, variant)
    spy = None
    if opts.profile:
        spy = await profile.attach(procs, child, opts.log_dir / f"{name}.pyspy.txt")

    def watch() -> str | None:
        for proc in (child, sim):
            if not proc.alive:
                return f"{proc.name} exited with code {proc.process.returncode}"
        return None

    meter = CpuMeter({"subject": child.pid, "simulator": sim.pid, "broker": broker_pid()})
    meter.start()
    figures = await load.drive(
        opts.amqp_url, worker=subject == "worker", commands=commands,
        tag=f"{name}-{secrets.token_hex(4)}", timeout=opts.timeout_or(60 + commands / 100),
        watch=watch, shards=SHARDS, body=variant.body,
    )
    cpu = meter.stop()
    calls = await _upstream_calls(child) if subject == "worker" else commands
    if spy is not None:
        await profile.detach(procs, spy)
    code = await procs.stop(child)
    logged = [line for line in child.log_lines()[1:]
              if not line.startswith(('{"event": "baseline', '{"event": "bench_gc_stats'))]
    gc_line = next((line for line in child.log_lines()
                    if line.startswith('{"event": "bench_gc_stats')), None)
    row: dict[str, Any] = figures.as_dict()
    busy = cpu.pop("machine_busy_share")
    row.update({
        "cpu_ms_per_command": _per_command_ms(cpu.pop("subject"), commands),
        **{f"{k}_cpu_ms_per_command": _per_command_ms(v, commands) for k, v in cpu.items()},
        "machine_busy_share": None if busy is None else round(busy, 3),
        "server_calls": calls,
        "commands_per_call": round(commands / calls, 2) if calls else None,
        "exit_code": code,
        "log_lines": len(logged),
        "log_sample": logged[:3],
        "log_file": str(child.log),
    })
    if gc_line is not None:
        row["gc"] = json.loads(gc_line)
        row["gc"]["ms_per_command"] = round(row["gc"]["total_seconds"] * 1000 / commands, 3)
    if code not in (0, None) and row["failure"] is None:
        row["failure"] = f"{name} exited with code {code}"
        row["ok"] = False
    if spy is not None:
        raw = opts.log_dir / f"{name}.pyspy.txt"
        row["profile"] = (profile.summarize(raw, row["cpu_ms_per_command"], commands)
                          if raw.exists() else {"samples": 0, "file": str(raw)})
    return row


def _recorded_env(opts: Options, variant: Variant) -> dict[str, str]:
    """Return the worker's LOVENSE_* settings as results.json records them (no secrets)."""
    env = _worker_env(opts.amqp_url, {"serverUrl": "(simulator)", "token": "(random)"},
                      variant.worker_env + opts.worker_env)
    env["LOVENSE_METRICS_PORT"] = "(a free port)"
    env["LOVENSE_AMQP_URL"] = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", opts.amqp_url)
    return {k: v for k, v in env.items() if k.startswith("LOVENSE_")}


def _median(rounds: list[dict[str, Any]], subject: str) -> dict[str, Any]:
    """Return the round with the median commands/s of ``subject`` (a failed one if any)."""
    rows: list[dict[str, Any]] = [pair[subject] for pair in rounds]
    failed = [row for row in rows if not row["ok"]]
    if failed:
        return failed[0]
    return sorted(rows, key=lambda row: row["commands_per_s"])[(len(rows) - 1) // 2]


def _ratio(base: dict[str, Any], work: dict[str, Any]) -> float | None:
    if not (base["ok"] and work["ok"] and base["commands_per_s"]):
        return None
    return round(float(work["commands_per_s"]) / float(base["commands_per_s"]), 3)


async def run_variant(variant: Variant, procs: Procs, opts: Options) -> Outcome:
    """Run the scenario: per delay, a simulator, then the baseline, then the worker."""
    token = f"bench-{secrets.token_hex(8)}"
    commands = opts.size(FULL_COMMANDS, QUICK_COMMANDS)
    print(f"  {commands} commands for {commands} users: {variant.body_text}; delays "
          f"{', '.join(f'{d} ms' for d in opts.delays_or(variant.delays))}"
          + "".join(f"; worker {k}={v}" for k, v in variant.worker_env + opts.worker_env),
          flush=True)
    delays: dict[str, Any] = {}
    repeat = opts.rounds_or(variant.rounds)
    for delay_ms in opts.delays_or(variant.delays):
        sim, event = await procs.simulator(delay_ms, token)
        await _check_delay(event["serverUrl"], delay_ms)
        rounds: list[dict[str, Any]] = []
        for round_ in range(repeat):
            pair: dict[str, Any] = {}
            for subject in SUBJECTS:
                pair[subject] = await _one(procs, subject, delay_ms, sim, event, opts, round_,
                                           variant)
                print(f"  {delay_ms:>4} ms  {subject:<8} {_summary_line(pair[subject])}",
                      flush=True)
            pair["ratio"] = _ratio(pair["baseline"], pair["worker"])
            rounds.append(pair)
        await procs.stop(sim)
        entry: dict[str, Any] = {subject: _median(rounds, subject) for subject in SUBJECTS}
        entry["ratio"] = _ratio(entry["baseline"], entry["worker"])
        if repeat > 1:
            entry["round_ratios"] = [pair["ratio"] for pair in rounds]
            entry["rounds"] = rounds
        delays[str(delay_ms)] = entry
    at_target = delays.get(str(TARGET_DELAY_MS), {}).get("ratio")
    data = {
        "commands": commands,
        "users": commands,
        "command": variant.body_text,
        "shards": SHARDS,
        "prefetch": PREFETCH,
        "order": "per delay: one simulator process; baseline first, then worker"
                 + (f", alternating, {repeat} rounds (figures: median round)"
                    if repeat > 1 else "")
                 + "; each a fresh process on a purged queue",
        "repeat": repeat,
        "worker_env": _recorded_env(opts, variant),
        "delays_ms": delays,
        "target": {
            "what": f"worker/baseline commands/s >= {TARGET_RATIO} at {TARGET_DELAY_MS} ms",
            "delay_ms": TARGET_DELAY_MS,
            "ratio_min": TARGET_RATIO,
            "ratio": at_target,
            "met": at_target is not None and at_target >= TARGET_RATIO,
        },
    }
    ok = all(d[s]["ok"] for d in delays.values() for s in SUBJECTS)
    return Outcome(variant.key, data, table(data), ok)


run = functools.partial(run_variant, THROUGHPUT)
run_scheduler = functools.partial(run_variant, SCHEDULER)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _summary_line(row: dict[str, Any]) -> str:
    line = (f"{_fmt(row['commands_per_s'], '.0f')} cmd/s, p50 {_fmt(row['p50_ms'], '.0f')} ms, "
            f"p99 {_fmt(row['p99_ms'], '.0f')} ms, {row['results']}/{row['commands']} results")
    return line if row["failure"] is None else f"{line}  FAILED: {row['failure']}"


def _statuses(row: dict[str, Any]) -> str:
    text = ", ".join(f"{k} {v}" for k, v in row["by_status"].items()) or "none"
    if row["missing"]:
        text += f", missing {row['missing']}"
    if row["duplicates"]:
        text += f", dup {row['duplicates']}"
    return text


def table(data: dict[str, Any]) -> str:
    """Return the scenario's figures as a text table."""
    cpu = ("cpu", "broker_cpu", "simulator_cpu", "bench_cpu", "others_cpu")
    head = (f"{'delay':>6}  {'subject':<8} {'cmd/s':>6} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'max ms':>7}  {'results':<12} {'pub/s':>6} {'cmd/call':>8} | CPU ms/cmd: "
            f"{'self':>5} {'rabbit':>6} {'sim':>5} {'bench':>5} {'other':>5}  {'busy':>4}")
    lines = [head, "-" * len(head)]
    for delay, rows in data["delays_ms"].items():
        for subject in SUBJECTS:
            row = rows[subject]
            cpus = " ".join(_fmt(row[f"{k}_ms_per_command"], ".2f").rjust(w)
                            for k, w in zip(cpu, (5, 6, 5, 5, 5), strict=True))
            busy = row["machine_busy_share"]
            lines.append(
                f"{delay + ' ms':>6}  {subject:<8} {_fmt(row['commands_per_s'], '.0f'):>6} "
                f"{_fmt(row['p50_ms'], '.0f'):>7} {_fmt(row['p99_ms'], '.0f'):>7} "
                f"{_fmt(row['max_ms'], '.0f'):>7}  {_statuses(row):<12} "
                f"{_fmt(row['publish_per_s'], '.0f'):>6} "
                f"{_fmt(row.get('commands_per_call'), '.1f'):>8} |             {cpus}  "
                f"{'-' if busy is None else f'{busy:.0%}':>4}"
            )
            if row.get("gc"):
                gc = row["gc"]
                lines.append(f"{'':>6}  {subject} garbage collector: {gc['ms_per_command']} ms/cmd"
                             f" ({gc['total_seconds']} s; collections per generation "
                             f"{gc['collections']}, gen 2 {gc['seconds']['2']} s; "
                             f"{gc['tracked_objects']} objects tracked at exit)")
            if row["failure"]:
                lines.append(f"{'':>6}  FAILED: {row['failure']} (log: {row['log_file']})")
                for logged in row["log_sample"][:1]:
                    lines.append(f"{'':>6}  first of {row['log_lines']} log lines: "
                                 f"{logged[:300]}")
        rounds = rows.get("round_ratios")
        extra = (f" (medians; per round: {', '.join(_fmt(r, '.3f') for r in rounds)})"
                 if rounds else "")
        lines.append(f"{delay + ' ms':>6}  {'ratio':<8} {_fmt(rows['ratio'], '.3f'):>6}  "
                     f"worker cmd/s / baseline cmd/s{extra}")
    target = data["target"]
    verdict = ("MET" if target["met"] else "NOT MET") if target["ratio"] is not None else (
        f"NOT MEASURED (no successful run at {target['delay_ms']} ms)")
    lines.append(f"target: {target['what']}: ratio {_fmt(target['ratio'], '.3f')} -> {verdict}")
    return "\n".join(lines)
