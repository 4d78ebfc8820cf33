"""The registry's broker shell: callback log, validator queue and snapshots (aio-pika).

Part of the broker shell, kept apart from :mod:`worker.adapters.amqp.broker` because it owns
three streams' worth of lifecycle:

* ``lovense.callbacks`` (quorum queue, single active consumer): one replica
  validates each callback and dead-letters refused ones with the reason.
* ``lovense.callbacks.log`` (stream, max age ``LOVENSE_LAN_TTL_S``): every
  replica applies it to its registry, after the newest snapshot.
* ``lovense.registry.snapshots`` (stream): every ``LOVENSE_SNAPSHOT_INTERVAL_S``
  one replica writes the whole registry in chunks, each tagged with the callback
  log offset it covers. Start-up finds the newest complete snapshot (reading
  back two snapshot intervals; the whole stream only when they hold none), loads
  it, then replays only the log after it: streams cannot compact, and heartbeats
  outnumber users many times over.

A replay is waited for as long as it makes progress (:mod:`worker.services.catchup`):
a million callbacks without a snapshot take minutes, and that is no reason to die.

User lifecycle events: the validator publishes the events its own follower derived
from the very entry it validated (:class:`~worker.services.events.Claims`), before it
acks; every replica sends a sweep tick to the queue now and then, and the one that
receives it (the active consumer) publishes ``user.expired`` for users past the TTL.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    ExchangeType,
)

from worker.adapters.amqp.link import CONNECTION_ERRORS, Link
from worker.contract import topology
from worker.contract.messages import encoder
from worker.contract.users import ToysReport
from worker.metrics import Metrics
from worker.services.catchup import Replay
from worker.services.events import Events, claim_key
from worker.services.pairing import Pairing

#: Republishes a refused callback to lovense.dead (the publisher's ``dead_letter``).
DeadLetterFn = Callable[[AbstractIncomingMessage, str, str], Awaitable[None]]

log = structlog.get_logger("worker.adapters.amqp.registry_log")

#: Users per snapshot chunk (one message).
SNAPSHOT_CHUNK: Final = 50_000
#: Start-up looks for the newest snapshot this many intervals back before reading it all.
SNAPSHOT_LOOKBACK_INTERVALS: Final = 2
#: Snapshot chunks in flight while loading one (each up to SNAPSHOT_CHUNK users).
SNAPSHOT_PREFETCH: Final = 4


@dataclass(slots=True)
class _Seen:
    ident: str
    first_offset: int
    chunks: int
    log_offset: int
    at_ms: int
    got: set[int] = field(default_factory=set)


class RegistryLog:
    """Keep a registry from the callback log and snapshots; validate; write snapshots."""

    def __init__(self, link: Link, pairing: Pairing, ttl_s: int, snapshot_interval_s: int,
                 metrics: Metrics, dead_letter: DeadLetterFn,
                 events: Events | None = None) -> None:
        self._link = link
        self._events = events
        self._swept_at = -math.inf
        self._sweeping = False
        self._dead_letter = dead_letter
        self._metrics = metrics
        self._pairing = pairing
        self._ttl_s = ttl_s
        self._interval = snapshot_interval_s
        self._channel: AbstractChannel | None = None
        self._latest_snapshot_ms = 0
        self._tasks: list[asyncio.Task[None]] = []
        #: The snapshot start-up loaded, and the last one this replica wrote (their ids).
        self.loaded_snapshot: str | None = None
        self.written_snapshot: str | None = None

    async def declare(self) -> None:
        """Declare the callback queue and the two streams (idempotently)."""
        channel = self._link.session.publisher
        exchange = await channel.declare_exchange(
            topology.CALLBACKS_EXCHANGE, ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(
            topology.CALLBACKS_QUEUE, durable=True, arguments=topology.shard_arguments())
        await queue.bind(exchange, routing_key="")
        stream = await self._declare_stream(
            topology.CALLBACKS_LOG, topology.callbacks_log_arguments(self._ttl_s))
        await stream.bind(exchange, routing_key="")
        await self._declare_stream(topology.SNAPSHOTS, topology.snapshot_arguments())

    async def _declare_stream(self, name: str, arguments: dict[str, Any]) -> AbstractQueue:
        probe = await self._link.session.connection.channel()
        try:
            return await probe.declare_queue(name, durable=True, arguments=arguments)
        except aio_pika.exceptions.ChannelPreconditionFailed:
            # Declared earlier with other settings: use it as it is, and say so.
            log.warning("stream_arguments_differ", stream=name, wanted=arguments)
            probe = await self._link.session.connection.channel()
            return await probe.declare_queue(name, passive=True)

    async def start(self) -> None:
        """Load the newest snapshot, replay the log after it, then follow; validate callbacks."""
        started = time.perf_counter()
        snapshot = await self._newest_snapshot()
        if snapshot is not None:
            await self._load_snapshot(snapshot)
            self.loaded_snapshot = snapshot.ident
        await self._follow_log(None if snapshot is None else snapshot.log_offset)
        self._pairing.prune()
        log.info("registry_ready", users=len(self._pairing.registry),
                 seconds=round(time.perf_counter() - started, 2),
                 from_snapshot=snapshot is not None)
        await self._serve()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._snapshot_loop()))
        if self._events is not None:
            self._tasks.append(loop.create_task(self._tick_loop()))

    async def resume(self) -> None:
        """After a reconnect: follow the log from where it was left, validate again."""
        await self._follow_log(self._pairing.last_offset)
        await self._serve()

    async def _serve(self) -> None:
        channel = await self._link.session.connection.channel()
        await channel.set_qos(prefetch_count=256)
        queue = await channel.get_queue(topology.CALLBACKS_QUEUE, ensure=False)

        async def validate(message: AbstractIncomingMessage) -> None:
            try:
                headers = message.headers or {}
                if topology.SWEEP_HEADER in headers:
                    await self._sweep()
                elif topology.FORGET_HEADER not in headers:
                    reason = None
                    if topology.TOYS_HEADER not in headers:  # a report of ours: no check
                        try:
                            reason = self._pairing.check(message.body)
                        except Exception as exc:  # noqa: BLE001 - refuse, never stall the queue
                            log.exception("callback_check_failed")
                            reason = f"internal error: {type(exc).__name__}"
                    if reason is not None:
                        await self._dead_letter(message, f"callback refused: {reason}",
                                                "callback")
                    else:
                        await self._announce(message)
                await message.ack()
            except Exception as exc:  # noqa: BLE001 - settle it somehow, or leave it to a redelivery
                if message.channel.is_closed or isinstance(exc, CONNECTION_ERRORS):
                    log.info("callback_abandoned", error=repr(exc))  # redelivered later
                else:
                    log.exception("callback_rejected")
                    await message.reject(requeue=False)  # the queue's dead-letter exchange

        await queue.consume(validate)
        await self._watch_snapshots()

    async def _watch_snapshots(self) -> None:
        """Follow snapshots other replicas write, so this one skips its turn."""
        channel = await self._link.session.connection.channel()
        await channel.set_qos(prefetch_count=4)
        queue = await channel.get_queue(topology.SNAPSHOTS, ensure=False)

        async def note(message: AbstractIncomingMessage) -> None:
            at = (message.headers or {}).get(topology.SNAPSHOT_AT_HEADER)
            if isinstance(at, int):
                self._latest_snapshot_ms = max(self._latest_snapshot_ms, at)
            await message.ack()

        await queue.consume(note, arguments={"x-stream-offset": "next"})

    async def _announce(self, message: AbstractIncomingMessage) -> None:
        """Publish the events of the entry just validated, once this replica's log has them."""
        claims = self._pairing.claims
        if self._events is None or claims is None:
            return
        key = claim_key(message.body, message.message_id)
        found = await claims.claim(key)
        if found is None:
            log.warning("callback_events_unmatched", hold_s=claims.hold_s)
            return
        try:
            await self._events.publish(found)
        except BaseException:
            claims.restore(key, found)  # the redelivered callback claims them again
            raise

    async def _sweep(self) -> None:
        """Publish ``user.expired`` for every user past the TTL, then forget them (sweep tick)."""
        # Every replica ticks: one sweep at a time, one per half interval, is enough.
        if (self._events is None or self._sweeping
                or time.monotonic() - self._swept_at < self._pairing.sweep_interval_s / 2):
            return
        self._sweeping = True
        try:
            gone = self._pairing.expired()
            if gone and await self._events.send(gone, independent=True):
                self._pairing.drop(gone)
        finally:
            self._sweeping, self._swept_at = False, time.monotonic()

    async def _tick_loop(self) -> None:
        """Send a sweep tick to the callbacks queue now and then, for its active consumer."""
        interval = self._pairing.sweep_interval_s
        while True:
            await asyncio.sleep(interval * (0.75 + random.random() / 2))
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - disconnected: the supervisor reconnects
                log.debug("sweep_tick_failed", error=repr(exc))

    async def tick(self) -> None:
        """Send one sweep tick (straight to the queue: the log never sees it)."""
        await self._link.session.publisher.default_exchange.publish(
            aio_pika.Message(b"", headers={topology.SWEEP_HEADER: 1}),
            routing_key=topology.CALLBACKS_QUEUE)

    async def close(self) -> None:
        """Stop writing snapshots and sending sweep ticks."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def announce_forget(self, uid: str) -> None:
        """Write a tombstone for uid to the callback log (through the callbacks exchange)."""
        exchange = await self._link.session.publisher.get_exchange(
            topology.CALLBACKS_EXCHANGE, ensure=False)
        await exchange.publish(
            aio_pika.Message(b"", headers={topology.FORGET_HEADER: uid},
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="")

    async def announce_toys(self, uid: str, report: ToysReport) -> None:
        """Write what a GetToys answer said to the callback log, for every replica to learn."""
        exchange = await self._link.session.publisher.get_exchange(
            topology.CALLBACKS_EXCHANGE, ensure=False)
        await exchange.publish(
            aio_pika.Message(encoder.encode(report), headers={topology.TOYS_HEADER: uid},
                             content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="")

    # ------------------------------------------------------------------ start-up

    async def _read_until_marker(self, stream: str, offset: Any, on_message: Any,
                                 prefetch: int) -> tuple[AbstractQueue, str]:
        """Consume a stream from ``offset`` until a marker appended now comes back."""
        marker = uuid.uuid4().hex
        caught_up = asyncio.Event()
        replay = Replay(prefetch)
        channel = await self._link.session.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(stream, ensure=False)

        async def handle(message: AbstractIncomingMessage) -> None:
            # Applied before any await: messages are applied in stream order.
            headers = message.headers or {}
            ours = headers.get(topology.MARKER_HEADER) == marker
            if topology.MARKER_HEADER not in headers:
                try:
                    on_message(message)
                except Exception:  # noqa: BLE001 - one bad entry must not stop the follower
                    log.exception("stream_message_failed", stream=stream)
                    self._metrics.child(self._metrics.stream_skipped, stream).inc()
            await replay.took(message, last=ours)
            if ours:
                caught_up.set()

        tag = await queue.consume(handle, arguments={"x-stream-offset": offset})
        await self._link.session.publisher.default_exchange.publish(
            aio_pika.Message(b"", headers={topology.MARKER_HEADER: marker}), routing_key=stream)
        await replay.wait(caught_up, f"replaying {stream}")
        return queue, tag

    async def _newest_snapshot(self) -> _Seen | None:
        # Replicas write one every interval, so the newest complete one normally starts
        # within the last two: read those, not a day of snapshots, unless they hold none.
        since = datetime.now(UTC) - timedelta(
            seconds=SNAPSHOT_LOOKBACK_INTERVALS * self._interval)
        return await self._newest_snapshot_from(since) or await self._newest_snapshot_from(
            "first")

    async def _newest_snapshot_from(self, offset: Any) -> _Seen | None:
        seen: dict[str, _Seen] = {}

        def note(message: AbstractIncomingMessage) -> None:
            h: dict[str, Any] = dict(message.headers or {})
            ident = h.get(topology.SNAPSHOT_HEADER)
            if ident is None:
                return
            entry = seen.setdefault(str(ident), _Seen(
                ident=str(ident), first_offset=int(h.get("x-stream-offset", 0)),
                chunks=int(h[topology.SNAPSHOT_CHUNKS_HEADER]),
                log_offset=int(h[topology.SNAPSHOT_LOG_OFFSET_HEADER]),
                at_ms=int(h[topology.SNAPSHOT_AT_HEADER])))
            entry.got.add(int(h[topology.SNAPSHOT_CHUNK_HEADER]))

        queue, tag = await self._read_until_marker(topology.SNAPSHOTS, offset, note, 8)
        # Cancel, not close: closing a channel with acks still on their way kills the
        # connection (CHANNEL_ERROR).
        await queue.cancel(tag)
        complete = [s for s in seen.values() if len(s.got) == s.chunks]
        newest = max(complete, key=lambda s: s.at_ms, default=None)
        if newest is not None:
            self._latest_snapshot_ms = newest.at_ms
        return newest

    async def _load_snapshot(self, snapshot: _Seen) -> None:
        loaded = asyncio.Event()
        got: set[int] = set()
        channel = await self._link.session.connection.channel()
        await channel.set_qos(prefetch_count=SNAPSHOT_PREFETCH)
        queue = await channel.get_queue(topology.SNAPSHOTS, ensure=False)
        registry = self._pairing.registry
        replay = Replay(SNAPSHOT_PREFETCH)

        async def take(message: AbstractIncomingMessage) -> None:
            h: dict[str, Any] = dict(message.headers or {})
            await replay.took(message)
            chunk = h.get(topology.SNAPSHOT_CHUNK_HEADER)
            if str(h.get(topology.SNAPSHOT_HEADER)) != snapshot.ident or not isinstance(chunk, int):
                return
            if chunk not in got:
                try:
                    registry.load(message.body)
                except Exception:  # noqa: BLE001 - a broken chunk: the log replay still follows
                    log.exception("snapshot_chunk_failed", snapshot=snapshot.ident)
                    self._metrics.child(self._metrics.stream_skipped, topology.SNAPSHOTS).inc()
                got.add(chunk)
                if len(got) == snapshot.chunks:
                    loaded.set()

        tag = await queue.consume(take, arguments={"x-stream-offset": snapshot.first_offset})
        await replay.wait(loaded, f"loading snapshot {snapshot.ident}")
        await queue.cancel(tag)
        self._pairing.last_offset = snapshot.log_offset

    async def _follow_log(self, after: int | None) -> None:
        pairing = self._pairing

        def apply(message: AbstractIncomingMessage) -> None:
            headers: dict[str, Any] = dict(message.headers or {})
            offset = headers.get("x-stream-offset")
            pairing.apply(message.body, headers, int(offset) if offset is not None else None,
                          message.message_id)

        start: Any = "first" if after is None or after < 0 else after + 1
        await self._read_until_marker(topology.CALLBACKS_LOG, start, apply, 2000)

    # ------------------------------------------------------------------ snapshots

    async def _snapshot_loop(self) -> None:
        while True:
            # Jitter spreads the replicas, so usually one of them writes each snapshot.
            await asyncio.sleep(self._interval * (0.5 + random.random() / 2))
            self._pairing.prune()
            if time.time() * 1000 - self._latest_snapshot_ms >= self._interval * 1000:
                await self.write_snapshot()

    async def write_snapshot(self) -> int:
        """Write the registry as one snapshot now; return how many chunks it took."""
        # The log offset is taken before the first chunk: whatever changes while the
        # chunks go out is replayed from the log after it.
        registry = self._pairing.registry
        log_offset = self._pairing.last_offset if self._pairing.last_offset is not None else -1
        ident, at_ms = uuid.uuid4().hex, int(time.time() * 1000)
        users = len(registry)  # what the chunks hold: the dump lists the uids of this moment
        total = max(1, -(-users // SNAPSHOT_CHUNK))
        chunks = registry.dump(SNAPSHOT_CHUNK) if users else iter([b"\x90"])
        for index, chunk in enumerate(chunks):
            await self._link.session.publisher.default_exchange.publish(
                aio_pika.Message(chunk, headers={
                    topology.SNAPSHOT_HEADER: ident,
                    topology.SNAPSHOT_CHUNK_HEADER: index,
                    topology.SNAPSHOT_CHUNKS_HEADER: total,
                    topology.SNAPSHOT_LOG_OFFSET_HEADER: log_offset,
                    topology.SNAPSHOT_AT_HEADER: at_ms,
                }, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=topology.SNAPSHOTS)
        self._latest_snapshot_ms, self.written_snapshot = at_ms, ident
        log.info("registry_snapshot_written", users=users, chunks=total,
                 log_offset=log_offset)
        return total
