"""Scenario ``broadcast``: one Function message for 10,000 uids (bench/README.md)."""

from __future__ import annotations

import asyncio
import math
import secrets
from collections import Counter
from typing import Any, Final

import msgspec

from bench import load
from bench.figures import check_lines, fmt, metric, recorded_env, verdict
from bench.harness import Harness, Outcome, Simulator, server_calls
from bench.procs import Watch, watcher
from worker.config import Settings
from worker.contract import topology

FULL: Final = 10_000
QUICK: Final = 1_000
DELAYS: Final = (0, 100)
ROUNDS: Final = 3
TARGET_S: Final = 5.0
DEFAULT_PER_CALL: Final = 50


async def _round(h: Harness, sim: Simulator, watch: Watch, users: int, per_call: int,
                 round_: int) -> dict[str, Any]:
    tag = f"bc-{secrets.token_hex(4)}"
    uids = [f"{tag}-{i:05d}" for i in range(users)]
    body = msgspec.json.encode({"command": "Function", "uids": uids, "action": "Vibrate:5",
                                "timeSec": 3, "mode": "server"})
    ident = f"{tag}-msg"
    await sim.clear()
    async with load.session(h.opts.amqp_url, f"bench-broadcast-{round_}", keep=True) as s:
        s.collector.expect([ident])
        exchange = await s.exchange(topology.COMMANDS_EXCHANGE)
        await exchange.publish(s.collector.stamped(body, ident), routing_key=uids[0],
                               mandatory=True)
        reason = await s.wait(h.opts.timeout_s or 60.0, watch, poll_s=0.05)
        await asyncio.sleep(load.LINGER_S)
    stamp, result = s.collector.stamps[ident], s.collector.results.get(ident, {})
    arrived = s.collector.received.get(ident)
    calls = [(req, got) for _, req, got in server_calls(await sim.requests())
             if got and got[0].startswith(tag)]
    per_uid = Counter(uid for _, got in calls for uid in got)
    sizes = [len(got) for _, got in calls]
    times = [req.received_ms - stamp for req, _ in calls]
    return {
        "round": round_ + 1, "message_bytes": len(body),
        "seconds": None if arrived is None else round((arrived - stamp) / 1000, 3),
        "status": result.get("status"), "failed_uids": len(result.get("failedUids") or []),
        "result_attempts": result.get("attempts"), "calls": len(calls),
        "uids_per_call_max": max(sizes, default=None),
        "uids_per_call_min": min(sizes, default=None), "uids_called": len(per_uid),
        "uids_called_twice": sum(1 for n in per_uid.values() if n > 1),
        "first_call_ms": min(times, default=None), "last_call_ms": max(times, default=None),
        "calls_at_most": math.ceil(users / per_call), "failure": reason,
    }


async def run(h: Harness) -> Outcome:
    """Per delay: a simulator, a worker, ``rounds`` broadcast messages one after another."""
    users = h.opts.size(FULL, QUICK)
    rounds_n = max(h.opts.repeat or 1, ROUNDS)
    delays = h.opts.delays or DELAYS
    per_delay: dict[str, Any] = {}
    env: dict[str, str] = {}
    for delay_ms in delays:
        sim = await h.simulator(delay_ms, record=True)
        env = h.worker_env(sim)
        per_call = Settings.from_env(env).max_uids_per_call
        worker = await h.worker(f"broadcast-worker-{delay_ms}ms", env)
        rows = []
        for round_ in range(rounds_n):
            row = await _round(h, sim, watcher(worker, sim.proc), users, per_call, round_)
            rows.append(row)
            print(f"  {delay_ms:>4} ms  round {round_ + 1}: {fmt(row['seconds'], '.3f')} s, "
                  f"{row['calls']} calls, status {row['status']}", flush=True)
        text = await worker.metrics()
        code = await h.stop(worker)
        await h.stop(sim.proc)
        worst = max(rows, key=lambda r: (r["seconds"] is None, r["seconds"] or 0.0))
        per_delay[str(delay_ms)] = {
            "rounds": rows, "worst_seconds": worst["seconds"],
            "worst_calls": max(r["calls"] for r in rows),
            "upstream_metric": metric(text, "lovense_worker_upstream_requests_total"),
            "batch_uids_metric_count": metric(text, "lovense_worker_batch_uids_count"),
            "exit_code": code, "log_file": str(worker.log)}
    every = [r for d in per_delay.values() for r in d["rounds"]]
    checks = {
        "every round: one ok result": all(r["status"] == "ok" and r["failure"] is None
                                          for r in every),
        "every uid called exactly once": all(
            r["uids_called"] == users and r["uids_called_twice"] == 0 for r in every),
        "workers exited 0": all(d["exit_code"] == 0 for d in per_delay.values()),
    }
    max_calls = math.ceil(users / DEFAULT_PER_CALL)
    calls_met = all(d["worst_calls"] <= max_calls for d in per_delay.values())
    seconds_met = all(d["worst_seconds"] is not None and d["worst_seconds"] <= TARGET_S
                      for d in per_delay.values())
    data = {
        "uids": users, "rounds_per_delay": rounds_n, "worker_env": recorded_env(env),
        "delays_ms": per_delay, "checks": checks,
        "target": {"what": f"<= {max_calls} server calls and publish -> result <= {TARGET_S:g}"
                           " s, every round at every delay",
                   "calls_met": calls_met, "seconds_met": seconds_met,
                   "met": calls_met and seconds_met},
    }
    return Outcome("broadcast", data, table(data), all(checks.values()))


def table(data: dict[str, Any]) -> str:
    """Return the broadcast's figures as text."""
    lines = [f"{'delay':>6}  {'round':>5}  {'seconds':>7}  {'calls':>5}  {'uids/call':>9}  "
             f"{'first call ms':>13}  {'last call ms':>12}  status"]
    lines += [f"{delay + ' ms':>6}  {r['round']:>5}  {fmt(r['seconds'], '.3f'):>7}  "
              f"{r['calls']:>5}  {fmt(r['uids_per_call_min'])}-{fmt(r['uids_per_call_max']):<6}"
              f"  {fmt(r['first_call_ms']):>13}  {fmt(r['last_call_ms']):>12}  {r['status']}"
              + (f" FAILED: {r['failure']}" if r["failure"] else "")
              for delay, entry in data["delays_ms"].items() for r in entry["rounds"]]
    t = data["target"]
    return "\n".join(lines + check_lines(data) + [
        f"target: {t['what']}: calls {verdict(t['calls_met'])}, time {verdict(t['seconds_met'])}"])
