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

The bench publishes every command at once with aio-pika (confirms, batches of
500) and collects the results with aio-pika too, for both subjects alike.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aio_pika

from bench import load
from bench.figures import fmt, metric, per_unit, percentile, recorded_env, rounded
from bench.harness import PREFETCH, SHARDS, Harness, Outcome, Simulator
from bench.procs import Watch, watcher
from worker.contract import topology

TARGET_DELAY_MS: Final = 100
TARGET_RATIO: Final = 0.8
SUBJECTS: Final = ("baseline", "worker")
FULL_COMMANDS: Final = 20_000
QUICK_COMMANDS: Final = 2_000
#: The bench publishes everything at once, so the last commands wait in RabbitMQ for as
#: long as the whole run takes; the worker's default deadline (LOVENSE_DEFAULT_TTL_MS,
#: 10 s from publish) would expire them unsent, which is cheaper than sending them and
#: not what the baseline does. One hour keeps every command live.
WORKER_TTL_MS: Final = 3_600_000


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
    key="throughput", body=lambda n, uid: load.command_body(uid),
    body_text="Function Vibrate:5, timeSec 3, mode server (identical: may merge)",
    delays=(0, 100),
)
SCHEDULER: Final = Variant(
    key="scheduler", body=lambda n, uid: load.command_body(uid, 2 + n),
    body_text="Function Vibrate:5, timeSec 2+n, mode server (all distinct: nothing merges)",
    delays=(100,),
    worker_env=(("LOVENSE_SERVER_MAX_RPS", "1000000"),),
    # Its ratio sits nearest its target, and one round on this shared machine can
    # be a third off (a whole run slower, broker and bench included): three rounds.
    rounds=3,
)


def _worker_env(h: Harness, sim: Simulator | None, variant: Variant) -> dict[str, str]:
    return h.worker_env(sim, {"LOVENSE_DEFAULT_TTL_MS": str(WORKER_TTL_MS),
                              **dict(variant.worker_env)})


async def _drive(h: Harness, *, worker: bool, commands: int, tag: str, timeout: float,
                 watch: Watch, body: Callable[[int, str], bytes]) -> dict[str, Any]:
    """Publish command n = ``body(n, "bench-<n>")`` for every n, collect the results."""
    routes = [(f"{tag}-{n}", f"bench-{n}" if worker else load.BASELINE_QUEUE,
               body(n, f"bench-{n}")) for n in range(commands)]
    async with load.session(h.opts.amqp_url, "bench-load", aio_results=True) as s:
        collector = s.collector
        collector.expect(ident for ident, _, _ in routes)
        exchange = (await s.exchange(topology.COMMANDS_EXCHANGE) if worker
                    else s.publish.default_exchange)
        started = time.time()
        await s.publish_all(exchange, routes)
        published = time.time()
        reason = await s.wait(started + timeout - time.time(), watch, poll_s=0.05)
        await asyncio.sleep(load.LINGER_S)  # late duplicates count too
        if reason is not None:
            names = ([topology.shard_queue(i) for i in range(SHARDS)] if worker
                     else [load.BASELINE_QUEUE])
            reason += (f"; {len(collector.received)} of {commands} results, "
                       f"{commands - len(collector.received)} missing; "
                       f"{await _queues(s.listen, names)}")
    latencies = sorted(at - collector.stamps[i] for i, at in collector.received.items())
    elapsed = (collector.last_ms / 1000 - started) if collector.received else 0.0
    row: dict[str, Any] = {
        "commands": commands, "results": len(collector.received),
        "by_status": dict(sorted(collector.status.items())),
        "duplicates": collector.duplicates, "strays": collector.strays,
        "missing": commands - len(collector.received),
        "elapsed_s": elapsed, "publish_s": published - started,
        "commands_per_s": commands / elapsed if elapsed > 0 and reason is None else 0.0,
        "publish_per_s": commands / (published - started) if published > started else 0.0,
        "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99),
        "max_ms": latencies[-1] if latencies else None,
    }
    all_ok = (row["missing"] == 0 and row["duplicates"] == 0
              and collector.status.get("ok", 0) == commands)
    if reason is None and not all_ok:
        reason = "not every command got exactly one ok result"
    row.update(failure=reason, ok=reason is None and all_ok)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


