"""Scenario ``stop_load``: Stops through the Stop lane while 100,000 commands are backlogged.

1. A simulator answering after 100 ms, recording every request (``received_ms``).
2. **Before the worker starts**, 100,000 commands are published to
   ``lovense.commands`` for 10,000 users, 10 each, interleaved (command n is for
   user n mod 10,000, ``timeSec`` 2 + n div 10,000, Vibrate:5, mode server), so
   every user has commands spread over the whole backlog. Commands with the
   same ``timeSec`` for different users are identical, so the worker may merge
   them into comma-joined calls (its default, ``LOVENSE_BATCH_WINDOW_MS`` 20).
3. The worker starts (``LOVENSE_DEFAULT_TTL_MS`` = 1 h, everything else default)
   and drains the backlog. Once 5 % of the results are in, 100 Stops for
   distinct random users (seeded) go through :class:`worker.adapters.amqp.producer.Producer`,
   which routes them to ``lovense.stop``, evenly over 10 s, each stamped with
   ``x-lovense-published-ms`` just before it is published.
4. When every result is in, the simulator's request log gives, per Stop, the
   time the simulator received the Stop for its user (first ``Function Stop``
   call naming that uid) minus the Stop's publish stamp, and whether any
   command of that user reached the simulator after the Stop (every backlog
   command was published before every Stop, so any is a violation).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

import msgspec
from pamqp.commands import Basic

from bench import load
from bench.common import (
    SHARDS,
    check_delay,
    fmt,
    histogram,
    histogram_share_within,
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
from bench.procs import CpuMeter, Proc, Procs
from bench.scenario import Options, Outcome
from worker.adapters.amqp.producer import Producer
from worker.contract import topology

FULL: Final = 100_000
QUICK: Final = 10_000
PER_USER: Final = 10
STOPS_FULL: Final = 100
STOPS_QUICK: Final = 20
#: The Stops go out at random times (seeded) over the span in which, at the drain rate seen
#: until the first, the backlog's results would go from 5 % to 60 %: they sample most of the
#: drain (the worker's state, and its garbage, grow as it goes), not only its start.
START_SHARE: Final = 0.05
END_SHARE: Final = 0.60
DELAY_MS: Final = 100
TARGET_P99_MS: Final = 250.0
TTL_MS: Final = 3_600_000
SEED: Final = 20261126


def _body(uid: str, k: int) -> bytes:
    return msgspec.json.encode({"command": "Function", "uid": uid, "action": "Vibrate:5",
                                "timeSec": 2 + k, "mode": "server"})


async def _queued(session: load.Session) -> int:
    total = 0
    for index in range(SHARDS):
        queue = await session.listen.declare_queue(topology.shard_queue(index), passive=True)
        total += queue.declaration_result.message_count or 0
    return total


@dataclass
class StopRun:
    """One Stops-under-load run: its sizes and messages, and what it saw (shared with
    ``stop_poison``, which adds its poison messages to the same machinery)."""

    backlog: int
    users: int
    stops_n: int
    delay_ms: int
    tag: str
    uids: list[str]
    routes: list[tuple[str, str, bytes]]
    timeout: float
    stamps: dict[str, int] = field(default_factory=dict)
    stop_stamps: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (uid, ms)
    #: Ids the collector waits for that are not backlog commands (Stops, poison).
    others: set[str] = field(default_factory=set)
    publish_s: float = 0.0
    queued: int = 0
    ready_at: float = 0.0
    left_at: list[int] = field(default_factory=list)
    stops_from: float = 0.0
    stops_to: float = 0.0
    cpu: dict[str, float | None] = field(default_factory=dict)
    drained_s: float | None = None
    reason: str | None = None

    @classmethod
    def plan(cls, opts: Options, prefix: str) -> StopRun:
        """Size the run from the options: backlog, users, Stops, delay, timeout."""
        backlog = opts.size(FULL, QUICK)
        users = max(1, backlog // PER_USER)
        tag = f"{prefix}-{secrets.token_hex(4)}"
        uids = [f"{tag}-u{u:05d}" for u in range(users)]
        routes = [(f"{tag}-{n}", uids[n % users], _body(uids[n % users], n // users))
                  for n in range(backlog)]
        return cls(backlog=backlog, users=users,
                   stops_n=min(users, STOPS_QUICK if opts.quick else STOPS_FULL),
                   delay_ms=opts.delays_or((DELAY_MS,))[0], tag=tag, uids=uids, routes=routes,
                   timeout=opts.timeout_or(120 + backlog / 100))

    def messages(self) -> Iterator[tuple[str, bytes, Basic.Properties]]:
        """Yield the backlog's messages, each stamped just before it is sent."""
        for ident, key, body in self.routes:
            stamp = time.time_ns() // 1_000_000
            self.stamps[ident] = stamp
            yield key, body, load.properties(ident, stamp)

    def done(self, collector: load.Collector) -> int:
        """Return how many backlog results are in so far."""
        return len(collector.received) - sum(1 for i in self.others if i in collector.received)


