"""The reconnect supervisor: after the broker goes away, reconnect with backoff and resume.

It waits for the link's ``lost`` event, lets the broker forget what the lost
connections carried, closes what is left, and retries the broker's reconnect
steps (connect, Stop log, registry, consuming) with exponential backoff from
0.5 s to 5 s until they all succeed. Each attempt tries every node of
``LOVENSE_AMQP_URL`` in a new shuffled order, the node just lost last.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from worker.adapters.amqp.link import Link
from worker.metrics import Metrics

log = structlog.get_logger("worker.adapters.amqp.supervisor")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0


class Supervisor:
    """Keep the link up: one task, started once the worker is consuming."""

    def __init__(self, link: Link, metrics: Metrics, reconnect: Callable[[], Awaitable[None]],
                 on_lost: Callable[[], None]) -> None:
        self._link = link
        self._metrics = metrics
        self._reconnect = reconnect
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching the link."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        """Stop watching (before closing the link on purpose)."""
        if self._task is not None:
            self._task.cancel()

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