async def _queues(channel: aio_pika.abc.AbstractChannel, names: list[str]) -> str:
    """Describe the queues a run used: ready, unacked, consumers (empty + missing = purged?)."""
    parts, ready = [], 0
    for name in names:
        try:
            declared = (await channel.declare_queue(name, passive=True)).declaration_result
        except aio_pika.exceptions.AMQPError as exc:
            parts.append(f"{name}: {exc!r}")
            break  # the channel is closed now
        ready += declared.message_count or 0
        parts.append(f"{name}: {declared.message_count} ready, "
                     f"{declared.consumer_count} consumer(s)")
    hint = (" (nothing left to consume yet results are missing: were the queues purged or "
            "consumed by someone else, e.g. integration tests on the same broker?)"
            if ready == 0 and len(parts) == len(names) else "")
    return "queues now: " + "; ".join(parts) + hint


async def _one(h: Harness, variant: Variant, subject: str, delay_ms: int, sim: Simulator,
               round_: int) -> dict[str, Any]:
    """Run one subject once against the running simulator; return its figures."""
    opts = h.opts
    commands = opts.size(FULL_COMMANDS, QUICK_COMMANDS)
    name = (f"{variant.key}-{subject}-{delay_ms}ms"
            + (f"-{round_ + 1}" if opts.rounds_or(variant.rounds) > 1 else ""))
    await load.prepare(opts.amqp_url, SHARDS)
    worker = subject == "worker"
    child = await (h.worker(name, _worker_env(h, sim, variant)) if worker
                   else h.baseline(name, sim))
    async with h.measure(child, "subject", sim, commands) as measured:
        row = await _drive(h, worker=worker, commands=commands,
                           tag=f"{name}-{secrets.token_hex(4)}", body=variant.body,
                           timeout=opts.timeout_or(60 + commands / 100),
                           watch=watcher(child, sim.proc))
    cpu = measured.cpu
    calls = (metric(await child.metrics(), "lovense_worker_upstream_requests_total") if worker
             else commands)
    code = await h.stop(child)
    logged = [line for line in child.log_lines()[1:]
              if not line.startswith(('{"event": "baseline', '{"event": "bench_gc_stats'))]
    busy = cpu.pop("machine_busy_share")
    row.update({
        "cpu_ms_per_command": per_unit(cpu.pop("subject"), commands),
        **{f"{k}_cpu_ms_per_command": per_unit(v, commands) for k, v in cpu.items()},
        "machine_busy_share": rounded(busy), "server_calls": None if calls is None else int(calls),
        "commands_per_call": round(commands / calls, 2) if calls else None, "exit_code": code,
        "log_lines": len(logged), "log_sample": logged[:3], "log_file": str(child.log),
    })
    if (gc := child.event("bench_gc_stats")) is not None:
        row["gc"] = {**gc, "ms_per_command": per_unit(gc["total_seconds"], commands)}
    if code not in (0, None) and row["failure"] is None:
        row["failure"] = f"{name} exited with code {code}"
        row["ok"] = False
    if measured.profile is not None:
        row["profile"] = measured.profile
    return row


