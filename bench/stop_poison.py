"""Scenario ``stop_poison``: ``stop_load`` with poison messages, then the memory of wide Stops.

Phase 1 (latency) is :mod:`bench.stop_load`'s run, through its own functions, plus
1,000 poison messages: half interleaved into the backlog on ``lovense.commands``
(routing key their uid), half on the Stop lane ``lovense.stop``, a few just before
each real Stop. Kinds, cycling (both lanes get every kind): a 1,000-deep nesting
bomb as ``uid``, ``toy``, ``id`` or the whole body; an ``id`` of 256 characters
("é" then digits: over 255 UTF-8 bytes, unique so results can be told apart); bytes
that are not JSON; invalid UTF-8; a body just under and just over 1 MiB; a Stop
naming 100,000 toys. Each has its own ``message_id`` and ``x-lovense-published-ms``;
poison users are not backlog users, so stop_load's figures and checks still hold.
Every poison message must end in one result or a dead letter (``lovense.dead`` is
purged first and consumed by the bench, dead letters counted by ``message_id``).

Phase 2 (memory): once phase 1 is over, the worker's VmRSS; then 100 Stops through
the Stop lane, each for the same 10,000 users (``uids``) and 32 toys of its own (the
toy cap), simulator at 0 ms; their 100 results; VmRSS again. Target: ≤ 50 MB more.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple

import aiohttp
import msgspec
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from pamqp.commands import Basic

from bench import load, stop_load
from bench.common import (
    fmt,
    metric,
    quantiles,
    scrape,
    sim_clear,
    sim_requests,
    verdict,
    wait_until,
    watcher,
)
from bench.procs import BenchError, Proc, Procs
from bench.scenario import Options, Outcome
from bench.stop_load import Rig, StopRun
from worker.contract import topology

POISON_FULL: Final = 1_000
POISON_QUICK: Final = 200
WIDE_STOPS: Final = (100, 10)  # full, quick
WIDE_UIDS: Final = (10_000, 2_000)
TOY_CAP: Final = 32
TARGET_RSS_MB: Final = 50.0
MIB: Final = 1024 * 1024
BOMB: Final = b"[" * 1000 + b"]" * 1000
LONG_ID: Final = "id over 255 bytes"


def _json(**fields: Any) -> bytes:
    return msgspec.json.encode(fields)


def _padded(uid: str, size: int) -> bytes:
    head = b'{"command":"Stop","uid":"%s","pad":"' % uid.encode()
    return head + b"x" * (size - len(head) - 2) + b'"}'


def _long_id(n: int) -> str:
    digits = f"{n:06d}"
    return "é" * (256 - len(digits)) + digits  # 256 characters, 506 UTF-8 bytes


def _long_id_body(lane: str, uid: str, n: int) -> bytes:
    if lane == "stop":
        return _json(command="Stop", uid=uid, id=_long_id(n))
    return _json(command="Function", uid=uid, action="Vibrate:1", timeSec=2, mode="server",
                 id=_long_id(n))


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


class Dead:
    """The dead letters the bench reads from ``lovense.dead``, by message_id."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.reasons: dict[str, str] = {}

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        ident = message.message_id or "(none)"
        self.count[ident] += 1
        self.reasons[ident] = str((message.headers or {}).get(topology.ERROR_HEADER, ""))[:200]
        await message.ack()


