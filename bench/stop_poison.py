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

import msgspec
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from bench import load, stop_load
from bench.fastpub import Message
from bench.figures import check_lines, counts, metric, quantiles, render
from bench.harness import Harness, Outcome
from bench.procs import BenchError, Proc, wait_until, watcher
from bench.stop_load import StopRun
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


async def run(h: Harness) -> Outcome:
    """Phase 1: stop_load with poison on both lanes; phase 2: RSS around wide Stops."""
    n_poison = POISON_QUICK if h.opts.quick else POISON_FULL
    wide_stops, width = WIDE_STOPS[h.opts.quick], WIDE_UIDS[h.opts.quick]
    plan = await StopRun.start(h, "sp", (
        "  stop_load ({backlog} commands for {users} users, {stops} Stops, simulator {delay} "
        f"ms) with {(n_poison + 1) // 2} poison messages in the backlog and {n_poison // 2}"
        f" on the Stop lane; then {wide_stops} Stops for {width} uids x {TOY_CAP} toys each, "
        "RSS before and after"))
    poisons = [Poison(f"{plan.tag}-p{n}", "commands" if n % 2 == 0 else "stop",
                      list(KINDS)[n // 2 % len(KINDS)], f"{plan.tag}-x{n:05d}", n)
               for n in range(n_poison)]
    shard = [p for p in poisons if p.lane == "commands"]
    lane = [p for p in poisons if p.lane == "stop"]
    dead = Dead()
    sent: list[str] = []
    async with load.session(h.opts.amqp_url, "bench-stop-poison", keep=True) as s:
        collector = s.collector
        dead_queue = await s.listen.declare_queue(topology.DEAD_QUEUE, passive=True)
        if dead_queue.declaration_result.consumer_count:
            raise BenchError(f"{topology.DEAD_QUEUE} already has a consumer; stop it first")
        await dead_queue.purge()
        await dead_queue.consume(dead.on_message)
        # Not checked now: the worker declares it; every use comes after it is ready.
        stop_exchange = await s.exchange(topology.STOP_EXCHANGE, ensure=False)
        collector.aliases.update((_long_id(p.n), p.ident) for p in poisons if p.kind == LONG_ID)
        collector.expect(ident for ident, _, _ in plan.routes)
        collector.expect(p.ident for p in shard)
        plan.others.update(p.ident for p in poisons)
        sent += [p.ident for p in shard]

        def backlog() -> Iterator[Message]:
            k = 0
            for n, message in enumerate(collector.messages(plan.routes)):
                while k < len(shard) and (k + 1) * plan.backlog // (len(shard) + 1) <= n:
                    yield shard[k].uid, shard[k].body(), collector.stamp(shard[k].ident)
                    k += 1
                yield message
            yield from ((p.uid, p.body(), collector.stamp(p.ident)) for p in shard[k:])

        async def before_stop(j: int) -> None:
            for p in lane[j :: plan.stops_n]:
                collector.expect([p.ident])
                sent.append(p.ident)
                await stop_exchange.publish(collector.stamped(p.body(), p.ident),
                                            routing_key=p.uid, mandatory=True)

        def finished() -> bool:
            got = collector.received
            real = len(got) - sum(1 for i in sent if i in got)
            return real == plan.backlog + len(plan.stop_stamps) and all(
                i in got or i in dead.count for i in sent)

        await plan.publish_backlog(s, backlog(), "bench-stop-poison")
        worker = await plan.drive(s, "stop-poison-worker", before_stop=before_stop,
                                  finished=finished)
        text, memory, requests = (await worker.metrics(), worker.memory_kb(),
                                  await plan.sim.requests())
        wide = await _wide_stops(s, stop_exchange, plan, worker, wide_stops, width)
        alive = worker.alive
    code = await h.stop(worker)
    await h.stop(plan.sim.proc)
    data = stop_load.figures(plan, worker, collector, text, memory, requests, code)
    data["poison"] = _poison_figures(poisons, set(sent), collector, dead)
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


async def _wide_stops(s: load.Session, exchange: AbstractExchange, plan: StopRun, worker: Proc,
                      stops: int, width: int) -> dict[str, Any]:
    """Phase 2: RSS, then ``stops`` Stops for ``width`` uids and TOY_CAP toys each, RSS."""
    await plan.sim.clear()
    await plan.sim.call("POST", "/_sim/faults", json={"delay_ms": 0})
    calls_before = metric(await worker.metrics(), UPSTREAM)
    before = worker.memory_kb()
    pool = [f"{plan.tag}-m{u:05d}" for u in range(width)]
    idents = [f"{plan.tag}-wide-{j}" for j in range(stops)]
    s.collector.expect(idents)
    began = time.monotonic()
    if worker.alive:
        for j, ident in enumerate(idents):
            body = _json(command="Stop", uids=pool, toy=[f"t{j}-{k}" for k in range(TOY_CAP)])
            await exchange.publish(s.collector.stamped(body, ident), routing_key=pool[0],
                                   mandatory=True)
    got, stamps = s.collector.received, s.collector.stamps
    reason = await wait_until(lambda: all(i in got for i in idents),
                              plan.h.opts.timeout_or(60 + stops * width / 2_500),
                              watcher(worker, plan.sim.proc))
    seconds = time.monotonic() - began
    after = worker.memory_kb()
    calls_after = metric(await worker.metrics(), UPSTREAM)
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
        "rss_growth_mb": None if rss[0] is None or rss[1] is None
            else round(rss[1] / 1024 - rss[0] / 1024, 1),
        "peak_rss_after_mb": round(after["VmHWM"] / 1024, 1) if "VmHWM" in after else None,
        "failure": reason,
    }


def _poison_figures(poisons: list[Poison], sent: set[str], collector: load.Collector,
                    dead: Dead) -> dict[str, Any]:
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
        "publish_to_result_ms": quantiles(collector.received[i] - collector.stamps[i]
                                          for i in sent if i in collector.received),
    }


def table(data: dict[str, Any]) -> str:
    """Return the scenario's figures as text: stop_load's, then poison and memory."""
    wide, growth = data["wide_stops"], data["wide_stops"]["rss_growth_mb"]
    [poison] = render(
        data, "poison: {poison_messages} messages, {poison_on_shards} in the backlog, "
        "{poison_on_stop_lane} on the Stop lane: results {poison[by_status]!c}; "
        "{poison[dead_letters]} dead letters; {poison[ends]!c}; publish -> result p50 "
        "{poison[publish_to_result_ms][p50]} ms, max {poison[publish_to_result_ms][max]} ms")
    [memory] = render(
        {**wide, "met": data["target"]["memory"]["met"]},
        "wide Stops: {stops} x {uids_per_stop} uids x {toys_per_stop} toys, simulator 0 ms: "
        "results {by_status!c} ({missing} missing) in {seconds} s, {server_calls:.0f} server "
        "calls; worker RSS {rss_before_mb} -> {rss_after_mb} MB ("
        + ("-" if growth is None else f"{growth:+g}") + " MB, peak {peak_rss_after_mb} MB) -> "
        f"{{met!v}} (<= {TARGET_RSS_MB:g} MB)")
    if wide["not_ok_example"]:
        memory += f"; not ok: {wide['not_ok_example']}"
    kinds = [f"  {kind}: {counts(n)}" for kind, n in data["poison"]["by_kind"].items()]
    return "\n".join([*stop_load.figure_lines(data), poison, *kinds, memory, *check_lines(data)])
