"""The producer's side: publish commands and await their results through ``reply_to``.

This is what a platform's Python backend imports (and what ``lovense-worker
publish`` is built on). Every command gets ``x-lovense-published-ms`` and a
``message_id``; results come back on a private, exclusive reply queue and are
matched by ``correlation_id``.

The URL may list a cluster's nodes, comma-separated. The producer reconnects
by itself, to any node of the list, after its connection drops: a call waiting
for a result then raises :class:`ConnectionError` (its reply queue is gone
with the connection), and a publish waits up to ``reconnect_timeout`` seconds
for the next connection. A publish waits at most ``confirm_timeout`` seconds for
the broker's confirm (a quorum queue losing its leader can hold one back): it
then raises :class:`TimeoutError` and the producer moves to a new connection.
The command may or may not have been taken; publishing it again with the same
id is safe, the worker answers a repeated id once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

import aio_pika
import aiormq
import msgspec
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from worker.adapters.amqp.nodes import connect_first
from worker.contract import topology
from worker.contract.messages import Result, result_decoder
from worker.core.brokers import Node, parse_brokers
from worker.tracing import TRACEPARENT, Tracing

log = structlog.get_logger("worker.adapters.amqp.producer")

#: A routing key is an AMQP short string: 255 bytes at most.
MAX_ROUTING_KEY_BYTES: Final = 255
#: Seconds between reconnect attempts: doubling from the first to the last, with jitter.
BACKOFF_S: Final = (0.2, 5.0)


def is_stop(command: Mapping[str, Any]) -> bool:
    """Return whether a command is a Stop, which travels on the Stop lane."""
    name = command.get("command")
    action = command.get("action")
    return name == "Stop" or (
        name == "Function" and isinstance(action, str) and action.strip() == "Stop"
    )


def routing_key_for(command: Mapping[str, Any], message_id: str | None = None) -> str:
    """Return the consistent-hash routing key of a command (an AMQP short string).

    One user: the uid, so a user's commands always reach the same shard in order.
    Several users: the message id, which spreads them over the shards; no shard
    orders them against those users' own commands anyway. A key over 255 bytes
    is replaced by its SHA-256 in hex, which still names one shard.
    """
    uid = command.get("uid")
    if isinstance(uid, str) and uid:
        return _short_key(uid)
    if message_id:
        return _short_key(message_id)
    uids = command.get("uids")
    if isinstance(uids, list) and uids and isinstance(uids[0], str) and uids[0]:
        return _short_key(uids[0])
    return "-"


def _short_key(key: str) -> str:
    """Return a key that fits an AMQP short string: itself, else its SHA-256 in hex."""
    raw = key.encode("utf-8", "surrogatepass")
    return key if len(raw) <= MAX_ROUTING_KEY_BYTES else hashlib.sha256(raw).hexdigest()


class Producer:
    """Publish Lovense commands to ``lovense.commands`` and optionally await their results."""

    def __init__(self, url: str = "amqp://guest:guest@localhost:5672/", *,
                 reconnect_timeout: float = 30.0, confirm_timeout: float = 30.0,
                 rng: random.Random | None = None) -> None:
        #: One URL or a cluster's nodes, comma-separated; ValueError names a bad entry.
        self._brokers = parse_brokers(url)
        self._reconnect_timeout = reconnect_timeout
        self._confirm_timeout = confirm_timeout
        self._rng = rng or random.Random()
        self._node: Node | None = None
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._stop_exchange: AbstractExchange | None = None
        self._replies: AbstractQueue | None = None
        #: Calls started together declare one reply queue, not one each.
        self._replies_lock = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[Result]] = {}
        self._up = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def node(self) -> Node | None:
        """Return the node connected to last (None before :meth:`connect`)."""
        return self._node

    async def __aenter__(self) -> Producer:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect to the first node that answers and open a channel with publisher confirms."""
        self._closing = False
        await self._open()

    async def close(self) -> None:
        """Close the connection and stop reconnecting; pending waits fail."""
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
            self._reconnecting = None
        for future in self._waiting.values():
            future.cancel()
        self._up.clear()
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()

    async def _open(self) -> None:
        connection, node = await connect_first(self._brokers, "lovense-producer", self._rng,
                                               last=self._node)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(topology.COMMANDS_EXCHANGE, ensure=True)
            stop_exchange = await channel.get_exchange(topology.STOP_EXCHANGE, ensure=True)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._connection, self._channel, self._node = connection, channel, node
        self._exchange, self._stop_exchange, self._replies = exchange, stop_exchange, None
        connection.close_callbacks.add(lambda *_: self._lost(connection))
        channel.close_callbacks.add(lambda *_: self._lost(connection))
        self._up.set()

    def _lost(self, connection: AbstractConnection) -> None:
        """Forget the connection, fail the calls waiting on it, and start reconnecting."""
        if self._closing or connection is not self._connection or not self._up.is_set():
            return
        self._up.clear()
        self._channel = self._exchange = self._stop_exchange = self._replies = None
        where = self._node.name if self._node else "RabbitMQ"
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError(
                    f"the connection to {where} was lost before the result came"))
        log.warning("producer_connection_lost", node=where)
        self._reconnecting = asyncio.get_running_loop().create_task(
            self._reconnect(connection), name="producer-reconnect")

    async def _reconnect(self, old: AbstractConnection) -> None:
        with contextlib.suppress(Exception):
            await old.close()
        delay = BACKOFF_S[0]
        while not self._closing:
            try:
                await self._open()
            except Exception as exc:  # noqa: BLE001 - keep trying, with backoff
                log.warning("producer_reconnect_failed", error=str(exc) or type(exc).__name__,
                            retry_in_s=round(delay, 2))
                await asyncio.sleep(delay * self._rng.uniform(0.8, 1.2))
                delay = min(delay * 2, BACKOFF_S[1])
            else:
                log.info("producer_reconnected", node=self._node.name if self._node else None)
                return

    async def _ready(self) -> AbstractChannel:
        """Return the channel, waiting up to ``reconnect_timeout`` s while reconnecting."""
        if self._channel is None and self._reconnecting is not None and not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), self._reconnect_timeout)
            if self._channel is None:
                raise ConnectionError(
                    f"not connected to RabbitMQ: no node of {self._brokers.names} accepted a "
                    f"connection within {self._reconnect_timeout:g} s")
        assert self._channel is not None, "connect() first"
        return self._channel

    async def publish(
        self,
        command: Mapping[str, Any] | bytes,
        *,
        routing_key: str | None = None,
        message_id: str | None = None,
        reply_to: str | None = None,
        headers: Mapping[str, Any] | None = None,
        exchange: str | None = None,
    ) -> str:
        """Publish one command (a mapping, or raw JSON bytes); return its message id.

        Stops (``Stop``, or ``Function`` with action ``Stop``) go to the Stop lane,
        ``lovense.stop``, so they never wait behind other commands; ``exchange``
        overrides that choice.
        """
        if self._exchange is None:
            await self._ready()
        assert self._exchange is not None and self._stop_exchange is not None, "connect() first"
        mapping: Mapping[str, Any]
        if isinstance(command, bytes):
            body = command
            try:
                decoded = msgspec.json.decode(command)
            except msgspec.DecodeError:
                decoded = {}
            mapping = decoded if isinstance(decoded, dict) else {}
        else:
            body, mapping = msgspec.json.encode(command), command
        ident = message_id or (mapping.get("id") if isinstance(mapping.get("id"), str) else None)
        ident = ident or uuid.uuid4().hex
        all_headers: dict[str, Any] = {topology.PUBLISHED_MS_HEADER: time.time_ns() // 1_000_000}
        all_headers.update(headers or {})
        if TRACEPARENT not in all_headers:
            Tracing.inject(all_headers)  # the caller's current span, if it has one
        target = self._stop_exchange if is_stop(mapping) else self._exchange
        if exchange is not None:
            target = await self._channel_exchange(exchange)
        connection = self._connection
        try:
            await self._publish(target, body, ident, reply_to, all_headers,
                                routing_key or routing_key_for(mapping, ident),
                                self._confirm_timeout)
        except aiormq.exceptions.ChannelInvalidStateError as exc:
            raise ConnectionError(f"the channel closed while publishing ({exc})") from exc
        except TimeoutError:
            # A channel whose confirm never came is not trusted again: a new connection.
            if connection is not None and connection is self._connection:
                log.warning("producer_confirm_timeout", message_id=ident,
                            timeout_s=self._confirm_timeout)
                self._lost(connection)
            raise TimeoutError(f"RabbitMQ did not confirm message {ident} within "
                               f"{self._confirm_timeout:g} s; publish it again with the same "
                               "id (the worker answers a repeated id once)") from None
        return ident

    @staticmethod
    async def _publish(target: AbstractExchange, body: bytes, ident: str, reply_to: str | None,
                       headers: dict[str, Any], routing_key: str, timeout: float) -> None:
        await target.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=ident,
                correlation_id=ident if reply_to else None,
                reply_to=reply_to,
                headers=headers,
            ),
            routing_key=routing_key,
            timeout=timeout,
        )

    async def _channel_exchange(self, name: str) -> AbstractExchange:
        return await (await self._ready()).get_exchange(name, ensure=False)

    async def call(
        self, command: Mapping[str, Any] | bytes, *, timeout: float = 10.0, **kwargs: Any
    ) -> Result:
        """Publish a command and wait up to ``timeout`` seconds for its result.

        Raise :class:`TimeoutError` when none came in time, :class:`ConnectionError`
        when the connection dropped first (the command may still run).
        """
        replies = await self._reply_queue()
        ident = kwargs.pop("message_id", None) or uuid.uuid4().hex
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            await self.publish(command, message_id=ident, reply_to=replies.name, **kwargs)
            if self._replies is not replies:  # dropped before the future was waiting
                raise ConnectionError("the connection to RabbitMQ was lost while publishing")
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(ident, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a drop may have failed it unawaited

    async def _reply_queue(self) -> AbstractQueue:
        if self._replies is None:
            async with self._replies_lock:
                return await self._declare_replies()
        return self._replies

    async def _declare_replies(self) -> AbstractQueue:
        if self._replies is None:
            channel = await self._ready()
            replies = await channel.declare_queue(exclusive=True, auto_delete=True)
            await replies.consume(self._on_reply, no_ack=True)
            if channel is self._channel:  # else it went with a dropped connection
                self._replies = replies
            return replies
        return self._replies

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._waiting.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(result_decoder.decode(message.body))
