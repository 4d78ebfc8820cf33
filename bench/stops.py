"""Scenarios ``stop_load`` (Stops while 100,000 commands are backlogged) and ``stop_poison``
(the same with poison on both lanes, then wide Stops and RSS); bench/README.md."""

from __future__ import annotations

import asyncio
import functools
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

import msgspec
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from bench import figures as fig
from bench import load
from bench.fastpub import FastPublisher, Message
from bench.harness import SHARDS, Harness, Outcome, SimRequest, Simulator, server_calls
from bench.procs import BenchError, Proc, cpu_meter, wait_until, watcher
from worker.adapters.amqp.producer import Producer
from worker.contract import topology

FULL: Final = 100_000
QUICK: Final = 10_000
PER_USER: Final = 10
STOPS: Final = (100, 20)  # full, quick
#: The Stops go out at random times (seeded) over the span in which, at the drain rate seen
#: until the first, the backlog's results would go from 5 % to 60 %: they sample most of the
#: drain (the worker's state, and its garbage, grow as it goes), not only its start.
START_SHARE: Final = 0.05
END_SHARE: Final = 0.60
DELAY_MS: Final = 100
TARGET_P99_MS: Final = 250.0
TTL_MS: Final = 3_600_000
SEED: Final = 20261126
POISON: Final = (1_000, 200)  # full, quick
WIDE_STOPS: Final = (100, 10)
WIDE_UIDS: Final = (10_000, 2_000)
TOY_CAP: Final = 32
TARGET_RSS_MB: Final = 50.0
MIB: Final = 1024 * 1024
BOMB: Final = b"[" * 1000 + b"]" * 1000
LONG_ID: Final = "id over 255 bytes"
UPSTREAM: Final = "lovense_worker_upstream_requests_total"


def _json(**fields: Any) -> bytes:
    return msgspec.json.encode(fields)


def _padded(uid: str, size: int) -> bytes:
    head = b'{"command":"Stop","uid":"%s","pad":"' % uid.encode()
    return head + b"x" * (size - len(head) - 2) + b'"}'


def _long_id(n: int) -> str:
    digits = f"{n:06d}"
    return "é" * (256 - len(digits)) + digits  # 256 characters, 506 UTF-8 bytes


def _long_id_body(lane: str, uid: str, n: int) -> bytes:
    extra = {} if lane == "stop" else {"action": "Vibrate:1", "timeSec": 2, "mode": "server"}
    return _json(command="Stop" if lane == "stop" else "Function", uid=uid, id=_long_id(n), **extra)


#: Poison kind -> its body (lane "commands" or "stop", uid, poison number).
KINDS: Final[dict[str, Callable[[str, str, int], bytes]]] = {
    "bomb as uid": lambda _l, _u, _n: b'{"uid":' + BOMB + b',"command":"Stop"}',
    "bomb as toy": lambda _l, u, _n: b'{"command":"Stop","uid":"%s","toy":%s}' % (u.encode(), BOMB),
    "bomb as id": lambda _l, u, _n: b'{"command":"Stop","uid":"%s","id":%s}' % (u.encode(), BOMB),
    "bomb as body": lambda _l, _u, _n: BOMB,
    LONG_ID: _long_id_body,
    "not JSON": lambda _l, _u, _n: b"this is not JSON {",
    "invalid UTF-8": lambda _l, _u, _n: b"\xff\xfe{",
    "1 MiB - 1 byte": lambda _l, u, _n: _padded(u, MIB - 1),
    "1 MiB + 1 byte": lambda _l, u, _n: _padded(u, MIB + 1),
    "100,000 toys": lambda _l, u, _n: _json(command="Stop", uid=u,
                                            toy=[f"t{k}" for k in range(100_000)]),
}


class Poison(NamedTuple):
    """One poison message (its body is built when it is published: some are 1 MiB)."""

    ident: str
    lane: str
    kind: str
    uid: str
    n: int

    def body(self) -> bytes:
        return KINDS[self.kind](self.lane, self.uid, self.n)


