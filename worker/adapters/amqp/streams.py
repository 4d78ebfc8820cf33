"""Following the Stop log: every replica keeps the per-key Stop watermarks of the last hour.

Start-up replays the stream's last hour and returns once a marker it appended
comes back (so no command is taken before every recent Stop is known); after a
reconnect it resumes after the last offset it saw. An entry that cannot be
applied is counted (``lovense_worker_stream_skipped_total``) and skipped: a
follower never stalls.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage

from worker.adapters.amqp.link import Link
from worker.adapters.amqp.settle import delivery_of
from worker.contract import topology
from worker.core.results import Delivery
from worker.metrics import Metrics
from worker.services.catchup import Replay

log = structlog.get_logger("worker.adapters.amqp.streams")

#: Applies a Stop-log entry; False (or raising) when it cannot be applied (it is skipped).
StopLogFn = Callable[[Delivery], bool]
STOP_LOG_PREFETCH = 1000


class StopLog:
    """This replica's reader of ``lovense.stop.log``."""

    def __init__(self, link: Link, metrics: Metrics, on_stop: StopLogFn) -> None:
        self._link = link
        self._metrics = metrics
        self._on_stop = on_stop
        self._offset: int | None = None

    async def follow(self) -> None:
        """Replay the last hour (or from where a lost connection left off), then keep following.

        Returns once caught up.
        """
        session = self._link.session
        channel = await session.stop_connection.channel()
        await channel.set_qos(prefetch_count=STOP_LOG_PREFETCH)
        queue = await channel.get_queue(topology.STOP_LOG, ensure=False)
        replay = Replay(STOP_LOG_PREFETCH)
        replayed = asyncio.Event()
        # A marker per replay: one appended before a lost connection is not this one's end.
        marker = uuid.uuid4().hex

        async def on_message(message: AbstractIncomingMessage) -> None:
            headers = message.headers or {}
            offset = headers.get("x-stream-offset")
            if isinstance(offset, int):
                self._offset = offset
            ours = headers.get(topology.MARKER_HEADER) == marker
            if topology.MARKER_HEADER not in headers:
                self._apply(message)
            await replay.took(message, last=ours)
            if ours:
                replayed.set()

        since: datetime | int = datetime.now(UTC) - timedelta(seconds=topology.STOP_LOG_REPLAY_S)
        if self._offset is not None:
            since = self._offset + 1  # after a reconnect: where we left off
        await queue.consume(on_message, arguments={"x-stream-offset": since})
        await session.publisher.default_exchange.publish(
            aio_pika.Message(b"", headers={topology.MARKER_HEADER: marker}),
            routing_key=topology.STOP_LOG,
        )
        await replay.wait(replayed, f"replaying {topology.STOP_LOG}")
        log.info("stop_log_replayed")

    def _apply(self, message: AbstractIncomingMessage) -> None:
        """Apply one Stop-log entry; one that cannot be applied is counted and skipped."""
        try:
            applied = self._on_stop(delivery_of(message, "stop"))
        except Exception:  # noqa: BLE001 - a follower skips what it cannot apply, never stalls
            log.exception("stop_log_entry_failed")
            applied = False
        if not applied:
            self._metrics.child(self._metrics.stream_skipped, topology.STOP_LOG).inc()
