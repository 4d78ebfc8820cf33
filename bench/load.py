"""Load through the real broker: prepare the queues, publish, collect ``lovense.results``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractExchange
from pamqp.commands import Basic

from bench.fastpub import FastConsumer, FastPublisher, Message
from bench.procs import BenchError, Watch, wait_until
from worker.adapters.amqp.declare import declare
from worker.contract import topology

BASELINE_QUEUE: Final = "bench.baseline"
#: The baseline's queue: durable quorum, like a shard.
BASELINE_ARGUMENTS: Final[dict[str, Any]] = {"x-queue-type": "quorum"}
BATCH: Final = 500
#: After the last expected result, how long to keep listening for duplicates.
LINGER_S: Final = 0.5
#: (message id, routing key, body) of one command.
Route = tuple[str, str, bytes]
_decode = msgspec.json.Decoder().decode


async def prepare(url: str, shards: int) -> None:
    """Declare the worker's topology (with its own code) and the baseline's queue, refuse
    foreign consumers, and purge the shards, the Stop lane and the baseline's queue."""
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench-prep"})
    async with connection:
        channel = await connection.channel()
        await declare(channel, shards)
        await channel.declare_queue(BASELINE_QUEUE, durable=True, arguments=BASELINE_ARGUMENTS)
        names = [*(topology.shard_queue(i) for i in range(shards)), topology.STOP_QUEUE,
                 BASELINE_QUEUE]
        queues = [await channel.declare_queue(name, passive=True) for name in names]
        busy = {q.name: q.declaration_result.consumer_count for q in queues
                if q.declaration_result.consumer_count}
        if busy:  # checked before purging anything: their messages are not ours to drop
            raise BenchError(
                f"queues already consumed ({busy}): another worker or baseline (tests?) is "
                "running and would take the bench's messages; stop it and run again")
        for queue in queues:
            await queue.purge()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Collector:
    """Collect the results of one run's messages, matched by ``id``."""

    def __init__(self, keep: bool = False) -> None:
        self.expected: set[str] = set()
        self.received: dict[str, float] = {}  # id -> epoch ms when the result arrived
        self.keep = keep  # then keep id -> the decoded result in ``results``
        self.results: dict[str, dict[str, Any]] = {}
        self.status: Counter[str] = Counter()
        self.duplicates = 0
        self.strays = 0
        self.last_ms = 0.0
        self.done = asyncio.Event()
        #: A result id -> the expected id it stands for (a result named after its body's ``id``).
        self.aliases: dict[str, str] = {}
        self.stamps: dict[str, int] = {}  # id -> epoch ms just before it was sent

    def expect(self, idents: Iterable[str]) -> None:
        """Add ids to wait for (before they are published)."""
        self.expected.update(idents)
        self.done.clear()

    def stamp(self, ident: str) -> Basic.Properties:
        """Stamp ``ident`` now; return its AMQP properties (for :class:`FastPublisher`)."""
        self.stamps[ident] = stamp = now_ms()
        return Basic.Properties(content_type="application/json", delivery_mode=2,
                                message_id=ident, headers={topology.PUBLISHED_MS_HEADER: stamp})

    def stamped(self, body: bytes, ident: str) -> aio_pika.Message:
        """Stamp ``ident`` now; return it as a persistent aio-pika message."""
        p = self.stamp(ident)
        return aio_pika.Message(body, content_type=p.content_type, message_id=ident,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT, headers=p.headers)

    def messages(self, routes: Iterable[Route]) -> Iterator[Message]:
        """Yield ``routes`` for :meth:`FastPublisher.publish`, each stamped as it is sent."""
        for ident, key, body in routes:
            yield key, body, self.stamp(ident)

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

    listen: AbstractChannel
    publish: AbstractChannel
    collector: Collector

    async def exchange(self, name: str, ensure: bool = True) -> AbstractExchange:
        return await self.publish.get_exchange(name, ensure=ensure)

    async def publish_all(self, exchange: AbstractExchange, routes: list[Route]) -> None:
        """Publish every (id, routing key, body) in pipelined batches of BATCH, stamping each."""
        for start in range(0, len(routes), BATCH):
            await asyncio.gather(*(
                exchange.publish(self.collector.stamped(body, ident), routing_key=key,
                                 mandatory=True)
                for ident, key, body in routes[start : start + BATCH]))

    async def wait(self, timeout: float, watch: Watch, poll_s: float = 0.2) -> str | None:
        """Wait for every expected result; return why not (timeout, a child exited) or None."""
        return await wait_until(self.collector.done.is_set, timeout, watch, poll_s)

    async def queued(self, names: Iterable[str]) -> int:
        """Return how many messages wait in the queues ``names``."""
        declared = [await self.listen.declare_queue(name, passive=True) for name in names]
        return sum(q.declaration_result.message_count or 0 for q in declared)


@contextlib.asynccontextmanager
async def session(url: str, name: str, *, keep: bool = False) -> AsyncIterator[Session]:
    """Connect; collect every result (``keep``: with its body) through a :class:`FastConsumer`
    (its own connection, a tenth of aio-pika's CPU per message: less taken from the subject)."""
    collector = Collector(keep=keep)
    connection = await aio_pika.connect(url, client_properties={"connection_name": name})
    async with connection, FastConsumer(url, topology.RESULTS_EXCHANGE, "#", collector.on_body,
                                        name=f"{name}-results"):
        listen = await connection.channel()
        publish = await connection.channel(publisher_confirms=True, on_return_raises=True)
        yield Session(listen, publish, collector)


async def publish_paced(publisher: FastPublisher, exchange: str, routes: list[Route],
                        rate: float, collector: Collector,
                        tick_s: float = 0.005) -> dict[str, float]:
    """Publish ``routes`` at ``rate`` per second, message i due at start + i / rate (stamped
    when sent), each tick's due messages in one write, confirms counted as they come; return
    the achieved rate, how far behind schedule sends fell, and the confirms' tail."""
    start = time.monotonic()
    sent, worst_lag = 0, 0.0
    while sent < len(routes):
        now = time.monotonic()
        due = min(len(routes), int((now - start) * rate) + 1)
        worst_lag = max(worst_lag, now - (start + sent / rate))
        if due > sent:
            await publisher.publish(collector.messages(routes[sent:due]), exchange,
                                    batch=due - sent)
        sent = due
        await asyncio.sleep(max(tick_s, start + sent / rate - time.monotonic()))
    published = time.monotonic()
    await publisher.wait_confirmed()
    span = published - start
    return {"rate_per_s": round((len(routes) - 1) / span, 1) if span > 0 else 0.0,
            "span_s": round(span, 3), "worst_lag_ms": round(worst_lag * 1000, 1),
            "confirm_tail_ms": round((time.monotonic() - published) * 1000, 1)}