@dataclass
class StopRun:
    """One Stops-under-load run: its plan, its poison (none for ``stop_load``), what it saw."""

    h: Harness
    key: str
    backlog: int
    users: int
    stops_n: int
    delay_ms: int
    tag: str
    routes: list[load.Route]
    poisons: list[Poison]
    sim: Simulator
    env: dict[str, str]
    stop_stamps: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (uid, ms)
    sent: list[str] = field(default_factory=list)  # poison ids published
    dead: Counter[str] = field(default_factory=Counter)  # dead letters by message_id
    dead_reasons: dict[str, str] = field(default_factory=dict)
    publish_s: float = 0.0
    queued: int = 0
    ready_at: float = 0.0
    left_at: list[int] = field(default_factory=list)
    cpu: dict[str, float | None] = field(default_factory=dict)
    drained_s: float | None = None
    reason: str | None = None

    @property
    def spread_s(self) -> float:
        stamps = [ms for _, ms in self.stop_stamps.values()] or [0]
        return (max(stamps) - min(stamps)) / 1000

    @property
    def timeout(self) -> float:
        return self.h.opts.timeout_s or 120 + self.backlog / 100

    def lane(self, name: str) -> list[Poison]:
        return [p for p in self.poisons if p.lane == name]

    async def on_dead(self, message: AbstractIncomingMessage) -> None:
        ident = message.message_id or "(none)"
        self.dead[ident] += 1
        self.dead_reasons[ident] = str((message.headers or {}).get(topology.ERROR_HEADER, ""))[:200]
        await message.ack()

    def done(self, collector: load.Collector) -> int:
        """Return how many backlog results are in so far."""
        got = collector.received
        return len(got) - sum(1 for i in [*self.stop_stamps, *self.sent] if i in got)

    def finished(self, collector: load.Collector) -> bool:
        """Every backlog command and Stop answered; every poison message answered or dead."""
        got = collector.received
        return self.done(collector) + sum(1 for i in self.stop_stamps if i in got) == (
            self.backlog + len(self.stop_stamps)) and all(
                i in got or i in self.dead for i in self.sent)

    def messages(self, collector: load.Collector) -> Iterator[Message]:
        """Yield the backlog, the shard lane's poison interleaved, each stamped when sent."""
        shard, k = self.lane("commands"), 0
        for n, message in enumerate(collector.messages(self.routes)):
            while k < len(shard) and (k + 1) * self.backlog // (len(shard) + 1) <= n:
                yield shard[k].uid, shard[k].body(), collector.stamp(shard[k].ident)
                k += 1
            yield message
        yield from ((p.uid, p.body(), collector.stamp(p.ident)) for p in shard[k:])

    async def publish_backlog(self, s: load.Session) -> None:
        """Publish the backlog to lovense.commands before the worker starts."""
        await s.exchange(topology.COMMANDS_EXCHANGE)
        began = time.time()
        async with FastPublisher(self.h.opts.amqp_url, name=f"bench-{self.key}") as publisher:
            await publisher.publish(self.messages(s.collector), topology.COMMANDS_EXCHANGE)
            await publisher.wait_confirmed()
        self.publish_s = time.time() - began
        self.queued = await s.queued(topology.shard_queue(i) for i in range(SHARDS))
        print(f"  backlog published in {self.publish_s:.1f} s; {self.queued} in the shard queues",
              flush=True)

    async def drive(self, s: load.Session, stop_exchange: AbstractExchange | None) -> Proc:
        """Start the worker, send the Stops (each after its share of the lane's poison) on a
        clock (progress stalls in a pause: Stops would never land in one); return the worker."""
        collector = s.collector
        await self.sim.clear()
        worker = await self.h.worker(f"{self.key.replace('_', '-')}-worker", self.env)
        self.ready_at = time.time()
        watch = watcher(worker, self.sim.proc)
        meter = cpu_meter({"worker": worker.pid, "simulator": self.sim.proc.pid})
        reason = await wait_until(lambda: self.done(collector) >= START_SHARE * self.backlog,
                                  self.timeout, watch, poll_s=0.05)
        rate = self.done(collector) / max(0.001, time.time() - self.ready_at)
        span = (END_SHARE - START_SHARE) * self.backlog / max(rate, 1.0)
        rng = random.Random(SEED)
        chosen = [self.routes[u][1] for u in rng.sample(range(self.users), self.stops_n)]
        offsets = sorted(rng.uniform(0, span) for _ in range(self.stops_n))
        lane = self.lane("stop")
        if reason is None:
            async with Producer(self.h.opts.amqp_url) as producer:
                t0 = time.monotonic()
                for j, (uid, offset) in enumerate(zip(chosen, offsets, strict=True)):
                    await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
                    if (reason := watch()) is not None:
                        break
                    for p in lane[j :: self.stops_n]:
                        assert stop_exchange is not None
                        collector.expect([p.ident])
                        self.sent.append(p.ident)
                        await stop_exchange.publish(collector.stamped(p.body(), p.ident),
                                                    routing_key=p.uid, mandatory=True)
                    ident = f"{self.tag}-stop-{j}"
                    collector.expect([ident])
                    self.left_at.append(self.backlog - self.done(collector))
                    stamp = load.now_ms()
                    self.stop_stamps[ident] = (uid, stamp)
                    await producer.publish({"command": "Stop", "uid": uid}, message_id=ident,
                                           headers={topology.PUBLISHED_MS_HEADER: stamp})
        left: list[Any] = self.left_at or ["?"]
        print(f"  {len(self.stop_stamps)} Stops published over "
              f"{self.spread_s:.1f} s, with {left[0]} to {left[-1]} backlog "
              "commands unanswered", flush=True)
        if reason is None:
            reason = await wait_until(lambda: self.finished(collector), self.timeout, watch)
        self.cpu = meter()
        await asyncio.sleep(load.LINGER_S)
        self.drained_s = (collector.last_ms / 1000 - self.ready_at) if collector.received else None
        self.reason = reason
        return worker