class Rig(NamedTuple):
    """The run's simulator (recording), its ready event, and the worker's environment."""

    sim: Proc
    event: dict[str, Any]
    env: dict[str, str]


async def start(procs: Procs, opts: Options, run: StopRun) -> Rig:
    """Start the recording simulator and prepare the queues (purged) and the worker's env."""
    token = f"bench-{secrets.token_hex(8)}"
    sim, event = await procs.simulator(run.delay_ms, token, record=True)
    await check_delay(event["serverUrl"], run.delay_ms)
    await load.prepare(opts.amqp_url, SHARDS)
    await prepare_stop_lane(opts.amqp_url)
    env = worker_env(opts.amqp_url, event, extra={"LOVENSE_DEFAULT_TTL_MS": str(TTL_MS)},
                     opts=opts)
    return Rig(sim, event, env)


async def publish_backlog(s: load.Session, url: str, run: StopRun,
                          messages: Iterable[tuple[str, bytes, Basic.Properties]],
                          name: str) -> None:
    """Publish the backlog (``messages``) to lovense.commands before the worker starts."""
    await s.publish.get_exchange(topology.COMMANDS_EXCHANGE, ensure=True)
    began = time.time()
    async with FastPublisher(url, name=f"{name}-backlog") as publisher:
        await publisher.publish_messages(messages, topology.COMMANDS_EXCHANGE)
        await publisher.wait_confirmed()
    run.publish_s = time.time() - began
    run.queued = await _queued(s)
    print(f"  backlog published in {run.publish_s:.1f} s ({run.backlog / run.publish_s:.0f}/s); "
          f"{run.queued} in the shard queues", flush=True)


async def drive_stops(
    s: load.Session, procs: Procs, opts: Options, run: StopRun, rig: Rig, name: str, *,
    before_stop: Callable[[int], Awaitable[None]] | None = None,
    finished: Callable[[], bool] | None = None,
) -> Proc:
    """Start the worker, send the Stops on a clock while it drains, wait for ``finished``.

    ``before_stop(j)`` runs just before Stop j is stamped and published; ``finished``
    (default: every expected result in) ends the wait. Return the worker, still running.
    """
    collector = s.collector
    await sim_clear(rig.event["serverUrl"])
    worker = await procs.worker(name, rig.env, gc_stats=opts.gc_stats)
    run.ready_at = time.time()
    watch = watcher(worker, rig.sim)
    meter = CpuMeter({"worker": worker.pid, "simulator": rig.sim.pid})
    meter.start()
    # Stops on a clock, not on the results' progress: results stall while the worker
    # is paused (garbage collection), so progress-triggered Stops would never land in
    # a pause. The clock's span is set from the drain rate seen until the first Stop.
    reason = await wait_until(lambda: run.done(collector) >= START_SHARE * run.backlog,
                              run.timeout, watch, poll_s=0.05)
    rate = run.done(collector) / max(0.001, time.time() - run.ready_at)
    span = (END_SHARE - START_SHARE) * run.backlog / max(rate, 1.0)
    rng = random.Random(SEED)
    chosen = [run.uids[u] for u in rng.sample(range(run.users), run.stops_n)]
    offsets = sorted(rng.uniform(0, span) for _ in range(run.stops_n))
    run.stops_from = run.stops_to = time.time()
    if reason is None:
        async with Producer(opts.amqp_url) as producer:
            t0 = time.monotonic()
            for j, (uid, offset) in enumerate(zip(chosen, offsets, strict=True)):
                await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
                if (problem := watch()) is not None:
                    reason = problem
                    break
                if before_stop is not None:
                    await before_stop(j)
                ident = f"{run.tag}-stop-{j}"
                collector.expect([ident])
                run.others.add(ident)
                run.left_at.append(run.backlog - run.done(collector))
                stamp = time.time_ns() // 1_000_000
                run.stop_stamps[ident] = (uid, stamp)
                await producer.publish({"command": "Stop", "uid": uid}, message_id=ident,
                                       headers={topology.PUBLISHED_MS_HEADER: stamp})
                run.stops_to = time.time()
                if j == 0:
                    run.stops_from = run.stops_to
    left = run.left_at
    print(f"  {len(run.stop_stamps)} Stops published over {run.stops_to - run.stops_from:.1f} s, "
          f"with {left[0] if left else '?'} to {left[-1] if left else '?'} backlog "
          "commands unanswered", flush=True)
    if reason is None:
        reason = await wait_until(finished or collector.done.is_set, run.timeout, watch,
                                  poll_s=0.2)
    run.cpu = meter.stop()
    await asyncio.sleep(load.LINGER_S)
    run.drained_s = (collector.last_ms / 1000 - run.ready_at) if collector.received else None
    run.reason = reason
    return worker