async def run(procs: Procs, opts: Options) -> Outcome:
    """Phase 1: stop_load with poison on both lanes; phase 2: RSS around wide Stops."""
    plan = StopRun.plan(opts, "sp")
    poisons = [Poison(f"{plan.tag}-p{n}", "commands" if n % 2 == 0 else "stop",
                      list(KINDS)[n // 2 % len(KINDS)], f"{plan.tag}-x{n:05d}", n)
               for n in range(POISON_QUICK if opts.quick else POISON_FULL)]
    shard = [p for p in poisons if p.lane == "commands"]
    lane = [p for p in poisons if p.lane == "stop"]
    size = 1 if opts.quick else 0
    wide_stops, width = WIDE_STOPS[size], WIDE_UIDS[size]
    print(f"  stop_load ({plan.backlog} commands for {plan.users} users, {plan.stops_n} Stops, "
          f"simulator {plan.delay_ms} ms) with {len(shard)} poison messages in the backlog and "
          f"{len(lane)} on the Stop lane; then {wide_stops} Stops for {width} uids x {TOY_CAP} "
          "toys each, RSS before and after", flush=True)
    rig = await stop_load.start(procs, opts, plan)
    dead = Dead()
    stamps: dict[str, int] = {}
    sent: list[str] = []
    async with load.session(opts.amqp_url, "bench-stop-poison", keep=True) as s:
        collector = s.collector
        dead_queue = await s.listen.declare_queue(topology.DEAD_QUEUE, passive=True)
        if dead_queue.declaration_result.consumer_count:
            raise BenchError(f"{topology.DEAD_QUEUE} already has a consumer; stop it first")
        await dead_queue.purge()
        await dead_queue.consume(dead.on_message)
        # Not checked now: the worker declares it; every use comes after it is ready.
        stop_exchange = await s.publish.get_exchange(topology.STOP_EXCHANGE, ensure=False)
        collector.aliases.update((_long_id(p.n), p.ident) for p in poisons if p.kind == LONG_ID)
        collector.expect(ident for ident, _, _ in plan.routes)
        collector.expect(p.ident for p in shard)
        plan.others.update(p.ident for p in poisons)
        sent += [p.ident for p in shard]

        def backlog() -> Iterator[tuple[str, bytes, Basic.Properties]]:
            k = 0
            for n, message in enumerate(plan.messages()):
                while k < len(shard) and (k + 1) * plan.backlog // (len(shard) + 1) <= n:
                    yield shard[k].uid, shard[k].body(), _stamp(shard[k].ident, stamps)
                    k += 1
                yield message
            for p in shard[k:]:
                yield p.uid, p.body(), _stamp(p.ident, stamps)

        async def before_stop(j: int) -> None:
            for p in lane[j :: plan.stops_n]:
                collector.expect([p.ident])
                sent.append(p.ident)
                await _publish(stop_exchange, p.uid, p.body(), p.ident, stamps)

        def finished() -> bool:
            got = collector.received
            real = len(got) - sum(1 for i in sent if i in got)
            return real == plan.backlog + len(plan.stop_stamps) and all(
                i in got or i in dead.count for i in sent)

        await stop_load.publish_backlog(s, opts.amqp_url, plan, backlog(), "bench-stop-poison")
        worker = await stop_load.drive_stops(s, procs, opts, plan, rig, "stop-poison-worker",
                                             before_stop=before_stop, finished=finished)
        text = await scrape(worker)
        memory = worker.memory_kb()
        requests = await sim_requests(rig.event["serverUrl"])
        wide = await _wide_stops(s, stop_exchange, opts, plan, rig, worker, wide_stops, width)
        alive = worker.alive
    code = await procs.stop(worker)
    await procs.stop(rig.sim)
    data = stop_load.figures(plan, rig, worker, collector, text, memory, requests, code)
    data["poison"] = _poison_figures(poisons, set(sent), collector, dead, stamps)
    data["wide_stops"] = wide
    failures = [plan.reason, wide["failure"] and f"phase 2: {wide['failure']}"]
    data["failure"] = "; ".join(f for f in failures if f) or None
    checks = data["checks"]
    checks["no run failure"] = data["failure"] is None
    checks["every poison message published"] = len(sent) == len(poisons)
    checks["every poison message has a result or a dead letter"] = all(
        i in collector.received or i in dead.count for i in sent)
    checks["no poison message dead-lettered twice"] = all(dead.count[i] <= 1 for i in sent)
    checks["every wide Stop has one result"] = wide["missing"] == 0
    checks["worker alive at the end"] = alive
    delta = wide["rss_growth_mb"]
    # Stops not carried out (missing, or not ok) allocate nothing: then it is not measured.
    carried = wide["by_status"] == {"ok": wide_stops}
    rss_met = None if delta is None or not carried else delta <= TARGET_RSS_MB
    target = data["target"]
    met = target.pop("met")
    target["memory"] = {"what": f"worker RSS after {wide_stops} Stops of {width} uids x "
                        f"{TOY_CAP} toys <= {TARGET_RSS_MB:g} MB more than before",
                        "met": rss_met}
    target["met"] = bool(met and rss_met)
    data.update({"poison_messages": len(poisons), "poison_on_shards": len(shard),
                 "poison_on_stop_lane": len(lane)})
    return Outcome("stop_poison", data, table(data), all(checks.values()))


def _stamp(ident: str, stamps: dict[str, int]) -> Basic.Properties:
    stamps[ident] = stamp = time.time_ns() // 1_000_000
    return load.properties(ident, stamp)


async def _publish(exchange: AbstractExchange, key: str, body: bytes, ident: str,
                   stamps: dict[str, int]) -> None:
    stamps[ident] = stamp = time.time_ns() // 1_000_000
    await exchange.publish(load.stamped(body, ident, stamp), routing_key=key, mandatory=True)


async def _wide_stops(s: load.Session, exchange: AbstractExchange, opts: Options, plan: StopRun,
                      rig: Rig, worker: Proc, stops: int, width: int) -> dict[str, Any]:
    """Phase 2: RSS, then ``stops`` Stops for ``width`` uids and TOY_CAP toys each, RSS."""
    server = rig.event["serverUrl"]
    await sim_clear(server)
    async with aiohttp.ClientSession() as http, http.post(
            f"{server}/_sim/faults", json={"delay_ms": 0}) as response:
        response.raise_for_status()
    calls_before = metric(await scrape(worker), "lovense_worker_upstream_requests_total")
    before = worker.memory_kb()
    pool = [f"{plan.tag}-m{u:05d}" for u in range(width)]
    idents = [f"{plan.tag}-wide-{j}" for j in range(stops)]
    stamps: dict[str, int] = {}
    s.collector.expect(idents)
    began = time.monotonic()
    if worker.alive:
        for j, ident in enumerate(idents):
            body = _json(command="Stop", uids=pool, toy=[f"t{j}-{k}" for k in range(TOY_CAP)])
            await _publish(exchange, pool[0], body, ident, stamps)
    got = s.collector.received
    reason = await wait_until(lambda: all(i in got for i in idents),
                              opts.timeout_or(60 + stops * width / 2_500),
                              watcher(worker, rig.sim))
    seconds = time.monotonic() - began
    after = worker.memory_kb()
    calls_after = metric(await scrape(worker), "lovense_worker_upstream_requests_total")
    rss = [m.get("VmRSS") for m in (before, after)]
    results = [s.collector.results.get(i) or {} for i in idents if i in got]
    return {
        "stops": stops, "uids_per_stop": width, "toys_per_stop": TOY_CAP,
        "simulator_delay_ms": 0,
        "by_status": dict(Counter(str(r.get("status")) for r in results)),
        "not_ok_example": next((r.get("message") for r in results if r.get("status") != "ok"),
                               None),
        "missing": sum(1 for i in idents if i not in got),
        "seconds": round(seconds, 1),
        "publish_to_result_ms": quantiles(got[i] - stamps[i] for i in idents if i in got),
        "server_calls": None if calls_before is None or calls_after is None
            else calls_after - calls_before,
        "rss_before_mb": None if rss[0] is None else round(rss[0] / 1024, 1),
        "rss_after_mb": None if rss[1] is None else round(rss[1] / 1024, 1),
        "rss_growth_mb": None if None in rss else round((rss[1] or 0) / 1024
                                                        - (rss[0] or 0) / 1024, 1),
        "peak_rss_after_mb": None if "VmHWM" not in after else round(after["VmHWM"] / 1024, 1),
        "failure": reason,
    }


def _poison_figures(poisons: list[Poison], sent: set[str], collector: load.Collector,
                    dead: Dead, stamps: dict[str, int]) -> dict[str, Any]:
    """Return what became of every poison message: result status, dead letter, by kind."""
    ends: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    reasons: dict[str, str] = {}
    for p in poisons:
        kind = by_kind.setdefault(f"{p.lane}: {p.kind}", Counter())
        if p.ident not in sent:
            ends["not published"] += 1
            kind["not published"] += 1
            continue
        result = collector.results.get(p.ident)
        status = str(result.get("status")) if result else "no result"
        by_status[status] += 1
        kind[status] += 1
        if dead.count[p.ident]:
            kind["dead letter"] += 1
            reasons.setdefault(f"{p.lane}: {p.kind}", dead.reasons[p.ident])
        ends[("result" if result else "no result")
             + (" + dead letter" if dead.count[p.ident] else "")] += 1
    poison_ids = {p.ident for p in poisons}
    return {
        "by_status": dict(sorted(by_status.items())),
        "ends": dict(sorted(ends.items())),
        "dead_letters": sum(dead.count[i] for i in poison_ids),
        "dead_letters_of_other_messages": sum(n for i, n in dead.count.items()
                                              if i not in poison_ids),
        "by_kind": {k: dict(sorted(v.items())) for k, v in by_kind.items()},
        "dead_letter_reason_by_kind": reasons,
        "publish_to_result_ms": quantiles(collector.received[i] - stamps[i]
                                          for i in sent if i in collector.received),
    }


def table(data: dict[str, Any]) -> str:
    """Return the scenario's figures as text: stop_load's, then poison and memory."""
    poison, wide, t = data["poison"], data["wide_stops"], data["target"]
    lines = stop_load.figure_lines(data) + [
        f"poison: {data['poison_messages']} messages, {data['poison_on_shards']} in the "
        f"backlog, {data['poison_on_stop_lane']} on the Stop lane: results "
        + (", ".join(f"{k} {v}" for k, v in poison["by_status"].items()) or "-")
        + f"; {poison['dead_letters']} dead letters; "
        + ", ".join(f"{k} {v}" for k, v in poison["ends"].items())
        + f"; publish -> result p50 {fmt(poison['publish_to_result_ms']['p50'])} ms, max "
        f"{fmt(poison['publish_to_result_ms']['max'])} ms",
    ]
    lines += [f"  {kind}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
              for kind, counts in poison["by_kind"].items()]
    growth = wide["rss_growth_mb"]
    lines.append(
        f"wide Stops: {wide['stops']} x {wide['uids_per_stop']} uids x {wide['toys_per_stop']} "
        "toys, simulator 0 ms: results "
        + (", ".join(f"{k} {v}" for k, v in wide["by_status"].items()) or "-")
        + f" ({wide['missing']} missing) in {wide['seconds']} s, "
        f"{fmt(wide['server_calls'], '.0f')} server calls; worker RSS {fmt(wide['rss_before_mb'])}"
        f" -> {fmt(wide['rss_after_mb'])} MB ({'-' if growth is None else f'{growth:+g}'} MB, "
        f"peak {fmt(wide['peak_rss_after_mb'])} MB) -> {verdict(t['memory']['met'])} "
        f"(<= {TARGET_RSS_MB:g} MB)"
        + (f"; not ok: {wide['not_ok_example']}" if wide["not_ok_example"] else ""))
    return "\n".join(lines + stop_load.check_lines(data))