async def run_stops(key: str, h: Harness) -> Outcome:
    """Backlog (with poison for ``stop_poison``), worker, Stops under load, phase 2; figures."""
    quick, backlog = h.opts.quick, h.opts.size(FULL, QUICK)
    users, tag = max(1, backlog // PER_USER), f"s{key[5]}-{secrets.token_hex(4)}"  # sl, sp
    uids = [f"{tag}-u{u:05d}" for u in range(users)]
    routes = [(f"{tag}-{n}", uids[n % users], _json(
        command="Function", uid=uids[n % users], action="Vibrate:5", timeSec=2 + n // users,
        mode="server")) for n in range(backlog)]
    poisons = [Poison(f"{tag}-p{n}", "commands" if n % 2 == 0 else "stop",
                      list(KINDS)[n // 2 % len(KINDS)], f"{tag}-x{n:05d}", n)
               for n in range(POISON[quick] if key == "stop_poison" else 0)]
    stops_n, delay_ms = min(users, STOPS[quick]), (h.opts.delays or (DELAY_MS,))[0]
    sim = await h.simulator(delay_ms, record=True)
    run = StopRun(h, key, backlog, users, stops_n, delay_ms, tag, routes, poisons, sim,
                  h.worker_env(sim, {"LOVENSE_DEFAULT_TTL_MS": str(TTL_MS)}))
    wide: dict[str, Any] | None = None
    async with load.session(h.opts.amqp_url, f"bench-{key}", keep=True) as s:
        collector, stop_exchange = s.collector, None
        if poisons:
            dead_queue = await s.listen.declare_queue(topology.DEAD_QUEUE, passive=True)
            if dead_queue.declaration_result.consumer_count:
                raise BenchError(f"{topology.DEAD_QUEUE} already has a consumer; stop it first")
            await dead_queue.purge()
            await dead_queue.consume(run.on_dead)
            # Not checked now: the worker declares it; every use comes after it is ready.
            stop_exchange = await s.exchange(topology.STOP_EXCHANGE, ensure=False)
            collector.aliases.update((_long_id(p.n), p.ident) for p in poisons if p.kind == LONG_ID)
        run.sent += [p.ident for p in run.lane("commands")]
        collector.expect([*(ident for ident, _, _ in routes), *run.sent])
        await run.publish_backlog(s)
        worker = await run.drive(s, stop_exchange)
        text, memory, requests = await worker.metrics(), worker.memory_kb(), await sim.requests()
        if stop_exchange is not None:
            wide = await _wide_stops(s, stop_exchange, run, worker)
        alive = worker.alive
    code = await h.stop(worker)
    await h.stop(sim.proc)
    data = figures(run, worker, collector, text, memory, requests, code)
    if wide is not None:
        _poisoned(data, run, collector, wide, alive)
    return Outcome(key, data, table(data), all(data["checks"].values()))


run_load = functools.partial(run_stops, "stop_load")
run_poison = functools.partial(run_stops, "stop_poison")


def _poisoned(data: dict[str, Any], run: StopRun, collector: load.Collector,
              wide: dict[str, Any], alive: bool) -> None:
    """Add ``stop_poison``'s figures, checks and memory target to ``stop_load``'s."""
    sent, dead = set(run.sent), run.dead
    data.update(poison=_poison_figures(run, sent, collector), wide_stops=wide)
    failures = [run.reason, wide["failure"] and f"phase 2: {wide['failure']}"]
    data["failure"] = "; ".join(f for f in failures if f) or None
    data["checks"].update({
        "no run failure": data["failure"] is None,
        "every poison message published": len(sent) == len(run.poisons),
        "every poison message has a result or a dead letter": all(
            i in collector.received or i in dead for i in sent),
        "no poison message dead-lettered twice": all(dead[i] <= 1 for i in sent),
        "every wide Stop has one result": wide["missing"] == 0, "worker alive at the end": alive})
    delta = wide["rss_growth_mb"]
    # Stops not carried out (missing, or not ok) allocate nothing: then it is not measured.
    carried = wide["by_status"] == {"ok": wide["stops"]}
    rss_met = None if delta is None or not carried else delta <= TARGET_RSS_MB
    met = data["target"].pop("met")
    data["target"].update(memory={
        "what": f"worker RSS after {wide['stops']} Stops of {wide['uids_per_stop']} uids x "
                f"{TOY_CAP} toys <= {TARGET_RSS_MB:g} MB more than before", "met": rss_met},
        met=bool(met and rss_met))
    data.update(poison_messages=len(run.poisons), poison_on_shards=len(run.lane("commands")),
                poison_on_stop_lane=len(run.lane("stop")))


def figures(run: StopRun, worker: Proc, collector: load.Collector, text: str,
            memory: dict[str, int], requests: list[SimRequest], code: int | None
            ) -> dict[str, Any]:
    """Return the run's figures, checks and targets (results.json's ``stop_load`` shape)."""
    data = _analyse(run, collector, requests)
    stop_hist = fig.histogram(text, "lovense_worker_stop_seconds")
    cpu, left_at, drained_s = run.cpu, run.left_at, run.drained_s
    data.update({
        "backlog": run.backlog, "users": run.users, "commands_per_user": PER_USER,
        "published": "before the worker started", "backlog_publish_s": round(run.publish_s, 1),
        "backlog_in_queues_at_start": run.queued, "stops": run.stops_n,
        "stops_spread_s": round(run.spread_s, 1),
        "stops_from_to_share_of_results": [START_SHARE, END_SHARE],
        "backlog_unanswered_at_stops": [left_at[0], left_at[-1]] if left_at else None,
        "simulator_delay_ms": run.delay_ms, "worker_env": fig.recorded_env(run.env),
        "worker_ready_s": fig.rounded(worker.ready_s, 2), "drain_s": fig.rounded(drained_s, 1),
        "commands_per_s": None if not drained_s else round(run.backlog / drained_s, 1),
        "worker_cpu_ms_per_command": fig.per_unit(cpu.get("worker"), run.backlog),
        "machine_busy_share": fig.rounded(cpu.get("machine_busy_share")),
        "upstream_calls_metric": fig.metric(text, UPSTREAM),
        "worker_memory_mb_at_end": fig.mb(memory), "stop_seconds_metric": stop_hist,
        "stop_seconds_metric_share_within_0_25": fig.share_within(stop_hist, 0.25),
        "stop_seconds_metric_share_within_0_5": fig.share_within(stop_hist, 0.5),
        "exit_code": code, "failure": run.reason, "log_file": str(worker.log),
    })
    data["checks"].update({"worker exited 0": code == 0, "no run failure": run.reason is None})
    p99 = data["stop_latency_ms"]["p99"]
    p99_met = None if p99 is None or data["stops_not_seen"] else p99 <= TARGET_P99_MS
    order_met = data["late_older_commands"] == 0
    data["target"] = {
        "latency": {"what": f"Stop publish -> simulator p99 <= {TARGET_P99_MS:g} ms",
                    "met": p99_met},
        "order": {"what": "no command published before a Stop reaches the simulator after it",
                  "met": order_met}, "met": bool(p99_met and order_met)}
    return data


def _epoch_ms(text: Any) -> float:
    """Return an RFC 3339 UTC time (a result's receivedAt) in epoch milliseconds."""
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() * 1000


def _order(calls: list[tuple[int, SimRequest, list[str]]], stop_of: dict[str, tuple[str, int]],
           ) -> tuple[dict[str, tuple[int, int]], int]:
    """Return, from the call log, each Stop'd user's first Stop call (log position, received
    ms) and how many of their commands arrived after it (every backlog command was published
    before every Stop; a user whose Stop never arrived counts in ``stops_not_seen``)."""
    first_stop: dict[str, tuple[int, int]] = {}
    for index, req, got in calls:
        if req.body.get("action") == "Stop":
            for uid in (u for u in got if u in stop_of):
                first_stop.setdefault(uid, (index, req.received_ms))
    return first_stop, sum(1 for index, req, got in calls if req.body.get("action") != "Stop"
                           for u in got if u in first_stop and index > first_stop[u][0])


def _analyse(run: StopRun, collector: load.Collector,
             requests: list[SimRequest]) -> dict[str, Any]:
    stop_stamps, results, got = run.stop_stamps, collector.results, collector.received
    stop_of = {uid: (ident, stamp) for ident, (uid, stamp) in stop_stamps.items()}
    calls = server_calls(requests)
    first_stop, late = _order(calls, stop_of)
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
    return {
        "stop_latency_ms": fig.quantiles(first_stop[u][1] - stamp
                                         for u, (_, stamp) in stop_of.items() if u in first_stop),
        "stop_publish_to_result_ms": fig.quantiles(got[i] - stop_stamps[i][1]
                                                   for i in stop_stamps if i in got),
        "stop_publish_to_worker_received_ms": stop_worker_ms["receivedAt"],
        "stop_publish_to_worker_completed_ms": stop_worker_ms["completedAt"],
        "stops_not_seen": len(stop_of) - len(first_stop), "late_older_commands": late,
        "stopped_users_commands": dict(stopped_cmds),
        "backlog_by_status": dict(sorted(backlog_status.items())),
        "stop_by_status": dict(sorted(stop_status.items())), "command_calls": len(plain_calls),
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


async def _wide_stops(s: load.Session, exchange: AbstractExchange, run: StopRun, worker: Proc,
                      ) -> dict[str, Any]:
    """Phase 2: RSS, then WIDE_STOPS Stops for WIDE_UIDS uids and TOY_CAP toys each, RSS."""
    stops, width = WIDE_STOPS[run.h.opts.quick], WIDE_UIDS[run.h.opts.quick]
    await run.sim.clear()
    await run.sim.call("POST", "/_sim/faults", json={"delay_ms": 0})
    calls_before = fig.metric(await worker.metrics(), UPSTREAM)
    before = worker.memory_kb()
    pool = [f"{run.tag}-m{u:05d}" for u in range(width)]
    idents = [f"{run.tag}-wide-{j}" for j in range(stops)]
    s.collector.expect(idents)
    began = time.monotonic()
    if worker.alive:
        for j, ident in enumerate(idents):
            body = _json(command="Stop", uids=pool, toy=[f"t{j}-{k}" for k in range(TOY_CAP)])
            await exchange.publish(s.collector.stamped(body, ident), routing_key=pool[0],
                                   mandatory=True)
    got, stamps = s.collector.received, s.collector.stamps
    reason = await wait_until(lambda: all(i in got for i in idents),
                              run.h.opts.timeout_s or 60 + stops * width / 2_500,
                              watcher(worker, run.sim.proc))
    seconds, after = time.monotonic() - began, worker.memory_kb()
    calls_after = fig.metric(await worker.metrics(), UPSTREAM)
    rss_before, rss_after, peak = (fig.rounded(v / 1024, 1) if v else None for v in (
        before.get("VmRSS"), after.get("VmRSS"), after.get("VmHWM")))
    results = [s.collector.results.get(i) or {} for i in idents if i in got]
    return {
        "stops": stops, "uids_per_stop": width, "toys_per_stop": TOY_CAP, "simulator_delay_ms": 0,
        "by_status": dict(Counter(str(r.get("status")) for r in results)),
        "not_ok_example": next((r.get("message") for r in results if r.get("status") != "ok"),
                               None),
        "missing": sum(1 for i in idents if i not in got), "seconds": round(seconds, 1),
        "publish_to_result_ms": fig.quantiles(got[i] - stamps[i] for i in idents if i in got),
        "server_calls": None if None in (calls_before, calls_after)
            else (calls_after or 0) - (calls_before or 0),
        "rss_before_mb": rss_before, "rss_after_mb": rss_after,
        "rss_growth_mb": None if rss_before is None or rss_after is None
            else round(rss_after - rss_before, 1),
        "peak_rss_after_mb": peak, "failure": reason,
    }


def _poison_figures(run: StopRun, sent: set[str], collector: load.Collector) -> dict[str, Any]:
    """Return what became of every poison message: result status, dead letter, by kind."""
    ends, by_status, reasons = Counter[str](), Counter[str](), dict[str, str]()
    by_kind: dict[str, Counter[str]] = {}
    for p in run.poisons:
        kind, dead = by_kind.setdefault(f"{p.lane}: {p.kind}", Counter()), run.dead[p.ident]
        result = collector.results.get(p.ident)
        status = "not published" if p.ident not in sent else (
            str(result.get("status")) if result else "no result")
        kind[status] += 1
        if p.ident not in sent:
            ends[status] += 1
            continue
        by_status[status] += 1
        if dead:
            kind["dead letter"] += 1
            reasons.setdefault(f"{p.lane}: {p.kind}", run.dead_reasons[p.ident])
        ends[("result" if result else "no result") + (" + dead letter" if dead else "")] += 1
    poison_ids = {p.ident for p in run.poisons}
    return {
        "by_status": dict(sorted(by_status.items())), "ends": dict(sorted(ends.items())),
        "dead_letters": sum(run.dead[i] for i in poison_ids),
        "dead_letters_of_other_messages": sum(n for i, n in run.dead.items()
                                              if i not in poison_ids),
        "by_kind": {k: dict(sorted(v.items())) for k, v in by_kind.items()},
        "dead_letter_reason_by_kind": reasons,
        "publish_to_result_ms": fig.quantiles(collector.received[i] - collector.stamps[i]
                                              for i in sent if i in collector.received),
    }


def table(data: dict[str, Any]) -> str:
    """Return the scenario's figures as text (``stop_poison``: then poison and memory)."""
    lines = fig.render(
        data,
        "backlog {backlog} commands for {users} users, published {published} in "
        "{backlog_publish_s} s; drained in {drain_s} s ({commands_per_s} cmd/s, "
        "{commands_per_call} commands per call, worker CPU {worker_cpu_ms_per_command} ms/cmd, "
        "busy {machine_busy_share:.0%}; worker RSS {worker_memory_mb_at_end[VmRSS]} MB, peak "
        "{worker_memory_mb_at_end[VmHWM]} MB)",
        "{stops} Stops over {stops_spread_s:g} s, from {stops_from_to_share_of_results[0]:.0%} "
        "to {stops_from_to_share_of_results[1]:.0%} of the backlog's results "
        "({backlog_unanswered_at_stops[0]} to {backlog_unanswered_at_stops[1]} unanswered)",
        "Stop publish -> simulator: p50 {stop_latency_ms[p50]} ms, p99 {stop_latency_ms[p99]} ms, "
        "max {stop_latency_ms[max]} ms ({stop_latency_ms[n]} seen, {stops_not_seen} never) -> "
        f"{{target[latency][met]!v}} (<= {TARGET_P99_MS:g} ms)",
        "Stop publish -> receivedAt p50/p99 {stop_publish_to_worker_received_ms[p50]}/"
        "{stop_publish_to_worker_received_ms[p99]} ms, -> completedAt "
        "{stop_publish_to_worker_completed_ms[p50]}/{stop_publish_to_worker_completed_ms[p99]} "
        "ms, -> result at the bench {stop_publish_to_result_ms[p50]}/"
        "{stop_publish_to_result_ms[p99]} ms; lovense_worker_stop_seconds (with the "
        "{simulator_delay_ms} ms delay): {stop_seconds_metric_share_within_0_25:.0%} <= 0.25 s, "
        "{stop_seconds_metric_share_within_0_5:.0%} <= 0.5 s",
        "older commands of Stop'd users reaching the simulator after their Stop: "
        "{late_older_commands} -> {target[order][met]!v}; their commands: "
        "{stopped_users_commands!c}",
        "results: backlog {backlog_by_status!c}; Stops {stop_by_status!c}")
    if wide := data.get("wide_stops"):
        growth = "-" if wide["rss_growth_mb"] is None else f"{wide['rss_growth_mb']:+g}"
        lines += fig.render(
            data, "poison: {poison_messages} messages, {poison_on_shards} in the backlog, "
            "{poison_on_stop_lane} on the Stop lane: results {poison[by_status]!c}; "
            "{poison[dead_letters]} dead letters; {poison[ends]!c}; publish -> result p50 "
            "{poison[publish_to_result_ms][p50]} ms, max {poison[publish_to_result_ms][max]} ms")
        lines += [f"  {kind}: {fig.counts(n)}" for kind, n in data["poison"]["by_kind"].items()]
        lines += fig.render(
            {**wide, "met": data["target"]["memory"]["met"]},
            "wide Stops: {stops} x {uids_per_stop} uids x {toys_per_stop} toys, simulator 0 ms: "
            "results {by_status!c} ({missing} missing) in {seconds} s, {server_calls:.0f} server "
            f"calls; worker RSS {{rss_before_mb}} -> {{rss_after_mb}} MB ({growth} MB, peak "
            f"{{peak_rss_after_mb}} MB) -> {{met!v}} (<= {TARGET_RSS_MB:g} MB)")
        lines[-1] += f"; not ok: {wide['not_ok_example']}" if wide["not_ok_example"] else ""
    return "\n".join(lines + fig.check_lines(data))