async def run(procs: Procs, opts: Options) -> Outcome:
    """Backlog, worker, Stops under load; then latencies and ordering from the simulator."""
    plan = StopRun.plan(opts, "sl")
    print(f"  backlog {plan.backlog} commands for {plan.users} users, published before the "
          f"worker starts; {plan.stops_n} Stops at random times while (about) "
          f"{START_SHARE:.0%} to {END_SHARE:.0%} of the backlog's results come in; simulator "
          f"{plan.delay_ms} ms, recording", flush=True)
    rig = await start(procs, opts, plan)
    async with load.session(opts.amqp_url, "bench-stop-load", keep=True) as s:
        s.collector.expect(ident for ident, _, _ in plan.routes)
        await publish_backlog(s, opts.amqp_url, plan, plan.messages(), "bench-stop-load")
        worker = await drive_stops(s, procs, opts, plan, rig, "stop-load-worker")
    text = await scrape(worker)
    memory = worker.memory_kb()
    requests = await sim_requests(rig.event["serverUrl"])
    code = await procs.stop(worker)
    await procs.stop(rig.sim)
    data = figures(plan, rig, worker, s.collector, text, memory, requests, code)
    return Outcome("stop_load", data, table(data), all(data["checks"].values()))


def figures(run: StopRun, rig: Rig, worker: Proc, collector: load.Collector, text: str,
            memory: dict[str, int], requests: list[Any], code: int | None) -> dict[str, Any]:
    """Return the run's figures, checks and targets (results.json's ``stop_load`` shape)."""
    data = _analyse(run.routes, run.stamps, run.stop_stamps, collector, requests, run.backlog,
                    run.users)
    gc_line = next((line for line in worker.log_lines()
                    if line.startswith('{"event": "bench_gc_stats')), None)
    data["gc"] = _gc_overlap(json.loads(gc_line), data["stops_detail"]) if gc_line else None
    stop_hist = histogram(text, "lovense_worker_stop_seconds")
    cpu, left_at, drained_s = run.cpu, run.left_at, run.drained_s
    data.update({
        "backlog": run.backlog,
        "users": run.users,
        "commands_per_user": PER_USER,
        "published": "before the worker started",
        "backlog_publish_s": round(run.publish_s, 1),
        "backlog_in_queues_at_start": run.queued,
        "stops": run.stops_n,
        "stops_spread_s": round(run.stops_to - run.stops_from, 1),
        "stops_from_to_share_of_results": [START_SHARE, END_SHARE],
        "backlog_unanswered_at_stops": [left_at[0], left_at[-1]] if left_at else None,
        "simulator_delay_ms": run.delay_ms,
        "worker_env": recorded_env(rig.env),
        "worker_ready_s": None if worker.ready_s is None else round(worker.ready_s, 2),
        "drain_s": None if drained_s is None else round(drained_s, 1),
        "commands_per_s": None if not drained_s else round(run.backlog / drained_s, 1),
        "worker_cpu_ms_per_command": None if cpu.get("worker") is None
            else round((cpu["worker"] or 0.0) * 1000 / run.backlog, 3),
        "machine_busy_share": None if cpu.get("machine_busy_share") is None
            else round(cpu["machine_busy_share"] or 0.0, 3),
        "upstream_calls_metric": metric(text, "lovense_worker_upstream_requests_total"),
        "worker_memory_mb_at_end": {k: round(v / 1024, 1) for k, v in memory.items()},
        "stop_seconds_metric": stop_hist,
        "stop_seconds_metric_share_within_0_25": histogram_share_within(stop_hist, 0.25),
        "stop_seconds_metric_share_within_0_5": histogram_share_within(stop_hist, 0.5),
        "exit_code": code,
        "failure": run.reason,
        "log_file": str(worker.log),
    })
    data["checks"]["worker exited 0"] = code == 0
    data["checks"]["no run failure"] = run.reason is None
    p99 = data["stop_latency_ms"]["p99"]
    p99_met = None if p99 is None or data["stops_not_seen"] else p99 <= TARGET_P99_MS
    order_met = data["late_older_commands"] == 0
    data["target"] = {
        "latency": {"what": f"Stop publish -> simulator p99 <= {TARGET_P99_MS:g} ms",
                    "met": p99_met},
        "order": {"what": "no command published before a Stop reaches the simulator after it",
                  "met": order_met},
        "met": bool(p99_met and order_met),
    }
    return data


