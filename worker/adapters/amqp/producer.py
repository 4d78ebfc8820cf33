"""The producer's side: publish commands and await their results through ``reply_to``.

This is what a platform's Python backend imports (and what ``lovense-worker
publish`` is built on). Every command gets ``x-lovense-published-ms`` and a
``message_id``; results come back on a private, exclusive reply queue and are
matched by ``correlation_id``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

import aio_pika
import msgspec
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from worker.contract import topology
from worker.contract.messages import Result, result_decoder

#: A routing key is an AMQP short string: 255 bytes at most.
MAX_ROUTING_KEY_BYTES: Final = 255


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

    def __init__(self, url: str = "amqp://guest:guest@localhost:5672/") -> None:
        self._url = url
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._stop_exchange: AbstractExchange | None = None
        self._replies: AbstractQueue | None = None
        self._waiting: dict[str, asyncio.Future[Result]] = {}

    async def __aenter__(self) -> Producer:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and open a channel with publisher confirms."""
        self._connection = await aio_pika.connect_robust(
            self._url, client_properties={"connection_name": "lovense-producer"}
        )
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._channel.get_exchange(topology.COMMANDS_EXCHANGE, ensure=True)
        self._stop_exchange = await self._channel.get_exchange(topology.STOP_EXCHANGE, ensure=True)

    async def close(self) -> None:
        """Close the connection; pending waits fail."""
        for future in self._waiting.values():
            future.cancel()
        if self._connection is not None:
            await self._connection.close()

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
        target = self._stop_exchange if is_stop(mapping) else self._exchange
        if exchange is not None:
            target = await self._channel_exchange(exchange)
        await target.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=ident,
                correlation_id=ident if reply_to else None,
                reply_to=reply_to,
                headers=all_headers,
            ),
            routing_key=routing_key or routing_key_for(mapping, ident),
        )
        return ident

    async def _channel_exchange(self, name: str) -> AbstractExchange:
        assert self._channel is not None, "connect() first"
        return await self._channel.get_exchange(name, ensure=False)

    async def call(
        self, command: Mapping[str, Any] | bytes, *, timeout: float = 10.0, **kwargs: Any
    ) -> Result:
        """Publish a command and wait up to ``timeout`` seconds for its result."""
        replies = await self._reply_queue()
        ident = kwargs.pop("message_id", None) or uuid.uuid4().hex
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            await self.publish(command, message_id=ident, reply_to=replies.name, **kwargs)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(ident, None)

    async def _reply_queue(self) -> AbstractQueue:
        if self._replies is None:
            assert self._channel is not None, "connect() first"
            self._replies = await self._channel.declare_queue(exclusive=True, auto_delete=True)
            await self._replies.consume(self._on_reply, no_ack=True)
        return self._replies

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._waiting.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(result_decoder.decode(message.body))