def _median(rounds: list[dict[str, Any]], subject: str) -> dict[str, Any]:
    """Return the round with the median commands/s of ``subject`` (a failed one if any)."""
    rows: list[dict[str, Any]] = [pair[subject] for pair in rounds]
    failed = [row for row in rows if not row["ok"]]
    return failed[0] if failed else sorted(rows, key=lambda row: row["commands_per_s"])[
        (len(rows) - 1) // 2]


def _ratio(base: dict[str, Any], work: dict[str, Any]) -> float | None:
    if not (base["ok"] and work["ok"] and base["commands_per_s"]):
        return None
    return round(float(work["commands_per_s"]) / float(base["commands_per_s"]), 3)


async def run_variant(variant: Variant, h: Harness) -> Outcome:
    """Run the scenario: per delay, a simulator, then the baseline, then the worker."""
    opts = h.opts
    commands = opts.size(FULL_COMMANDS, QUICK_COMMANDS)
    print(f"  {commands} commands for {commands} users: {variant.body_text}; delays "
          f"{', '.join(f'{d} ms' for d in opts.delays_or(variant.delays))}"
          + "".join(f"; worker {k}={v}" for k, v in variant.worker_env + opts.worker_env),
          flush=True)
    delays: dict[str, Any] = {}
    repeat = opts.rounds_or(variant.rounds)
    for delay_ms in opts.delays_or(variant.delays):
        sim = await h.simulator(delay_ms)
        rounds: list[dict[str, Any]] = []
        for round_ in range(repeat):
            pair: dict[str, Any] = {}
            for subject in SUBJECTS:
                pair[subject] = row = await _one(h, variant, subject, delay_ms, sim, round_)
                print(f"  {delay_ms:>4} ms  {subject:<8} {fmt(row['commands_per_s'], '.0f')} "
                      f"cmd/s, p50 {fmt(row['p50_ms'], '.0f')} ms, p99 {fmt(row['p99_ms'], '.0f')}"
                      f" ms, {row['results']}/{row['commands']} results"
                      + (f"  FAILED: {row['failure']}" if row["failure"] else ""), flush=True)
            pair["ratio"] = _ratio(pair["baseline"], pair["worker"])
            rounds.append(pair)
        await h.stop(sim.proc)
        entry: dict[str, Any] = {subject: _median(rounds, subject) for subject in SUBJECTS}
        entry["ratio"] = _ratio(entry["baseline"], entry["worker"])
        if repeat > 1:
            entry["round_ratios"] = [pair["ratio"] for pair in rounds]
            entry["rounds"] = rounds
        delays[str(delay_ms)] = entry
    at_target = delays.get(str(TARGET_DELAY_MS), {}).get("ratio")
    data = {
        "commands": commands, "users": commands, "command": variant.body_text,
        "shards": SHARDS, "prefetch": PREFETCH,
        "order": "per delay: one simulator process; baseline first, then worker"
                 + (f", alternating, {repeat} rounds (figures: median round)"
                    if repeat > 1 else "")
                 + "; each a fresh process on a purged queue",
        "repeat": repeat, "worker_env": recorded_env(_worker_env(h, None, variant)),
        "delays_ms": delays,
        "target": {
            "what": f"worker/baseline commands/s >= {TARGET_RATIO} at {TARGET_DELAY_MS} ms",
            "delay_ms": TARGET_DELAY_MS, "ratio_min": TARGET_RATIO, "ratio": at_target,
            "met": at_target is not None and at_target >= TARGET_RATIO,
        },
    }
    ok = all(d[s]["ok"] for d in delays.values() for s in SUBJECTS)
    return Outcome(variant.key, data, table(data), ok)


run = functools.partial(run_variant, THROUGHPUT)
run_scheduler = functools.partial(run_variant, SCHEDULER)


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
            cpus = " ".join(fmt(row[f"{k}_ms_per_command"], ".2f").rjust(w)
                            for k, w in zip(cpu, (5, 6, 5, 5, 5), strict=True))
            lines.append(
                f"{delay + ' ms':>6}  {subject:<8} {fmt(row['commands_per_s'], '.0f'):>6} "
                f"{fmt(row['p50_ms'], '.0f'):>7} {fmt(row['p99_ms'], '.0f'):>7} "
                f"{fmt(row['max_ms'], '.0f'):>7}  {_statuses(row):<12} "
                f"{fmt(row['publish_per_s'], '.0f'):>6} "
                f"{fmt(row.get('commands_per_call'), '.1f'):>8} |             {cpus}  "
                f"{fmt(row['machine_busy_share'], '.0%'):>4}")
            if gc := row.get("gc"):
                lines.append(f"{'':>6}  {subject} garbage collector: {gc['ms_per_command']} ms/cmd"
                             f" ({gc['total_seconds']} s; collections per generation "
                             f"{gc['collections']}, gen 2 {gc['seconds']['2']} s; "
                             f"{gc['tracked_objects']} objects tracked at exit)")
            if row["failure"]:
                lines.append(f"{'':>6}  FAILED: {row['failure']} (log: {row['log_file']})")
                lines += [f"{'':>6}  first of {row['log_lines']} log lines: {logged[:300]}"
                          for logged in row["log_sample"][:1]]
        rounds = rows.get("round_ratios")
        extra = (f" (medians; per round: {', '.join(fmt(r, '.3f') for r in rounds)})"
                 if rounds else "")
        lines.append(f"{delay + ' ms':>6}  {'ratio':<8} {fmt(rows['ratio'], '.3f'):>6}  "
                     f"worker cmd/s / baseline cmd/s{extra}")
    target = data["target"]
    verdict = ("MET" if target["met"] else "NOT MET") if target["ratio"] is not None else (
        f"NOT MEASURED (no successful run at {target['delay_ms']} ms)")
    lines.append(f"target: {target['what']}: ratio {fmt(target['ratio'], '.3f')} -> {verdict}")
    return "\n".join(lines)
