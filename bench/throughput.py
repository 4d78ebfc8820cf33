"""Scenarios ``throughput`` and ``scheduler``: N commands, baseline vs worker (bench/README.md)."""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

import msgspec

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
#: Everything is published at once, so the last commands wait as long as the run takes;
#: the default deadline (10 s) would expire them unsent, cheaper than the baseline's work.
WORKER_TTL_MS: Final = 3_600_000
_CPU: Final = (("cpu", 5), ("broker_cpu", 6), ("simulator_cpu", 5), ("bench_cpu", 5),
               ("others_cpu", 5))
_HEAD: Final = (f"{'delay':>6}  {'subject':<8} {'cmd/s':>6} {'p50 ms':>7} {'p99 ms':>7} "
                f"{'max ms':>7}  {'results':<12} {'pub/s':>6} {'cmd/call':>8} | CPU ms/cmd: "
                f"{'self':>5} {'rabbit':>6} {'sim':>5} {'bench':>5} {'other':>5}  {'busy':>4}")


@dataclass(frozen=True)
class Variant:
    """What distinguishes ``throughput`` from ``scheduler``."""

    key: str
    distinct: bool  # command n has timeSec 2 + n (else 3: identical commands may merge)
    body_text: str
    delays: tuple[int, ...]
    worker_env: tuple[tuple[str, str], ...] = ()  # ``--worker-env`` wins over them
    rounds: int = 1  # alternating rounds per delay (``--repeat`` wins); figures: the median


THROUGHPUT: Final = Variant("throughput", False, "Function Vibrate:5, timeSec 3, mode server "
                             "(identical: may merge)", (0, 100))
# Its ratio sits nearest its target, and one round on this shared machine can be a
# third off (a whole run slower, broker and bench included): three rounds.
SCHEDULER: Final = Variant("scheduler", True, "Function Vibrate:5, timeSec 2+n, mode server "
                            "(all distinct: nothing merges)", (100,),
                            (("LOVENSE_SERVER_MAX_RPS", "1000000"),), rounds=3)


def _worker_env(h: Harness, sim: Simulator | None, variant: Variant) -> dict[str, str]:
    return h.worker_env(sim, {"LOVENSE_DEFAULT_TTL_MS": str(WORKER_TTL_MS),
                              **dict(variant.worker_env)})


async def _drive(h: Harness, *, worker: bool, commands: int, tag: str, timeout: float,
                 watch: Watch, distinct: bool) -> dict[str, Any]:
    """Publish command n for uid ``bench-<n>`` for every n, collect the results."""
    routes = [(f"{tag}-{n}", f"bench-{n}" if worker else load.BASELINE_QUEUE, msgspec.json.encode(
        {"command": "Function", "uid": f"bench-{n}", "action": "Vibrate:5",
         "timeSec": 2 + n if distinct else 3, "mode": "server"})) for n in range(commands)]
    async with load.session(h.opts.amqp_url, "bench-load") as s:
        got = s.collector
        got.expect(ident for ident, _, _ in routes)
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
            reason += (f"; {len(got.received)} of {commands} results, {await s.queued(names)} "
                       "still queued (none: purged, or taken by tests on the same broker?)")
    latencies = sorted(at - got.stamps[i] for i, at in got.received.items())
    elapsed = (got.last_ms / 1000 - started) if got.received else 0.0
    missing = commands - len(got.received)
    if reason is None and (missing or got.duplicates or got.status.get("ok", 0) != commands):
        reason = "not every command got exactly one ok result"
    row: dict[str, Any] = {
        "commands": commands, "results": len(got.received),
        "by_status": dict(sorted(got.status.items())), "duplicates": got.duplicates,
        "strays": got.strays, "missing": missing, "elapsed_s": elapsed,
        "publish_s": published - started,
        "commands_per_s": commands / elapsed if elapsed > 0 and reason is None else 0.0,
        "publish_per_s": commands / (published - started) if published > started else 0.0,
        "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99),
        "max_ms": latencies[-1] if latencies else None, "failure": reason, "ok": reason is None,
    }
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


async def _one(h: Harness, variant: Variant, subject: str, delay_ms: int, sim: Simulator,
               round_: int) -> dict[str, Any]:
    """Run one subject once against the running simulator; return its figures."""
    commands = h.opts.size(FULL_COMMANDS, QUICK_COMMANDS)
    name = (f"{variant.key}-{subject}-{delay_ms}ms"
            + (f"-{round_ + 1}" if h.opts.rounds_or(variant.rounds) > 1 else ""))
    await load.prepare(h.opts.amqp_url, SHARDS)
    worker = subject == "worker"
    child = await (h.worker(name, _worker_env(h, sim, variant)) if worker
                   else h.baseline(name, sim))
    async with h.measure(child, "subject", sim) as cpu:
        row = await _drive(h, worker=worker, commands=commands,
                           tag=f"{name}-{secrets.token_hex(4)}", distinct=variant.distinct,
                           timeout=h.opts.timeout_s or 60 + commands / 100,
                           watch=watcher(child, sim.proc))
    calls = (metric(await child.metrics(), "lovense_worker_upstream_requests_total") if worker
             else commands)
    code = await h.stop(child)
    busy = cpu.pop("machine_busy_share")
    row.update({
        "cpu_ms_per_command": per_unit(cpu.pop("subject"), commands),
        **{f"{k}_cpu_ms_per_command": per_unit(v, commands) for k, v in cpu.items()},
        "machine_busy_share": rounded(busy), "server_calls": None if calls is None else int(calls),
        "commands_per_call": round(commands / calls, 2) if calls else None, "exit_code": code,
        "log_file": str(child.log),
    })
    if code not in (0, None) and row["failure"] is None:
        row.update(failure=f"{name} exited with code {code}", ok=False)
    return row


