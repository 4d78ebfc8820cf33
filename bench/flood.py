"""Scenario ``flood``: 10,000 Function commands for ONE uid, paced at 1,000/s for 10 s.

A slider or a stream of tips: one user's commands arrive far faster than
Lovense may be called for that user. The worker must stay within the user's
server rate budget (``LOVENSE_SERVER_RATE`` / ``_BURST``, 2/s burst 4: at most
``burst + rate × duration`` calls), answer every command it does not send
``superseded`` (latest wins), and still deliver the last command promptly
(within 1 s of its publish).

Each command is ``Function`` ``Vibrate:<1..20>`` with its own ``timeSec``
(2 + n), so the simulator's request log (run with recording on) says exactly
which command each call carried; the simulator answers at once (0 ms).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from typing import Any, Final

import msgspec

from bench import load, profile
from bench.common import (
    SHARDS,
    check_delay,
    fmt,
    metric,
    prepare_stop_lane,
    quantiles,
    recorded_env,
    scrape,
    server_calls,
    sim_clear,
    sim_requests,
    verdict,
    wait_until,
    watcher,
    worker_env,
)
from bench.fastpub import FastPublisher
from bench.procs import CpuMeter, Procs, broker_pid
from bench.scenario import Options, Outcome
from worker.contract import topology

FULL: Final = 10_000
QUICK: Final = 2_000
RATE_PER_S: Final = 1_000
DELAY_MS: Final = 0
LAST_TARGET_MS: Final = 1_000
#: The worker's defaults (README: LOVENSE_SERVER_RATE, LOVENSE_SERVER_BURST).
DEFAULT_RATE: Final = 2.0
DEFAULT_BURST: Final = 4.0


def _body(uid: str, n: int) -> bytes:
    return msgspec.json.encode({
        "command": "Function", "uid": uid, "action": f"Vibrate:{n % 20 + 1}",
        "timeSec": 2 + n, "mode": "server",
    })


async def run(procs: Procs, opts: Options) -> Outcome:
    """Publish the flood, count the user's calls at the simulator, check every result."""
    commands = opts.size(FULL, QUICK)
    rate_per_s = opts.rate or RATE_PER_S
    delay_ms = opts.delays_or((DELAY_MS,))[0]
    token = f"bench-{secrets.token_hex(8)}"
    tag = f"flood-{secrets.token_hex(4)}"
    uid = f"{tag}-user"
    print(f"  {commands} commands for one uid at {rate_per_s:g}/s "
          f"({commands / rate_per_s:.0f} s), simulator {delay_ms} ms, recording", flush=True)

    sim, event = await procs.simulator(delay_ms, token, record=True)
    await check_delay(event["serverUrl"], delay_ms)
    await load.prepare(opts.amqp_url, SHARDS)
    await prepare_stop_lane(opts.amqp_url)
    env = worker_env(opts.amqp_url, event, opts=opts)
    rate = float(env.get("LOVENSE_SERVER_RATE", DEFAULT_RATE))
    burst = float(env.get("LOVENSE_SERVER_BURST", DEFAULT_BURST))
    worker = await procs.worker("flood-worker", env, gc_stats=opts.gc_stats)
    await sim_clear(event["serverUrl"])
    watch = watcher(worker, sim)

    routes = [(f"{tag}-{n}", uid, _body(uid, n)) for n in range(commands)]
    stamps: dict[str, int] = {}
    meter = CpuMeter({"worker": worker.pid, "simulator": sim.pid, "broker": broker_pid()})
    spy = None
    if opts.profile:
        spy = await profile.attach(procs, worker, opts.log_dir / "flood-worker.pyspy.txt")
    async with load.session(opts.amqp_url, "bench-flood", keep=True) as s:
        s.collector.expect(ident for ident, _, _ in routes)
        await s.publish.get_exchange(topology.COMMANDS_EXCHANGE, ensure=True)
        async with FastPublisher(opts.amqp_url, name="bench-flood-publisher") as publisher:
            meter.start()
            pacing = await load.publish_paced_fast(publisher, topology.COMMANDS_EXCHANGE,
                                                   routes, rate_per_s, stamps)
        reason = await wait_until(s.collector.done.is_set, opts.timeout_or(90.0), watch)
        cpu = meter.stop()
        await asyncio.sleep(load.LINGER_S)
        collector = s.collector
    summary = None
    if spy is not None:
        await profile.detach(procs, spy)
        raw = opts.log_dir / "flood-worker.pyspy.txt"
        summary = profile.summarize(raw, None if cpu["worker"] is None
                                    else cpu["worker"] * 1000 / commands, commands)
    text = await scrape(worker)
    requests = await sim_requests(event["serverUrl"])
    code = await procs.stop(worker)
    await procs.stop(sim)
    gc_line = next((line for line in worker.log_lines()
                    if line.startswith('{"event": "bench_gc_stats')), None)
    gc = json.loads(gc_line) if gc_line else None
    if gc is not None:
        pauses = gc.pop("long_pauses", [])
        gc["ms_per_command"] = round(gc["total_seconds"] * 1000 / commands, 3)
        gc["long_pauses_ms_max"] = max((p[1] for p in pauses), default=None)

    # ---- what reached the simulator for this uid
    by_time = {2 + n: n for n in range(commands)}
    calls = [(req, by_time.get(req.body.get("timeSec"))) for _, req, uids in
             server_calls(requests) if uid in uids]
    called = [n for _, n in calls if n is not None]
    first_pub = stamps[routes[0][0]]
    last_ident = routes[-1][0]
    last_call_ms = max((req.received_ms for req, _ in calls), default=None)
    duration_s = None if last_call_ms is None else (last_call_ms - first_pub) / 1000
    budget = None if duration_s is None else burst + rate * duration_s
    nominal = burst + rate * commands / rate_per_s
    last_req = next((req for req, n in calls if n == commands - 1), None)
    last_to_sim = None if last_req is None else last_req.received_ms - stamps[last_ident]
    last_to_result = (None if last_ident not in collector.received
                      else round(collector.received[last_ident] - stamps[last_ident], 1))

    # ---- every command's result
    status = Counter(str(r.get("status")) for r in collector.results.values())
    ok_ids = {ident for ident, r in collector.results.items() if r.get("status") == "ok"}
    called_ids = {routes[n][0] for n in called}
    superseded_ok = all(r.get("supersededBy") for r in collector.results.values()
                        if r.get("status") == "superseded")
    missing = commands - len(collector.received)
    unsent_not_superseded = sum(1 for ident, r in collector.results.items()
                                if ident not in called_ids and r.get("status") != "superseded")
    latencies = quantiles(at - stamps[i] for i, at in collector.received.items())
    checks = {
        "every command has one result": missing == 0 and collector.duplicates == 0,
        "every command not sent is superseded (with supersededBy)":
            unsent_not_superseded == 0 and superseded_ok,
        "every command sent is ok": ok_ids == called_ids,
        "no command called twice": len(called) == len(set(called)),
        "calls in publish order": called == sorted(called),
        "the last command was sent": last_req is not None,
        "worker exited 0": code == 0,
        "no run failure": reason is None,
    }
    calls_met = None if budget is None else len(calls) <= budget
    last_met = None if last_to_sim is None else (
        last_to_sim <= LAST_TARGET_MS and (last_to_result or 0) <= LAST_TARGET_MS)
    data: dict[str, Any] = {
        "commands": commands,
        "uid": "one (flood-*-user)",
        "publish_rate_per_s": rate_per_s,
        "pacing": pacing,
        "simulator_delay_ms": delay_ms,
        "worker_env": recorded_env(env),
        "server_rate": rate,
        "server_burst": burst,
        "calls": len(calls),
        "duration_s": None if duration_s is None else round(duration_s, 3),
        "budget_calls": None if budget is None else round(budget, 1),
        "nominal_budget_calls": nominal,
        "last_command_to_simulator_ms": last_to_sim,
        "last_command_to_result_ms": last_to_result,
        "by_status": dict(sorted(status.items())),
        "missing": missing,
        "duplicates": collector.duplicates,
        "publish_to_result_ms": latencies,
        "coalesced_metric": metric(text, "lovense_worker_coalesced_total"),
        "upstream_metric": metric(text, "lovense_worker_upstream_requests_total"),
        "worker_cpu_ms_per_command": None if cpu["worker"] is None
            else round(cpu["worker"] * 1000 / commands, 3),
        "cpu_s": {k: None if v is None else round(v, 2) for k, v in cpu.items()
                  if k != "machine_busy_share"},
        "run_s": round((max(collector.received.values(), default=0) / 1000)
                       - stamps[routes[0][0]] / 1000, 2),
        "profiles": {"worker during the flood (µs per command)": summary},
        "gc": gc,
        "machine_busy_share": None if cpu["machine_busy_share"] is None
            else round(cpu["machine_busy_share"], 3),
        "exit_code": code,
        "failure": reason,
        "checks": checks,
        "log_file": str(worker.log),
        "target": {
            "calls": {"what": f"calls <= {burst:g} + {rate:g} x duration (first publish to "
                              "last call)", "met": calls_met},
            "last_command": {"what": f"last command reaches the simulator and its result "
                                     f"within {LAST_TARGET_MS} ms of its publish",
                             "met": last_met},
            "met": bool(calls_met and last_met),
        },
    }
    return Outcome("flood", data, table(data), all(checks.values()))


