"""Drive load through the real broker and measure what comes back on ``lovense.results``.

:func:`prepare` declares the worker's topology (with the worker's own code, so
queue arguments never drift) and the baseline's queue, checks that nobody else
consumes them, and purges them. :func:`drive` publishes N commands as fast as
a confirming publisher can, pipelined, while an exclusive queue bound to
``lovense.results`` with ``#`` collects one result per command.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import aio_pika
import msgspec
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from bench.fastpub import FastConsumer, FastPublisher
from bench.procs import BenchError
from worker.contract import topology

BASELINE_QUEUE: Final = "bench.baseline"
BATCH: Final = 500
#: After the last expected result, how long to keep listening for duplicates.
LINGER_S: Final = 0.5
_decode = msgspec.json.Decoder().decode


def baseline_arguments() -> dict[str, Any]:
    """Return the arguments of the baseline's queue: durable quorum, like a shard."""
    return {"x-queue-type": "quorum"}


async def declare(channel: aio_pika.abc.AbstractChannel, shards: int) -> None:
    """Declare the worker's topology as the worker does, from worker.contract.topology.

    Idempotent; a mismatch with what the worker declared fails loudly
    (PRECONDITION_FAILED). Only the contract module is imported, so the bench
    keeps working while the worker's internals change.
    """
    commands = await channel.declare_exchange(
        topology.COMMANDS_EXCHANGE, aio_pika.ExchangeType.X_CONSISTENT_HASH, durable=True
    )
    dead = await channel.declare_exchange(
        topology.DEAD_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    await channel.declare_exchange(
        topology.RESULTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead_queue = await channel.declare_queue(
        topology.DEAD_QUEUE, arguments=topology.dead_arguments(), durable=True
    )
    await dead_queue.bind(dead, routing_key="")
    for index in range(shards):
        queue = await channel.declare_queue(
            topology.shard_queue(index), arguments=topology.shard_arguments(), durable=True
        )
        await queue.bind(commands, routing_key="1")  # consistent-hash weight


async def prepare(url: str, shards: int) -> None:
    """Declare every queue the bench uses, refuse foreign consumers, and purge them."""
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench-prep"})
    async with connection:
        channel = await connection.channel()
        await declare(channel, shards)
        names = [topology.shard_queue(i) for i in range(shards)]
        await channel.declare_queue(BASELINE_QUEUE, durable=True, arguments=baseline_arguments())
        names.append(BASELINE_QUEUE)
        queues = [await channel.declare_queue(name, passive=True) for name in names]
        busy = {q.name: q.declaration_result.consumer_count for q in queues
                if q.declaration_result.consumer_count}
        if busy:  # checked before purging anything: their messages are not ours to drop
            raise BenchError(
                f"queues already consumed ({busy}): another worker or baseline (tests?) is "
                "running and would take the bench's messages; stop it and run again"
            )
        for queue in queues:
            await queue.purge()


@dataclass
class Figures:
    """What one run measured, from the bench's side."""

    commands: int
    results: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    strays: int = 0
    missing: int = 0
    elapsed_s: float = 0.0
    publish_s: float = 0.0
    commands_per_s: float = 0.0
    publish_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        """Tell whether every command got exactly one result and every result is ok."""
        return (
            self.failure is None and self.missing == 0 and self.duplicates == 0
            and self.by_status.get("ok", 0) == self.commands
        )

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["ok"] = self.ok
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}


def percentile(sorted_values: list[float], share: float) -> float | None:
    """Return the nearest-rank percentile (share in 0..1) of sorted values."""
    if not sorted_values:
        return None
    rank = min(len(sorted_values), max(1, math.ceil(share * len(sorted_values))))
    return sorted_values[rank - 1]


def command_body(uid: str, time_sec: int = 3) -> bytes:
    """Return the JSON of the benchmark's command for ``uid`` (Vibrate:5 for ``time_sec``)."""
    return msgspec.json.encode(
        {"command": "Function", "uid": uid, "action": "Vibrate:5", "timeSec": time_sec,
         "mode": "server"}
    )


def identical_body(n: int, uid: str) -> bytes:
    """Return command ``n``: the same Vibrate:5 for 3 s for everyone (merged into calls)."""
    return command_body(uid)


def distinct_body(n: int, uid: str) -> bytes:
    """Return command ``n`` with its own ``timeSec`` (2 + n s), so no two are alike."""
    return command_body(uid, 2 + n)


class Collector:
    """Collect results of one run's commands from an exclusive queue bound with ``#``."""

    def __init__(self, expected: set[str], keep: bool = False) -> None:
        self.expected = expected
        self.received: dict[str, float] = {}  # id -> epoch ms when the result arrived
        #: With ``keep``: id -> the decoded result (status, via, supersededBy, ...).
        self.keep = keep
        self.results: dict[str, dict[str, Any]] = {}
        self.status: Counter[str] = Counter()
        self.duplicates = 0
        self.strays = 0
        self.last_ms = 0.0
        self.done = asyncio.Event()
        #: A result id -> the expected id it stands for (a message whose result is named
        #: after its body's ``id``, not after its message_id).
        self.aliases: dict[str, str] = {}

    def expect(self, idents: Iterable[str]) -> None:
        """Add ids to wait for (before they are published)."""
        self.expected.update(idents)
        self.done.clear()

    def on_result(self, message: AbstractIncomingMessage) -> None:
        self.on_body(message.body, message.message_id)

    def on_body(self, body: bytes, message_id: str | None = None) -> None:
        """Take one result message's body (arriving now)."""
        now = time.time() * 1000
        result: Any = None
        try:
            result = _decode(body)
            ident, status = result.get("id"), result.get("status")
        except (msgspec.DecodeError, AttributeError):
            ident, status = message_id, "undecodable"
        if self.aliases and isinstance(ident, str):
            ident = self.aliases.get(ident, ident)
        if ident not in self.expected:
            self.strays += 1
            return
        if ident in self.received:
            self.duplicates += 1
            return
        self.received[ident] = now
        if self.keep:
            self.results[ident] = result
        self.status[str(status)] += 1
        self.last_ms = now
        if len(self.received) == len(self.expected):
            self.done.set()


@dataclass
class Session:
    """One bench connection: a confirming publish channel and a results collector."""

    connection: aio_pika.abc.AbstractConnection
    listen: aio_pika.abc.AbstractChannel
    publish: aio_pika.abc.AbstractChannel
    collector: Collector


@contextlib.asynccontextmanager
async def session(url: str, name: str, *, keep: bool = False) -> AsyncIterator[Session]:
    """Connect; collect every result (``keep``: with its body) from an exclusive queue.

    Results come through a :class:`FastConsumer` (its own connection, about a tenth
    of aio-pika's CPU per message), so the bench takes less CPU from the subject on
    this small machine; ``listen`` and ``publish`` are ordinary aio-pika channels.
    """
    collector = Collector(set(), keep=keep)
    connection = await aio_pika.connect(url, client_properties={"connection_name": name})
    async with connection, FastConsumer(url, topology.RESULTS_EXCHANGE, "#", collector.on_body,
                                        name=f"{name}-results"):
        listen = await connection.channel()
        publish = await connection.channel(publisher_confirms=True, on_return_raises=True)
        yield Session(connection, listen, publish, collector)


def stamped(body: bytes, ident: str, stamp: int) -> aio_pika.Message:
    """Return a persistent command message stamped with ``x-lovense-published-ms``."""
    return aio_pika.Message(
        body, content_type="application/json", message_id=ident,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers={topology.PUBLISHED_MS_HEADER: stamp},
    )


async def publish_all(
    exchange: aio_pika.abc.AbstractExchange, routes: list[tuple[str, str, bytes]],
    stamps: dict[str, int],
) -> None:
    """Publish every (id, routing key, body) in pipelined batches of BATCH, stamping each."""
    for start in range(0, len(routes), BATCH):
        sends = []
        for ident, key, body in routes[start : start + BATCH]:
            stamp = time.time_ns() // 1_000_000
            stamps[ident] = stamp
            sends.append(exchange.publish(stamped(body, ident, stamp), routing_key=key,
                                          mandatory=True))
        await asyncio.gather(*sends)


async def publish_paced(
    exchange: aio_pika.abc.AbstractExchange, routes: list[tuple[str, str, bytes]],
    rate: float, stamps: dict[str, int],
) -> dict[str, float]:
    """Publish (id, routing key, body) at ``rate`` per second on a fixed schedule.

    Message i is due at start + i / rate; each is stamped when it is actually sent
    and confirms are awaited concurrently, so a slow confirm never delays the next
    publish. Return the achieved rate and how far behind schedule sends fell.
    """
    start = time.monotonic()
    sends: list[asyncio.Future[Any]] = []
    sent, worst_lag = 0, 0.0
    while sent < len(routes):
        now = time.monotonic()
        due = min(len(routes), int((now - start) * rate) + 1)
        for i in range(sent, due):
            ident, key, body = routes[i]
            stamp = time.time_ns() // 1_000_000
            stamps[ident] = stamp
            worst_lag = max(worst_lag, now - (start + i / rate))
            sends.append(asyncio.ensure_future(
                exchange.publish(stamped(body, ident, stamp), routing_key=key, mandatory=True)))
        sent = due
        await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    published = time.monotonic()
    await asyncio.gather(*sends)
    confirmed = time.monotonic()
    span = published - start
    return {
        "rate_per_s": round((len(routes) - 1) / span, 1) if span > 0 else 0.0,
        "span_s": round(span, 3),
        "worst_lag_ms": round(worst_lag * 1000, 1),
        "confirm_tail_ms": round((confirmed - published) * 1000, 1),
    }


def properties(ident: str, stamp: int) -> Basic.Properties:
    """Return the AMQP properties of a command message (for :class:`FastPublisher`)."""
    return Basic.Properties(content_type="application/json", delivery_mode=2,
                            message_id=ident, headers={topology.PUBLISHED_MS_HEADER: stamp})


async def publish_paced_fast(
    publisher: FastPublisher, exchange: str, routes: list[tuple[str, str, bytes]],
    rate: float, stamps: dict[str, int], tick_s: float = 0.005,
) -> dict[str, float]:
    """Like :func:`publish_paced`, through a :class:`FastPublisher` (far less bench CPU).

    Every tick (at most every ``tick_s``) writes the messages due by then in one
    socket write; confirms are counted as they come, never awaited per message.
    """
    start = time.monotonic()
    sent, worst_lag = 0, 0.0
    while sent < len(routes):
        now = time.monotonic()
        due = min(len(routes), int((now - start) * rate) + 1)
        batch = []
        for i in range(sent, due):
            ident, key, body = routes[i]
            stamp = time.time_ns() // 1_000_000
            stamps[ident] = stamp
            worst_lag = max(worst_lag, now - (start + i / rate))
            batch.append((key, body, properties(ident, stamp)))
        if batch:
            await publisher.publish_messages(batch, exchange, batch=len(batch))
        sent = due
        await asyncio.sleep(max(tick_s, start + sent / rate - time.monotonic()))
    published = time.monotonic()
    await publisher.wait_confirmed()
    confirmed = time.monotonic()
    span = published - start
    return {
        "rate_per_s": round((len(routes) - 1) / span, 1) if span > 0 else 0.0,
        "span_s": round(span, 3),
        "worst_lag_ms": round(worst_lag * 1000, 1),
        "confirm_tail_ms": round((confirmed - published) * 1000, 1),
    }


async def drive(
    url: str, *, worker: bool, commands: int, tag: str, timeout: float,
    watch: Callable[[], str | None], shards: int = 4,
    body: Callable[[int, str], bytes] = identical_body,
) -> Figures:
    """Publish ``commands`` commands (to the worker's exchange or the baseline's queue).

    Command ``n`` is ``body(n, "bench-<n>")``. ``watch`` is polled while waiting; a
    non-None answer (e.g. "worker exited") aborts the run with that reason.
    """
    routes = []
    for n in range(commands):
        uid = f"bench-{n}"
        key = uid if worker else BASELINE_QUEUE
        routes.append((f"{tag}-{n}", key, body(n, uid)))
    collector = Collector({ident for ident, _, _ in routes})
    stamps: dict[str, int] = {}
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench-load"})
    async with connection:
        listen = await connection.channel()
        results = await listen.declare_queue(exclusive=True, auto_delete=True)
        await results.bind(topology.RESULTS_EXCHANGE, routing_key="#")

        async def on_message(message: AbstractIncomingMessage) -> None:
            collector.on_result(message)

        await results.consume(on_message, no_ack=True)
        publish = await connection.channel(publisher_confirms=True, on_return_raises=True)
        if worker:
            exchange = await publish.get_exchange(topology.COMMANDS_EXCHANGE, ensure=True)
        else:
            exchange = publish.default_exchange
        started = time.time()
        await publish_all(exchange, routes, stamps)
        published = time.time()
        reason = await _wait(collector, started + timeout, watch)
        await asyncio.sleep(LINGER_S)  # late duplicates count too
        if reason is not None:
            names = ([topology.shard_queue(i) for i in range(shards)] if worker
                     else [BASELINE_QUEUE])
            reason += f"; {_describe(collector, commands)}; {await _queues(listen, names)}"
    return _figures(collector, stamps, commands, started, published, reason)


def _describe(collector: Collector, commands: int) -> str:
    got = len(collector.received)
    return f"{got} of {commands} results, {commands - got} missing"


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


async def _wait(
    collector: Collector, deadline: float, watch: Callable[[], str | None]
) -> str | None:
    """Wait until every result is in; return why not (timeout, a child died) or None."""
    while not collector.done.is_set():
        problem = watch()
        if problem is not None:
            return problem
        left = deadline - time.time()
        if left <= 0:
            return "timed out"
        try:
            await asyncio.wait_for(collector.done.wait(), min(left, 0.5))
        except TimeoutError:
            pass
    return None


def _figures(
    collector: Collector, stamps: dict[str, int], commands: int, started: float,
    published: float, reason: str | None,
) -> Figures:
    latencies = sorted(at - stamps[ident] for ident, at in collector.received.items())
    elapsed = (collector.last_ms / 1000 - started) if collector.received else 0.0
    figures = Figures(
        commands=commands,
        results=len(collector.received),
        by_status=dict(sorted(collector.status.items())),
        duplicates=collector.duplicates,
        strays=collector.strays,
        missing=commands - len(collector.received),
        elapsed_s=elapsed,
        publish_s=published - started,
        commands_per_s=commands / elapsed if elapsed > 0 and reason is None else 0.0,
        publish_per_s=commands / (published - started) if published > started else 0.0,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else None,
        failure=reason,
    )
    if reason is None and not figures.ok:
        figures.failure = "not every command got exactly one ok result"
    return figures
