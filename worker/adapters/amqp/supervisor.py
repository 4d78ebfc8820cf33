"""The reconnect supervisor: after the broker goes away, reconnect with backoff and resume.

It waits for the link's ``lost`` event, lets the broker forget what the lost
connections carried, closes what is left, and retries the broker's reconnect
steps (connect, Stop log, registry, consuming) with exponential backoff from
0.5 s to 5 s until they all succeed. Each attempt tries every node of
``LOVENSE_AMQP_URL`` in a new shuffled order, the node just lost last.

A lost connection leaves cycles behind: its channels, the futures rejected with
the loss, their exceptions' tracebacks and the frames those hold. The worker's
raised GC thresholds (``worker.app.GC_THRESHOLDS``) leave such cycles for a
long time, so each reconnect is followed by full collections: at once, and
again once the deliveries the loss abandoned have ended.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable

import structlog

from worker.adapters.amqp.link import Link
from worker.metrics import Metrics

log = structlog.get_logger("worker.adapters.amqp.supervisor")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0
#: When, after a reconnect, the garbage of the lost connection is collected (seconds).
COLLECT_AFTER_S = (0.0, 10.0)


class Supervisor:
    """Keep the link up: one task, started once the worker is consuming."""

    def __init__(self, link: Link, metrics: Metrics, reconnect: Callable[[], Awaitable[None]],
                 on_lost: Callable[[], None]) -> None:
        self._link = link
        self._metrics = metrics
        self._reconnect = reconnect
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._collecting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching the link."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        """Stop watching (before closing the link on purpose)."""
        for task in (self._task, self._collecting):
            if task is not None:
                task.cancel()

    async def _run(self) -> None:
        while True:
            await self._link.lost.wait()
            self._metrics.connected.set(0)
            lost = self._link.node
            log.warning("broker_connection_lost", node=lost.name if lost else None)
            self._on_lost()
            await self._link.close_connections()
            delay = FIRST_DELAY_S
            while True:
                try:
                    await self._reconnect()
                    break
                except Exception as exc:  # noqa: BLE001 - keep trying, with backoff
                    log.warning("broker_reconnect_failed", error=repr(exc), retry_in_s=delay)
                    await self._link.close_connections()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_DELAY_S)
            node = self._link.node
            log.info("broker_reconnected", node=node.name if node else None)
            if self._collecting is not None:
                self._collecting.cancel()
            self._collecting = asyncio.get_running_loop().create_task(
                collect_lost_garbage(), name="collect-after-reconnect")


async def collect_lost_garbage() -> None:
    """Run full collections at :data:`COLLECT_AFTER_S` after a reconnect."""
    waited = 0.0
    for at in COLLECT_AFTER_S:
        await asyncio.sleep(at - waited)  # deliberate timing: after the abandoned deliveries
        waited = at
        log.debug("lost_connection_collected", objects=gc.collect())