def _gc_overlap(gc: dict[str, Any], stops: list[dict[str, Any]]) -> dict[str, Any]:
    """Tell, for the slow Stops, whether a long garbage collection fell into their trip."""
    pauses = gc.pop("long_pauses", [])
    slow = []
    for stop in stops:
        if stop["to_simulator_ms"] is None or stop["to_simulator_ms"] <= 100:
            continue
        start, end = stop["published_ms"], stop["published_ms"] + stop["to_simulator_ms"]
        overlap = [p for p in pauses if p[0] < end and p[0] + p[1] > start]
        slow.append({**stop, "gc_pauses_ms": [p[1] for p in overlap],
                     "gc_generations": [p[2] for p in overlap]})
    return {**gc, "long_pauses_count": len(pauses),
            "long_pauses_ms_max": max((p[1] for p in pauses), default=None),
            "stops_over_100_ms": slow}


def _epoch_ms(text: str) -> float:
    """Return an RFC 3339 UTC time (a result's receivedAt) in epoch milliseconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def _order(calls: list[tuple[int, Any, list[str]]], stop_of: dict[str, tuple[str, int]],
           ) -> tuple[dict[str, tuple[int, int]], Counter[str], list[dict[str, Any]],
                      Counter[str]]:
    """Return, from the call log: each Stop'd user's first Stop call (log position,
    received ms), Stop calls per user, that user's commands arriving after it, and
    their commands arriving before it."""
    first_stop: dict[str, tuple[int, int]] = {}
    stop_calls: Counter[str] = Counter()
    late: list[dict[str, Any]] = []
    sent_before: Counter[str] = Counter()
    for index, req, got in calls:
        if req.body.get("action") == "Stop":
            for uid in got:
                if uid in stop_of:
                    stop_calls[uid] += 1
                    first_stop.setdefault(uid, (index, req.received_ms))
    for index, req, got in calls:
        if req.body.get("action") == "Stop":
            continue
        for uid in got:
            seen = first_stop.get(uid) if uid in stop_of else None
            if seen is None:
                continue  # not Stop'd, or its Stop never arrived (counted in stops_not_seen)
            if index > seen[0]:
                # Every backlog command was published before every Stop: any is older.
                k = int(req.body.get("timeSec", 0)) - 2
                late.append({"uid": uid, "command": k, "received_ms": req.received_ms,
                             "stop_received_ms": seen[1]})
            else:
                sent_before[uid] += 1
    return first_stop, stop_calls, late, sent_before


def _analyse(routes: list[tuple[str, str, bytes]], stamps: dict[str, int],
             stop_stamps: dict[str, tuple[str, int]], collector: load.Collector,
             requests: list[Any], backlog: int, users: int) -> dict[str, Any]:
    stop_of = {uid: (ident, stamp) for ident, (uid, stamp) in stop_stamps.items()}
    calls = server_calls(requests)
    first_stop, stop_calls, late, sent_before = _order(calls, stop_of)
    latencies = [first_stop[uid][1] - stamp for uid, (_, stamp) in stop_of.items()
                 if uid in first_stop]
    first_ms = min((stamp for _, stamp in stop_stamps.values()), default=0)
    detail = []
    for ident, (uid, stamp) in sorted(stop_stamps.items(), key=lambda kv: kv[1][1]):
        received = (collector.results.get(ident) or {}).get("receivedAt")
        detail.append({
            "published_ms": stamp, "at_s": round((stamp - first_ms) / 1000, 3),
            "to_simulator_ms": first_stop[uid][1] - stamp if uid in first_stop else None,
            "to_worker_received_ms": None if not received
                else round(_epoch_ms(str(received)) - stamp),
        })
    # Results of the Stop'd users' commands: sent before the Stop (ok) or superseded by it.
    stopped_cmds: Counter[str] = Counter()
    for ident, uid, _ in routes:
        if uid not in stop_of:
            continue
        result = collector.results.get(ident)
        if result is None:
            stopped_cmds["missing"] += 1
        elif result.get("status") == "superseded" and result.get("supersededBy") == stop_of[uid][0]:
            stopped_cmds["superseded by its Stop"] += 1
        else:
            stopped_cmds[str(result.get("status"))] += 1
    backlog_status = Counter(str(collector.results[i].get("status"))
                             for i, _, _ in routes if i in collector.results)
    stop_status = Counter(str(collector.results[i].get("status"))
                          for i in stop_stamps if i in collector.results)
    stop_result_ms = quantiles(collector.received[i] - stop_stamps[i][1]
                               for i in stop_stamps if i in collector.received)
    # Where a Stop's trip to its result went, from the result's own receivedAt/completedAt.
    stop_worker_ms = {
        field: quantiles(_epoch_ms(str(collector.results[i].get(field))) - stop_stamps[i][1]
                         for i in stop_stamps
                         if i in collector.results and collector.results[i].get(field))
        for field in ("receivedAt", "completedAt")
    }
    plain_calls = [len(got) for _, req, got in calls if req.body.get("action") != "Stop"]
    checks = {
        "every command and Stop has one result": collector.duplicates == 0
            and all(i in collector.received for i, _, _ in routes)
            and all(i in collector.received for i in stop_stamps),
        "every Stop ok": stop_status.get("ok", 0) == len(stop_stamps),
        "Stop'd users' commands: ok before the Stop or superseded by it": set(stopped_cmds)
            <= {"ok", "superseded by its Stop"},
        "other users' commands all ok": backlog_status.get("ok", 0)
            == backlog - sum(stopped_cmds.values()) + stopped_cmds.get("ok", 0),
    }
    return {
        "stop_latency_ms": quantiles(latencies),
        "stop_latencies_ms": sorted(latencies),
        "stops_detail": detail,
        "stop_publish_to_result_ms": stop_result_ms,
        "stop_publish_to_worker_received_ms": stop_worker_ms["receivedAt"],
        "stop_publish_to_worker_completed_ms": stop_worker_ms["completedAt"],
        "stops_not_seen": len(stop_of) - len(first_stop),
        "stop_calls_per_user_max": max(stop_calls.values(), default=0),
        "late_older_commands": len(late),
        "late_examples": late[:5],
        "stopped_users_commands": dict(stopped_cmds),
        "stopped_users_commands_sent_before_stop": sum(sent_before.values()),
        "backlog_by_status": dict(sorted(backlog_status.items())),
        "stop_by_status": dict(sorted(stop_status.items())),
        "simulator_requests": len(requests),
        "command_calls": len(plain_calls),
        "commands_per_call": round(sum(plain_calls) / len(plain_calls), 2) if plain_calls else None,
        "checks": checks,
    }


def table(data: dict[str, Any]) -> str:
    """Return the scenario's figures as text."""
    return "\n".join(figure_lines(data) + check_lines(data))


