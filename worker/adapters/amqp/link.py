"""The connections to RabbitMQ: one for commands and publishing, one for the Stop lane.

A :class:`Link` is made unconnected; :meth:`Link.connect` opens a
:class:`Session` (both connections, the publishing channel with confirms, and
the exchanges results and dead letters go to), replaced whole on every
reconnect, and declares the topology on the way. The Stop lane has its own
connection, so a Stop never queues behind command frames on a busy socket.

Reconnection is ours (:mod:`worker.adapters.amqp.supervisor`), not aio-pika's
robust connection: measured here, its restored channels did not consume again
after the broker closed them. A closed connection only sets :attr:`Link.lost`.

With several nodes in ``LOVENSE_AMQP_URL``, each connect tries them in a
shuffled order (the node just lost last, :mod:`worker.adapters.amqp.nodes`);
both connections go to the node that answered first.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, Final

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from worker.adapters.amqp.alarms import Alarms
from worker.adapters.amqp.declare import declare
from worker.adapters.amqp.nodes import connect, connect_first
from worker.core.brokers import Brokers, Node
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
    """The worker's two connections to one RabbitMQ node, opened and closed as one."""

    def __init__(self, brokers: Brokers, shards: int, metrics: Metrics,
                 rng: random.Random | None = None) -> None:
        self._brokers = brokers
        self._rng = rng or random.Random()
        self._node: Node | None = None
        self._shards = shards
        self._metrics = metrics
        self._session: Session | None = None
        self._opened: list[AbstractConnection] = []
        self._closing = False
        #: Set when a connection closes under us (never by :meth:`close`).
        self.lost = asyncio.Event()
        #: Whether RabbitMQ blocks either connection (a memory or disk alarm).
        self.alarms = Alarms(metrics)

    @property
    def session(self) -> Session:
        """Return the current session; there is none before the first :meth:`connect`."""
        if self._session is None:
            raise RuntimeError("not connected to RabbitMQ: Link.connect() first")
        return self._session

    @property
    def node(self) -> Node | None:
        """Return the node connected to last (None before the first connect)."""
        return self._node

    def connected(self) -> bool:
        """Return whether both connections are open and none was lost since the connect."""
        session = self._session
        return (session is not None and not self.lost.is_set()
                and not session.connection.is_closed and not session.stop_connection.is_closed)

    async def connect(self) -> Session:
        """Open both connections and the publishing channel, and declare the topology."""
        self.lost.clear()
        self._opened = []
        connection, node = await connect_first(self._brokers, "lovense-worker", self._rng,
                                               last=self._node)
        self._node = node
        self._watch(connection)
        stop_connection = self._watch(await connect(node, "lovense-worker-stop-lane"))
        publisher = await connection.channel(publisher_confirms=True)
        exchanges = await declare(publisher, self._shards)
        self._session = Session(connection, stop_connection, publisher,
                                results=exchanges.results, dead=exchanges.dead,
                                events=exchanges.events)
        self.alarms.watch([connection, stop_connection])
        self._metrics.connected.set(1)
        self._metrics.node.connected(node.name)
        log.info("broker_connected", node=node.name)
        return self._session

    def _watch(self, connection: AbstractConnection) -> AbstractConnection:
        self._opened.append(connection)
        connection.close_callbacks.add(self._on_closed)
        return connection

    def _on_closed(self, *_: Any) -> None:
        if not self._closing:
            self._metrics.connected.set(0)
            self._metrics.node.lost()
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
        await self.alarms.close()
        await self.close_connections()
        self._metrics.connected.set(0)
        self._metrics.node.lost()
