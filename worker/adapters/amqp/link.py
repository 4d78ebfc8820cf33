"""The connections to RabbitMQ: one for commands and publishing, one for the Stop lane.

A :class:`Link` is made unconnected; :meth:`Link.connect` opens a
:class:`Session` (both connections, the publishing channel with confirms, and
the exchanges results and dead letters go to), replaced whole on every
reconnect, and declares the topology on the way. The Stop lane has its own
connection, so a Stop never queues behind command frames on a busy socket.

Reconnection is ours (:mod:`worker.adapters.amqp.supervisor`), not aio-pika's
robust connection: measured here, its restored channels did not consume again
after the broker closed them. A closed connection only sets :attr:`Link.lost`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from worker.adapters.amqp.declare import declare
from worker.metrics import Metrics

log = structlog.get_logger("worker.adapters.amqp.link")

#: Failures that mean the broker connection or a channel went away, not a bad message.
CONNECTION_ERRORS: Final = (aio_pika.exceptions.AMQPError, ConnectionError,
                            aiormq.exceptions.ChannelInvalidStateError)


@dataclass(frozen=True, slots=True)
class Session:
    """What one successful connect opened; a reconnect makes a new one."""

    connection: AbstractConnection
    stop_connection: AbstractConnection
    #: The publishing channel (publisher confirms on).
    publisher: AbstractChannel
    results: AbstractExchange
    dead: AbstractExchange
    #: Where user lifecycle events go (lovense.events).
    events: AbstractExchange


class Link:
    """The worker's two connections to one RabbitMQ, opened and closed as one."""

    def __init__(self, url: str, shards: int, metrics: Metrics) -> None:
        self._url = url
        self._shards = shards
        self._metrics = metrics
        self._session: Session | None = None
        self._opened: list[AbstractConnection] = []
        self._closing = False
        #: Set when a connection closes under us (never by :meth:`close`).
        self.lost = asyncio.Event()

    @property
    def session(self) -> Session:
        """Return the current session; there is none before the first :meth:`connect`."""
        if self._session is None:
            raise RuntimeError("not connected to RabbitMQ: Link.connect() first")
        return self._session

    def connected(self) -> bool:
        """Return whether both connections are open and none was lost since the connect."""
        session = self._session
        return (session is not None and not self.lost.is_set()
                and not session.connection.is_closed and not session.stop_connection.is_closed)

    async def connect(self) -> Session:
        """Open both connections and the publishing channel, and declare the topology."""
        self.lost.clear()
        self._opened = []
        connection = await self._open("lovense-worker")
        stop_connection = await self._open("lovense-worker-stop-lane")
        publisher = await connection.channel(publisher_confirms=True)
        exchanges = await declare(publisher, self._shards)
        self._session = Session(connection, stop_connection, publisher,
                                results=exchanges.results, dead=exchanges.dead,
                                events=exchanges.events)
        self._metrics.connected.set(1)
        return self._session

    async def _open(self, name: str) -> AbstractConnection:
        connection = await aio_pika.connect(self._url, client_properties={"connection_name": name})
        self._opened.append(connection)
        connection.close_callbacks.add(self._on_closed)
        return connection

    def _on_closed(self, *_: Any) -> None:
        if not self._closing:
            self._metrics.connected.set(0)
            self.lost.set()

    async def close_connections(self) -> None:
        """Close whatever is open (after a loss, or before retrying a failed connect)."""
        for connection in reversed(self._opened):
            if not connection.is_closed:
                try:
                    await connection.close()
                except Exception as exc:  # noqa: BLE001 - it may be half gone already
                    log.debug("connection_close_failed", error=repr(exc))

    async def close(self) -> None:
        """Close for good: unacked deliveries return to their queues."""
        self._closing = True
        await self.close_connections()
        self._metrics.connected.set(0)