def figure_lines(data: dict[str, Any]) -> list[str]:
    """Return the table's lines of figures (``stop_poison`` adds its own after them)."""
    lat = data["stop_latency_ms"]
    res = data["stop_publish_to_result_ms"]
    t = data["target"]
    lines = [
        f"backlog {data['backlog']} commands for {data['users']} users, published "
        f"{data['published']} in {data['backlog_publish_s']} s; worker drained it in "
        f"{fmt(data['drain_s'])} s ({fmt(data['commands_per_s'])} cmd/s, "
        f"{fmt(data['commands_per_call'])} commands per call, worker CPU "
        f"{fmt(data['worker_cpu_ms_per_command'])} ms/cmd, busy "
        f"{fmt(data['machine_busy_share'], '.0%')}; worker RSS at the end "
        f"{fmt(data['worker_memory_mb_at_end'].get('VmRSS'))} MB, peak "
        f"{fmt(data['worker_memory_mb_at_end'].get('VmHWM'))} MB)",
        f"{data['stops']} Stops over {data['stops_spread_s']:g} s, from "
        f"{data['stops_from_to_share_of_results'][0]:.0%} to "
        f"{data['stops_from_to_share_of_results'][1]:.0%} of the backlog's results "
        f"({fmt((data['backlog_unanswered_at_stops'] or [None])[0])} to "
        f"{fmt((data['backlog_unanswered_at_stops'] or [None, None])[-1])} unanswered)",
        f"Stop publish -> simulator: p50 {fmt(lat['p50'])} ms, p99 {fmt(lat['p99'])} ms, max "
        f"{fmt(lat['max'])} ms ({lat['n']} seen, {data['stops_not_seen']} never) -> "
        f"{verdict(t['latency']['met'])} (<= {TARGET_P99_MS:g} ms)",
        f"Stop publish -> worker received (result's receivedAt) p50 "
        f"{fmt(data['stop_publish_to_worker_received_ms']['p50'])} ms, p99 "
        f"{fmt(data['stop_publish_to_worker_received_ms']['p99'])} ms; -> completedAt p50 "
        f"{fmt(data['stop_publish_to_worker_completed_ms']['p50'])} ms, p99 "
        f"{fmt(data['stop_publish_to_worker_completed_ms']['p99'])} ms",
        f"Stop publish -> result at the bench: p50 {fmt(res['p50'])} ms, p99 "
        f"{fmt(res['p99'])} ms; worker's "
        f"lovense_worker_stop_seconds (publish -> answer, includes the "
        f"{data['simulator_delay_ms']} ms delay): "
        f"{fmt(data['stop_seconds_metric_share_within_0_25'], '.0%')} <= 0.25 s, "
        f"{fmt(data['stop_seconds_metric_share_within_0_5'], '.0%')} <= 0.5 s",
        f"older commands of Stop'd users reaching the simulator after their Stop: "
        f"{data['late_older_commands']} -> {verdict(t['order']['met'])}; their commands: "
        + ", ".join(f"{k} {v}" for k, v in data["stopped_users_commands"].items()),
        f"results: backlog {', '.join(f'{k} {v}' for k, v in data['backlog_by_status'].items())}"
        f"; Stops {', '.join(f'{k} {v}' for k, v in data['stop_by_status'].items())}",
    ]
    gc = data.get("gc")
    if gc:
        lines.append(f"worker garbage collector (--gc-stats): {gc['total_seconds']} s, "
                     f"collections {gc['collections']}, {gc['long_pauses_count']} pauses >= 10 ms "
                     f"(longest {fmt(gc['long_pauses_ms_max'])} ms)")
        for stop in gc["stops_over_100_ms"]:
            lines.append(f"  Stop at +{stop['at_s']} s: {stop['to_simulator_ms']} ms to the "
                         f"simulator, {fmt(stop['to_worker_received_ms'])} ms to the worker; GC "
                         f"pauses during it: {stop['gc_pauses_ms'] or 'none'} ms")
    return lines


def check_lines(data: dict[str, Any]) -> list[str]:
    """Return the table's closing lines: every check, and why the run failed if it did."""
    lines = [f"check: {name}: {'yes' if good else 'NO'}" for name, good in data["checks"].items()]
    if data["failure"]:
        lines.append(f"FAILED: {data['failure']} (log: {data['log_file']})")
    return lines
