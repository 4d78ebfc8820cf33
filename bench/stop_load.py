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
   which routes them to ``lovense.stop``, at random times (below), each stamped
   with ``x-lovense-published-ms`` just before it is published.
4. When every result is in, the simulator's request log gives, per Stop, the
   time the simulator received the Stop for its user (first ``Function Stop``
   call naming that uid) minus the Stop's publish stamp, and whether any
   command of that user reached the simulator after the Stop (every backlog
   command was published before every Stop, so any is a violation).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import msgspec

from bench import figures as fig
from bench import load
from bench.fastpub import FastPublisher, Message
from bench.harness import SHARDS, Harness, Outcome, SimRequest, Simulator, server_calls
from bench.procs import CpuMeter, Proc, wait_until, watcher
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


@dataclass
class StopRun:
    """One Stops-under-load run: its plan, its simulator, and what it saw (shared with
    ``stop_poison``, which adds its poison messages to the same machinery)."""

    h: Harness
    backlog: int
    users: int
    stops_n: int
    delay_ms: int
    tag: str
    uids: list[str]
    routes: list[load.Route]
    timeout: float
    sim: Simulator
    env: dict[str, str]
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
    async def start(cls, h: Harness, prefix: str, what: str) -> StopRun:
        """Size the run from the options, say ``what`` it does, start the recording simulator."""
        backlog = h.opts.size(FULL, QUICK)
        users = max(1, backlog // PER_USER)
        tag = f"{prefix}-{secrets.token_hex(4)}"
        uids = [f"{tag}-u{u:05d}" for u in range(users)]
        routes = [(f"{tag}-{n}", uids[n % users], msgspec.json.encode({
            "command": "Function", "uid": uids[n % users], "action": "Vibrate:5",
            "timeSec": 2 + n // users, "mode": "server"})) for n in range(backlog)]
        stops_n = min(users, STOPS_QUICK if h.opts.quick else STOPS_FULL)
        delay_ms = h.opts.delays_or((DELAY_MS,))[0]
        print(what.format(backlog=backlog, users=users, stops=stops_n, delay=delay_ms),
              flush=True)
        sim = await h.simulator(delay_ms, record=True)
        return cls(h, backlog, users, stops_n, delay_ms, tag, uids, routes,
                   h.opts.timeout_or(120 + backlog / 100), sim,
                   h.worker_env(sim, {"LOVENSE_DEFAULT_TTL_MS": str(TTL_MS)}))

    def done(self, collector: load.Collector) -> int:
        """Return how many backlog results are in so far."""
        return len(collector.received) - sum(1 for i in self.others if i in collector.received)

    async def publish_backlog(self, s: load.Session, messages: Iterable[Message],
                              name: str) -> None:
        """Publish the backlog (``messages``) to lovense.commands before the worker starts."""
        await s.exchange(topology.COMMANDS_EXCHANGE)
        began = time.time()
        async with FastPublisher(self.h.opts.amqp_url, name=f"{name}-backlog") as publisher:
            await publisher.publish(messages, topology.COMMANDS_EXCHANGE)
            await publisher.wait_confirmed()
        self.publish_s = time.time() - began
        self.queued = await s.queued(topology.shard_queue(i) for i in range(SHARDS))
        print(f"  backlog published in {self.publish_s:.1f} s "
              f"({self.backlog / self.publish_s:.0f}/s); {self.queued} in the shard queues",
              flush=True)

    async def drive(self, s: load.Session, name: str, *,
                    before_stop: Callable[[int], Awaitable[None]] | None = None,
                    finished: Callable[[], bool] | None = None) -> Proc:
        """Start the worker, send the Stops on a clock while it drains, wait for ``finished``.

        ``before_stop(j)`` runs just before Stop j is stamped and published; ``finished``
        (default: every expected result in) ends the wait. Return the worker, still running.
        """
        collector = s.collector
        await self.sim.clear()
        worker = await self.h.worker(name, self.env)
        self.ready_at = time.time()
        watch = watcher(worker, self.sim.proc)
        meter = CpuMeter({"worker": worker.pid, "simulator": self.sim.proc.pid}).start()
        # Stops on a clock, not on the results' progress: results stall while the worker
        # is paused (garbage collection), so progress-triggered Stops would never land in
        # a pause. The clock's span is set from the drain rate seen until the first Stop.
        reason = await wait_until(lambda: self.done(collector) >= START_SHARE * self.backlog,
                                  self.timeout, watch, poll_s=0.05)
        rate = self.done(collector) / max(0.001, time.time() - self.ready_at)
        span = (END_SHARE - START_SHARE) * self.backlog / max(rate, 1.0)
        rng = random.Random(SEED)
        chosen = [self.uids[u] for u in rng.sample(range(self.users), self.stops_n)]
        offsets = sorted(rng.uniform(0, span) for _ in range(self.stops_n))
        self.stops_from = self.stops_to = time.time()
        if reason is None:
            async with Producer(self.h.opts.amqp_url) as producer:
                t0 = time.monotonic()
                for j, (uid, offset) in enumerate(zip(chosen, offsets, strict=True)):
                    await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
                    if (reason := watch()) is not None:
                        break
                    if before_stop is not None:
                        await before_stop(j)
                    ident = f"{self.tag}-stop-{j}"
                    collector.expect([ident])
                    self.others.add(ident)
                    self.left_at.append(self.backlog - self.done(collector))
                    stamp = load.now_ms()
                    self.stop_stamps[ident] = (uid, stamp)
                    await producer.publish({"command": "Stop", "uid": uid}, message_id=ident,
                                           headers={topology.PUBLISHED_MS_HEADER: stamp})
                    self.stops_to = time.time()
                    if j == 0:
                        self.stops_from = self.stops_to
        left: list[Any] = self.left_at or ["?"]
        print(f"  {len(self.stop_stamps)} Stops published over "
              f"{self.stops_to - self.stops_from:.1f} s, with {left[0]} to {left[-1]} backlog "
              "commands unanswered", flush=True)
        if reason is None:
            reason = await wait_until(finished or collector.done.is_set, self.timeout, watch)
        self.cpu = meter.stop()
        await asyncio.sleep(load.LINGER_S)
        self.drained_s = (collector.last_ms / 1000 - self.ready_at) if collector.received else None
        self.reason = reason
        return worker


async def run(h: Harness) -> Outcome:
    """Backlog, worker, Stops under load; then latencies and ordering from the simulator."""
    plan = await StopRun.start(h, "sl", (
        "  backlog {backlog} commands for {users} users, published before the worker starts; "
        f"{{stops}} Stops at random times while (about) {START_SHARE:.0%} to {END_SHARE:.0%} "
        "of the backlog's results come in; simulator {delay} ms, recording"))
    async with load.session(h.opts.amqp_url, "bench-stop-load", keep=True) as s:
        s.collector.expect(ident for ident, _, _ in plan.routes)
        await plan.publish_backlog(s, s.collector.messages(plan.routes), "bench-stop-load")
        worker = await plan.drive(s, "stop-load-worker")
    text, memory, requests = await worker.metrics(), worker.memory_kb(), await plan.sim.requests()
    code = await h.stop(worker)
    await h.stop(plan.sim.proc)
    data = figures(plan, worker, s.collector, text, memory, requests, code)
    return Outcome("stop_load", data, table(data), all(data["checks"].values()))


def figures(run: StopRun, worker: Proc, collector: load.Collector, text: str,
            memory: dict[str, int], requests: list[SimRequest], code: int | None
            ) -> dict[str, Any]:
    """Return the run's figures, checks and targets (results.json's ``stop_load`` shape)."""
    data = _analyse(run, collector, requests)
    gc = worker.event("bench_gc_stats")
    data["gc"] = None if gc is None else _gc_overlap(gc, data["stops_detail"])
    stop_hist = fig.histogram(text, "lovense_worker_stop_seconds")
    cpu, left_at, drained_s = run.cpu, run.left_at, run.drained_s
    data.update({
        "backlog": run.backlog, "users": run.users, "commands_per_user": PER_USER,
        "published": "before the worker started", "backlog_publish_s": round(run.publish_s, 1),
        "backlog_in_queues_at_start": run.queued, "stops": run.stops_n,
        "stops_spread_s": round(run.stops_to - run.stops_from, 1),
        "stops_from_to_share_of_results": [START_SHARE, END_SHARE],
        "backlog_unanswered_at_stops": [left_at[0], left_at[-1]] if left_at else None,
        "simulator_delay_ms": run.delay_ms, "worker_env": fig.recorded_env(run.env),
        "worker_ready_s": fig.rounded(worker.ready_s, 2), "drain_s": fig.rounded(drained_s, 1),
        "commands_per_s": None if not drained_s else round(run.backlog / drained_s, 1),
        "worker_cpu_ms_per_command": fig.per_unit(cpu.get("worker"), run.backlog),
        "machine_busy_share": fig.rounded(cpu.get("machine_busy_share")),
        "upstream_calls_metric": fig.metric(text, "lovense_worker_upstream_requests_total"),
        "worker_memory_mb_at_end": fig.mb(memory), "stop_seconds_metric": stop_hist,
        "stop_seconds_metric_share_within_0_25": fig.share_within(stop_hist, 0.25),
        "stop_seconds_metric_share_within_0_5": fig.share_within(stop_hist, 0.5),
        "exit_code": code, "failure": run.reason, "log_file": str(worker.log),
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


def _epoch_ms(text: Any) -> float:
    """Return an RFC 3339 UTC time (a result's receivedAt) in epoch milliseconds."""
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() * 1000


def _order(calls: list[tuple[int, SimRequest, list[str]]], stop_of: dict[str, tuple[str, int]],
           ) -> tuple[dict[str, tuple[int, int]], Counter[str], list[dict[str, Any]], int]:
    """Return, from the call log: each Stop'd user's first Stop call (log position,
    received ms), Stop calls per user, that user's commands arriving after it, and
    how many of their commands arrived before it."""
    first_stop: dict[str, tuple[int, int]] = {}
    stop_calls: Counter[str] = Counter()
    for index, req, got in calls:
        if req.body.get("action") == "Stop":
            for uid in (u for u in got if u in stop_of):
                stop_calls[uid] += 1
                first_stop.setdefault(uid, (index, req.received_ms))
    late: list[dict[str, Any]] = []
    sent_before = 0
    for index, req, got in calls:
        if req.body.get("action") == "Stop":
            continue
        # A user not Stop'd, or whose Stop never arrived (counted in stops_not_seen): skipped.
        for uid, seen in ((u, first_stop[u]) for u in got if u in first_stop):
            if index > seen[0]:  # every backlog command was published before every Stop
                late.append({"uid": uid, "command": int(req.body.get("timeSec", 0)) - 2,
                             "received_ms": req.received_ms, "stop_received_ms": seen[1]})
            else:
                sent_before += 1
    return first_stop, stop_calls, late, sent_before


def _analyse(run: StopRun, collector: load.Collector,
             requests: list[SimRequest]) -> dict[str, Any]:
    stop_stamps, results, got = run.stop_stamps, collector.results, collector.received
    stop_of = {uid: (ident, stamp) for ident, (uid, stamp) in stop_stamps.items()}
    calls = server_calls(requests)
    first_stop, stop_calls, late, sent_before = _order(calls, stop_of)
    first_ms = min((stamp for _, stamp in stop_stamps.values()), default=0)
    detail = [{
        "published_ms": stamp, "at_s": round((stamp - first_ms) / 1000, 3),
        "to_simulator_ms": first_stop[uid][1] - stamp if uid in first_stop else None,
        "to_worker_received_ms": round(_epoch_ms(received) - stamp)
            if (received := (results.get(ident) or {}).get("receivedAt")) else None,
    } for ident, (uid, stamp) in sorted(stop_stamps.items(), key=lambda kv: kv[1][1])]
    # Results of the Stop'd users' commands: sent before the Stop (ok) or superseded by it.
    stopped_cmds: Counter[str] = Counter()
    for ident, uid, _ in (route for route in run.routes if route[1] in stop_of):
        result = results.get(ident)
        if result is None:
            stopped_cmds["missing"] += 1
        elif result.get("status") == "superseded" and result.get("supersededBy") == stop_of[uid][0]:
            stopped_cmds["superseded by its Stop"] += 1
        else:
            stopped_cmds[str(result.get("status"))] += 1
    backlog_status = Counter(str(results[i].get("status")) for i, _, _ in run.routes
                             if i in results)
    stop_status = Counter(str(results[i].get("status")) for i in stop_stamps if i in results)
    # Where a Stop's trip to its result went, from the result's own receivedAt/completedAt.
    stop_worker_ms = {key: fig.quantiles(_epoch_ms(results[i][key]) - stop_stamps[i][1]
                                     for i in stop_stamps if (results.get(i) or {}).get(key))
                      for key in ("receivedAt", "completedAt")}
    plain_calls = [len(uids) for _, req, uids in calls if req.body.get("action") != "Stop"]
    latencies = sorted(first_stop[uid][1] - stamp for uid, (_, stamp) in stop_of.items()
                       if uid in first_stop)
    return {
        "stop_latency_ms": fig.quantiles(latencies),
        "stop_latencies_ms": latencies,
        "stops_detail": detail,
        "stop_publish_to_result_ms": fig.quantiles(got[i] - stop_stamps[i][1]
                                               for i in stop_stamps if i in got),
        "stop_publish_to_worker_received_ms": stop_worker_ms["receivedAt"],
        "stop_publish_to_worker_completed_ms": stop_worker_ms["completedAt"],
        "stops_not_seen": len(stop_of) - len(first_stop),
        "stop_calls_per_user_max": max(stop_calls.values(), default=0),
        "late_older_commands": len(late),
        "late_examples": late[:5],
        "stopped_users_commands": dict(stopped_cmds),
        "stopped_users_commands_sent_before_stop": sent_before,
        "backlog_by_status": dict(sorted(backlog_status.items())),
        "stop_by_status": dict(sorted(stop_status.items())),
        "simulator_requests": len(requests),
        "command_calls": len(plain_calls),
        "commands_per_call": round(sum(plain_calls) / len(plain_calls), 2) if plain_calls else None,
        "checks": {
            "every command and Stop has one result": collector.duplicates == 0
                and all(i in got for i, _, _ in run.routes) and all(i in got for i in stop_stamps),
            "every Stop ok": stop_status.get("ok", 0) == len(stop_stamps),
            "Stop'd users' commands: ok before the Stop or superseded by it": set(stopped_cmds)
                <= {"ok", "superseded by its Stop"},
            "other users' commands all ok": backlog_status.get("ok", 0)
                == run.backlog - sum(stopped_cmds.values()) + stopped_cmds.get("ok", 0),
        },
    }


def table(data: dict[str, Any]) -> str:
    """Return the scenario's figures as text."""
    return "\n".join(figure_lines(data) + fig.check_lines(data))


def figure_lines(data: dict[str, Any]) -> list[str]:
    """Return the table's lines of figures (``stop_poison`` adds its own after them)."""
    lines = fig.render(
        data,
        "backlog {backlog} commands for {users} users, published {published} in "
        "{backlog_publish_s} s; worker drained it in {drain_s} s ({commands_per_s} cmd/s, "
        "{commands_per_call} commands per call, worker CPU {worker_cpu_ms_per_command} ms/cmd, "
        "busy {machine_busy_share:.0%}; worker RSS at the end {worker_memory_mb_at_end[VmRSS]} "
        "MB, peak {worker_memory_mb_at_end[VmHWM]} MB)",
        "{stops} Stops over {stops_spread_s:g} s, from {stops_from_to_share_of_results[0]:.0%} "
        "to {stops_from_to_share_of_results[1]:.0%} of the backlog's results "
        "({backlog_unanswered_at_stops[0]} to {backlog_unanswered_at_stops[1]} unanswered)",
        "Stop publish -> simulator: p50 {stop_latency_ms[p50]} ms, p99 {stop_latency_ms[p99]} ms, "
        "max {stop_latency_ms[max]} ms ({stop_latency_ms[n]} seen, {stops_not_seen} never) -> "
        f"{{target[latency][met]!v}} (<= {TARGET_P99_MS:g} ms)",
        "Stop publish -> worker received (result's receivedAt) p50 "
        "{stop_publish_to_worker_received_ms[p50]} ms, p99 "
        "{stop_publish_to_worker_received_ms[p99]} ms; -> completedAt p50 "
        "{stop_publish_to_worker_completed_ms[p50]} ms, p99 "
        "{stop_publish_to_worker_completed_ms[p99]} ms",
        "Stop publish -> result at the bench: p50 {stop_publish_to_result_ms[p50]} ms, p99 "
        "{stop_publish_to_result_ms[p99]} ms; worker's lovense_worker_stop_seconds (publish -> "
        "answer, includes the {simulator_delay_ms} ms delay): "
        "{stop_seconds_metric_share_within_0_25:.0%} <= 0.25 s, "
        "{stop_seconds_metric_share_within_0_5:.0%} <= 0.5 s",
        "older commands of Stop'd users reaching the simulator after their Stop: "
        "{late_older_commands} -> {target[order][met]!v}; their commands: "
        "{stopped_users_commands!c}",
        "results: backlog {backlog_by_status!c}; Stops {stop_by_status!c}")
    if gc := data.get("gc"):
        lines += fig.render(gc, "worker garbage collector (--gc-stats): {total_seconds} s, "
                        "collections {collections}, {long_pauses_count} pauses >= 10 ms (longest "
                        "{long_pauses_ms_max} ms)")
        lines += [f"  Stop at +{s['at_s']} s: {s['to_simulator_ms']} ms to the simulator, "
                  f"{fig.fmt(s['to_worker_received_ms'])} ms to the worker; GC pauses during it: "
                  f"{s['gc_pauses_ms'] or 'none'} ms" for s in gc["stops_over_100_ms"]]
    return lines