def _median(rounds: list[dict[str, Any]], subject: str) -> dict[str, Any]:
    """Return the round with the median commands/s of ``subject`` (a failed one if any)."""
    rows = sorted((pair[subject] for pair in rounds), key=lambda row: row["commands_per_s"])
    return next((row for row in rows if not row["ok"]), rows[(len(rows) - 1) // 2])


def _ratio(base: dict[str, Any], work: dict[str, Any]) -> float | None:
    if not (base["ok"] and work["ok"] and base["commands_per_s"]):
        return None
    return round(float(work["commands_per_s"]) / float(base["commands_per_s"]), 3)


async def run_variant(variant: Variant, h: Harness) -> Outcome:
    """Run the scenario: per delay, a simulator, then the baseline, then the worker."""
    commands, repeat = h.opts.size(FULL_COMMANDS, QUICK_COMMANDS), h.opts.rounds_or(variant.rounds)
    print(f"  {commands} commands for {commands} users: {variant.body_text}\n{_HEAD}", flush=True)
    delays: dict[str, Any] = {}
    for delay_ms in h.opts.delays or variant.delays:
        sim = await h.simulator(delay_ms)
        rounds: list[dict[str, Any]] = []
        for round_ in range(repeat):
            pair: dict[str, Any] = {}
            for subject in SUBJECTS:
                pair[subject] = await _one(h, variant, subject, delay_ms, sim, round_)
                print("\n".join(_row_lines(str(delay_ms), subject, pair[subject])), flush=True)
            rounds.append({**pair, "ratio": _ratio(pair["baseline"], pair["worker"])})
        await h.stop(sim.proc)
        entry: dict[str, Any] = {subject: _median(rounds, subject) for subject in SUBJECTS}
        entry["ratio"] = _ratio(entry["baseline"], entry["worker"])
        if repeat > 1:
            entry.update(round_ratios=[pair["ratio"] for pair in rounds], rounds=rounds)
        delays[str(delay_ms)] = entry
    at_target = delays.get(str(TARGET_DELAY_MS), {}).get("ratio")
    data = {
        "commands": commands, "users": commands, "command": variant.body_text, "shards": SHARDS,
        "prefetch": PREFETCH, "order": "per delay: one simulator process; baseline first, then "
        "worker" + (f", alternating, {repeat} rounds (figures: median round)" if repeat > 1
                    else "") + "; each a fresh process on a purged queue",
        "repeat": repeat, "worker_env": recorded_env(_worker_env(h, None, variant)),
        "delays_ms": delays, "target": {
            "what": f"worker/baseline commands/s >= {TARGET_RATIO} at {TARGET_DELAY_MS} ms",
            "delay_ms": TARGET_DELAY_MS, "ratio_min": TARGET_RATIO, "ratio": at_target,
            "met": at_target is not None and at_target >= TARGET_RATIO}}
    return Outcome(variant.key, data, table(data),
                   all(d[s]["ok"] for d in delays.values() for s in SUBJECTS))


run = functools.partial(run_variant, THROUGHPUT)
run_scheduler = functools.partial(run_variant, SCHEDULER)


def _row_lines(delay: str, subject: str, row: dict[str, Any]) -> list[str]:
    """Return one subject's table line (and why it failed, if it did)."""
    statuses = (", ".join(f"{k} {v}" for k, v in row["by_status"].items()) or "none") + "".join(
        f", {label} {row[key]}" for key, label in (("missing", "missing"), ("duplicates", "dup"))
        if row[key])
    cpus = " ".join(fmt(row[f"{k}_ms_per_command"], ".2f").rjust(w) for k, w in _CPU)
    lines = [f"{delay + ' ms':>6}  {subject:<8} {fmt(row['commands_per_s'], '.0f'):>6} "
             f"{fmt(row['p50_ms'], '.0f'):>7} {fmt(row['p99_ms'], '.0f'):>7} "
             f"{fmt(row['max_ms'], '.0f'):>7}  {statuses:<12} {fmt(row['publish_per_s'], '.0f'):>6}"
             f" {fmt(row.get('commands_per_call'), '.1f'):>8} |             {cpus}  "
             f"{fmt(row['machine_busy_share'], '.0%'):>4}"]
    if row["failure"]:
        lines.append(f"{'':>6}  FAILED: {row['failure']} (log: {row['log_file']})")
    return lines


def table(data: dict[str, Any]) -> str:
    """Return the scenario's figures as a text table."""
    lines = [_HEAD, "-" * len(_HEAD)]
    for delay, rows in data["delays_ms"].items():
        for subject in SUBJECTS:
            lines += _row_lines(delay, subject, rows[subject])
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
