"""Broker alarms: noticing that RabbitMQ blocked one of the worker's connections.

Under a memory or disk alarm RabbitMQ sends ``connection.blocked`` and stops
reading from every connection that publishes, until ``connection.unblocked``.
aiormq handles both frames but offers no hook: it clears a private event on
its connection (``_Connection__connection_unblocked``) and logs the reason on
``aiormq.connection``. :class:`Alarms` polls that event on each connection it
watches (a unit test pins the attribute, so an aiormq upgrade that renames it
fails loudly) and takes the reason from the log record.

While any connection is blocked, :attr:`Alarms.clear` is unset (command
intake waits on it, so deliveries stay unacked in the prefetch window, none
nacked), ``lovense_worker_broker_blocked`` is 1 and :meth:`Alarms.reason`
says why for ``/readyz``. Nothing is done to unblock: the broker says when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import structlog
from aio_pika.abc import AbstractConnection

from worker.metrics import Metrics

log = structlog.get_logger("worker.adapters.amqp.alarms")

#: aiormq's private "not blocked" event on its Connection (name-mangled).
UNBLOCKED_ATTR: Final = "_Connection__connection_unblocked"
#: How often the watched connections are looked at.
POLL_S: Final = 0.2
#: Said when the broker's own reason was not seen (its log record was filtered out).
UNKNOWN_REASON: Final = "a resource alarm (memory or disk)"


def unblocked_event(connection: AbstractConnection) -> asyncio.Event | None:
    """Return aiormq's "not blocked" event of an aio-pika connection (None when unknown)."""
    transport = getattr(connection, "transport", None)
    inner = getattr(transport, "connection", None)
    event = getattr(inner, UNBLOCKED_ATTR, None)
    return event if isinstance(event, asyncio.Event) else None


class _Reasons(logging.Filter):
    """Keep the reason of the last ``connection.blocked`` aiormq logged (passes every record)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (record.msg == "Connection %r was blocked by: %r" and isinstance(args, tuple)
                and len(args) == 2):
            self.last = str(args[1])
        return True


class Alarms:
    """Whether RabbitMQ blocks any of the watched connections, why, and a gate for intake."""

    def __init__(self, metrics: Metrics, poll_s: float = POLL_S) -> None:
        self._metrics = metrics
        self._poll_s = poll_s
        self._connections: list[AbstractConnection] = []
        self._reasons = _Reasons()
        self._task: asyncio.Task[None] | None = None
        self._blocked = False
        #: Set while no watched connection is blocked.
        self.clear = asyncio.Event()
        self.clear.set()
        self._metrics.blocked.set(0)

    @property
    def blocked(self) -> bool:
        """Return whether a watched connection was blocked at the last look."""
        return self._blocked

    def reason(self) -> str | None:
        """Return why the broker blocks us (None while it does not)."""
        if not self._blocked:
            return None
        return f"RabbitMQ blocked publishing: {self._reasons.last or UNKNOWN_REASON}"

    def watch(self, connections: list[AbstractConnection]) -> None:
        """Watch these connections (a reconnect's new ones replace the old)."""
        self._connections = list(connections)
        logging.getLogger("aiormq.connection").addFilter(self._reasons)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll(),
                                                                name="broker-alarms")
        self.look()

    def look(self) -> bool:
        """Look at every watched connection now; return whether one is blocked."""
        blocked = any(self._is_blocked(c) for c in self._connections)
        if blocked != self._blocked:
            self._blocked = blocked
            self._metrics.blocked.set(1 if blocked else 0)
            if blocked:
                self.clear.clear()
                log.warning("broker_blocked", reason=self.reason(),
                            why="command intake paused until RabbitMQ unblocks")
            else:
                self.clear.set()
                self._reasons.last = None
                log.warning("broker_unblocked", why="command intake resumed")
        return blocked

    @staticmethod
    def _is_blocked(connection: AbstractConnection) -> bool:
        if connection.is_closed:
            return False
        event = unblocked_event(connection)
        return event is not None and not event.is_set()

    async def _poll(self) -> None:
        while True:
            self.look()
            await asyncio.sleep(self._poll_s)  # aiormq gives no hook: look again shortly

    async def close(self) -> None:
        """Stop watching; intake is no longer held."""
        logging.getLogger("aiormq.connection").removeFilter(self._reasons)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._connections = []
        self._blocked = False
        self._metrics.blocked.set(0)
        self.clear.set()

