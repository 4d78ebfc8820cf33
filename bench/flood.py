"""Scenario ``flood``: 10,000 Function commands for one uid at 1,000/s (bench/README.md)."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from typing import Any, Final

import msgspec

from bench import load
from bench.fastpub import FastPublisher
from bench.figures import check_lines, metric, per_unit, quantiles, recorded_env, render, rounded
from bench.harness import Harness, Outcome, server_calls
from bench.procs import watcher
from worker.config import Settings
from worker.contract import topology

FULL: Final = 10_000
QUICK: Final = 2_000
RATE_PER_S: Final = 1_000
DELAY_MS: Final = 0
LAST_TARGET_MS: Final = 1_000


async def run(h: Harness) -> Outcome:
    """Publish the flood, count the user's calls at the simulator, check every result."""
    commands, rate_per_s = h.opts.size(FULL, QUICK), h.opts.rate or RATE_PER_S
    delay_ms = (h.opts.delays or (DELAY_MS,))[0]
    tag = f"flood-{secrets.token_hex(4)}"
    uid = f"{tag}-user"
    sim = await h.simulator(delay_ms, record=True)
    env = h.worker_env(sim)
    settings = Settings.from_env(env)  # the worker's own reading: its rate and burst
    rate, burst = settings.server_rate, float(settings.server_burst)
    worker = await h.worker("flood-worker", env)
    await sim.clear()
    routes = [(f"{tag}-{n}", uid, msgspec.json.encode({
        "command": "Function", "uid": uid, "action": f"Vibrate:{n % 20 + 1}",
        "timeSec": 2 + n, "mode": "server"})) for n in range(commands)]
    async with load.session(h.opts.amqp_url, "bench-flood", keep=True) as s:
        s.collector.expect(ident for ident, _, _ in routes)
        await s.exchange(topology.COMMANDS_EXCHANGE)
        async with h.measure(worker, "worker", sim) as cpu:
            async with FastPublisher(h.opts.amqp_url, name="bench-flood-publisher") as publisher:
                pacing = await load.publish_paced(publisher, topology.COMMANDS_EXCHANGE, routes,
                                                  rate_per_s, s.collector)
            reason = await s.wait(h.opts.timeout_s or 90.0, watcher(worker, sim.proc))
        await asyncio.sleep(load.LINGER_S)
    text, requests = await worker.metrics(), await sim.requests()
    code = await h.stop(worker)
    await h.stop(sim.proc)
    received, stamps, results = s.collector.received, s.collector.stamps, s.collector.results
    by_time = {2 + n: n for n in range(commands)}
    calls = [(req, by_time.get(req.body.get("timeSec"))) for _, req, uids in
             server_calls(requests) if uid in uids]
    called = [n for _, n in calls if n is not None]
    first_pub, last_ident = stamps[routes[0][0]], routes[-1][0]
    last_call_ms = max((req.received_ms for req, _ in calls), default=None)
    duration_s = None if last_call_ms is None else (last_call_ms - first_pub) / 1000
    budget = None if duration_s is None else burst + rate * duration_s
    last_req = next((req for req, n in calls if n == commands - 1), None)
    last_to_sim = None if last_req is None else last_req.received_ms - stamps[last_ident]
    last_to_result = (None if last_ident not in received
                      else round(received[last_ident] - stamps[last_ident], 1))
    called_ids = {routes[n][0] for n in called}
    missing = commands - len(received)
    checks = {
        "every command has one result": missing == 0 and s.collector.duplicates == 0,
        "every command not sent is superseded (with supersededBy)": all(
            r.get("status") == "superseded" for i, r in results.items() if i not in called_ids)
            and all(r.get("supersededBy") for r in results.values()
                    if r.get("status") == "superseded"),
        "every command sent is ok": called_ids == {i for i, r in results.items()
                                                   if r.get("status") == "ok"},
        "no command called twice": len(called) == len(set(called)),
        "calls in publish order": called == sorted(called),
        "the last command was sent": last_req is not None, "worker exited 0": code == 0,
        "no run failure": reason is None,
    }
    calls_met = None if budget is None else len(calls) <= budget
    last_met = None if last_to_sim is None else (
        last_to_sim <= LAST_TARGET_MS and (last_to_result or 0) <= LAST_TARGET_MS)
    data: dict[str, Any] = {
        "commands": commands, "uid": "one (flood-*-user)", "publish_rate_per_s": rate_per_s,
        "pacing": pacing, "simulator_delay_ms": delay_ms, "worker_env": recorded_env(env),
        "server_rate": rate, "server_burst": burst, "calls": len(calls),
        "duration_s": rounded(duration_s), "budget_calls": rounded(budget, 1),
        "nominal_budget_calls": burst + rate * commands / rate_per_s,
        "last_command_to_simulator_ms": last_to_sim, "last_command_to_result_ms": last_to_result,
        "by_status": dict(sorted(Counter(str(r.get("status")) for r in results.values()).items())),
        "missing": missing, "duplicates": s.collector.duplicates,
        "publish_to_result_ms": quantiles(at - stamps[i] for i, at in received.items()),
        "coalesced_metric": metric(text, "lovense_worker_coalesced_total"),
        "upstream_metric": metric(text, "lovense_worker_upstream_requests_total"),
        "worker_cpu_ms_per_command": per_unit(cpu["worker"], commands),
        "cpu_s": {k: rounded(v, 2) for k, v in cpu.items() if k != "machine_busy_share"},
        "run_s": round(max(received.values(), default=0) / 1000 - first_pub / 1000, 2),
        "machine_busy_share": rounded(cpu["machine_busy_share"]),
        "exit_code": code, "failure": reason, "checks": checks, "log_file": str(worker.log),
        "target": {
            "calls": {"what": f"calls <= {burst:g} + {rate:g} x duration (first publish to "
                              "last call)", "met": calls_met},
            "last_command": {"what": "last command reaches the simulator and its result "
                                     f"within {LAST_TARGET_MS} ms of its publish", "met": last_met},
            "met": bool(calls_met and last_met),
        },
    }
    return Outcome("flood", data, table(data), all(checks.values()))


def table(data: dict[str, Any]) -> str:
    lines = render(
        data,
        "published {commands} commands for one uid at {pacing[rate_per_s]:.0f}/s over "
        "{pacing[span_s]:.1f} s (worst lag {pacing[worst_lag_ms]:.0f} ms behind schedule)",
        "calls at the simulator for the uid: {calls} over {duration_s:.2f} s; budget "
        "{server_burst:g} + {server_rate:g} x duration = {budget_calls:.1f} (nominal "
        "{nominal_budget_calls:g}) -> {target[calls][met]!v}",
        "last command: publish -> simulator {last_command_to_simulator_ms} ms, -> result "
        f"{{last_command_to_result_ms}} ms (target <= {LAST_TARGET_MS}) -> "
        "{target[last_command][met]!v}",
        "results: {by_status!c}; missing {missing}, duplicates {duplicates}; publish -> result "
        "p50 {publish_to_result_ms[p50]} ms, p99 {publish_to_result_ms[p99]} ms, max "
        "{publish_to_result_ms[max]} ms",
        "worker CPU {worker_cpu_ms_per_command:.3f} ms/command; CPU s over {run_s} s: "
        "{cpu_s!c}; machine busy {machine_busy_share:.0%}")
    return "\n".join(lines + check_lines(data))