def table(data: dict[str, Any]) -> str:
    """Return the flood's figures as text."""
    p = data["pacing"]
    lat = data["publish_to_result_ms"]
    lines = [
        f"published {data['commands']} commands for one uid at {p['rate_per_s']:.0f}/s "
        f"over {p['span_s']:.1f} s (worst lag {p['worst_lag_ms']:.0f} ms behind schedule)",
        f"calls at the simulator for the uid: {data['calls']} over {fmt(data['duration_s'], '.2f')}"
        f" s; budget {data['server_burst']:g} + {data['server_rate']:g} x duration = "
        f"{fmt(data['budget_calls'], '.1f')} (nominal {data['nominal_budget_calls']:g}) -> "
        f"{verdict(data['target']['calls']['met'])}",
        f"last command: publish -> simulator {fmt(data['last_command_to_simulator_ms'])} ms, "
        f"-> result {fmt(data['last_command_to_result_ms'])} ms (target <= {LAST_TARGET_MS}) -> "
        f"{verdict(data['target']['last_command']['met'])}",
        f"results: {', '.join(f'{k} {v}' for k, v in data['by_status'].items())}; missing "
        f"{data['missing']}, duplicates {data['duplicates']}; publish -> result p50 "
        f"{fmt(lat['p50'])} ms, p99 {fmt(lat['p99'])} ms, max {fmt(lat['max'])} ms",
        f"worker CPU {fmt(data['worker_cpu_ms_per_command'], '.3f')} ms/command; CPU seconds "
        f"over the {data['run_s']} s run: "
        + ", ".join(f"{k} {fmt(v)}" for k, v in data["cpu_s"].items())
        + f"; machine busy {fmt(data['machine_busy_share'], '.0%')}",
    ]
    if data.get("gc"):
        gc = data["gc"]
        lines.append(f"worker garbage collector (--gc-stats): {gc['ms_per_command']} ms/command "
                     f"({gc['total_seconds']} s, collections {gc['collections']}, longest pause "
                     f"{fmt(gc['long_pauses_ms_max'])} ms)")
    lines += [f"check: {name}: {'yes' if good else 'NO'}" for name, good in data["checks"].items()]
    if data["failure"]:
        lines.append(f"FAILED: {data['failure']} (log: {data['log_file']})")
    return "\n".join(lines)
