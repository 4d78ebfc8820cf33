"""A minimal AMQP 0-9-1 publisher with confirms and a results consumer, for heavy load.

aio-pika/aiormq cost about 250 µs of the bench's CPU per confirmed publish (a
task, futures and one socket write per message), and RabbitMQ more for the many
small packets: 1,000,000 callbacks would take over five minutes to publish.
:class:`FastPublisher` speaks just enough of the protocol (pamqp does the
handshake frames): one channel in confirm mode, the frames of a whole batch
written in one call, broker acks (``multiple``) counted by a reader task, at most
``window`` messages unconfirmed; no mandatory flag, no returns.
:class:`FastConsumer` reads results (no ack) by cutting frames by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import unquote, urlparse

from pamqp import commands, frame, header
from pamqp.exceptions import UnmarshalingException

from bench.procs import BenchError

_FRAME_END: Final = b"\xce"
_PROTOCOL: Final = b"AMQP\x00\x00\x09\x01"
_CHANNEL: Final = 1
#: Content header: class 60 (basic), weight 0, body size, flags = delivery-mode only, mode 2.
_HEADER: Final = struct.Struct("!BHIHHQHB")
_FRAME_HEAD: Final = struct.Struct("!BHI")
_METHOD: Final = struct.Struct("!HH")
_BODY_SIZE: Final = struct.Struct("!Q")
#: Channel.Close and Connection.Close.
_CLOSE: Final = frozenset({(20, 40), (10, 50)})
#: One message: routing key, body, properties (None: persistent, nothing else).
Message = tuple[str, bytes, commands.Basic.Properties | None]


class _Raw:
    """One AMQP connection with one channel, spoken directly (handshake frames by pamqp)."""

    def __init__(self, url: str, name: str) -> None:
        self._url = urlparse(url)
        self._name = name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._frame_max = 131_072
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._buffer = b""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def _read_frame(self) -> Any:
        assert self._reader is not None
        while True:
            if self._buffer:
                try:
                    used, _channel, value = frame.unmarshal(self._buffer)
                except UnmarshalingException:
                    pass
                else:
                    self._buffer = self._buffer[used:]
                    return value
            chunk = await self._reader.read(65536)
            if not chunk:
                raise BenchError("fastpub: the broker closed the connection")
            self._buffer += chunk

    async def _expect(self, kind: type) -> Any:
        value = await self._read_frame()
        if not isinstance(value, kind):
            raise BenchError(f"fastpub: expected {kind.__name__}, got {value!r}")
        return value

    def _send(self, value: Any, channel: int) -> None:
        assert self._writer is not None
        self._writer.write(frame.marshal(value, channel))

    async def connect(self) -> None:
        """Open the connection and one channel, then set it up (:meth:`_opened`)."""
        url = self._url
        self._reader, self._writer = await asyncio.open_connection(url.hostname or "localhost",
                                                                   url.port or 5672)
        self._writer.write(_PROTOCOL)
        await self._expect(commands.Connection.Start)
        user, password = unquote(url.username or "guest"), unquote(url.password or "guest")
        self._send(commands.Connection.StartOk(
            client_properties={"connection_name": self._name, "product": "lovense-bench"},
            mechanism="PLAIN", response=f"\0{user}\0{password}"), 0)
        tune = await self._expect(commands.Connection.Tune)
        self._frame_max = tune.frame_max or self._frame_max
        self._send(commands.Connection.TuneOk(channel_max=tune.channel_max,
                                              frame_max=self._frame_max, heartbeat=0), 0)
        vhost = unquote(url.path[1:]) if len(url.path) > 1 else "/"
        self._send(commands.Connection.Open(virtual_host=vhost), 0)
        await self._expect(commands.Connection.OpenOk)
        self._send(commands.Channel.Open(), _CHANNEL)
        await self._expect(commands.Channel.OpenOk)
        await self._opened()

    async def _opened(self) -> None:
        """Set the channel up (subclasses)."""

    async def close(self) -> None:
        """Close the connection (politely when possible)."""
        if self._writer is None:
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            self._send(commands.Connection.Close(reply_code=200, reply_text="bench done"), 0)
            await self._writer.drain()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._writer = None


class FastPublisher(_Raw):
    """Publish many persistent messages, with confirms, far cheaper than aio-pika."""

    def __init__(self, url: str, *, name: str = "bench-fastpub", window: int = 20_000) -> None:
        super().__init__(url, name)
        self._window = window
        self.sent = 0
        self.confirmed = 0
        self._progress = asyncio.Event()

    async def _opened(self) -> None:
        self._send(commands.Confirm.Select(), _CHANNEL)
        await self._expect(commands.Confirm.SelectOk)
        self._task = asyncio.get_running_loop().create_task(self._read_confirms())

    async def _read_confirms(self) -> None:
        try:
            while True:
                value = await self._read_frame()
                if isinstance(value, commands.Basic.Ack):
                    self.confirmed = max(self.confirmed, value.delivery_tag)
                elif isinstance(value, commands.Basic.Nack):
                    self._failure = f"broker nacked message {value.delivery_tag}"
                elif isinstance(value, commands.Channel.Close | commands.Connection.Close):
                    self._failure = f"broker closed: {value.reply_code} {value.reply_text}"
                    return
                self._progress.set()
        except (BenchError, ConnectionError) as exc:
            self._failure = self._failure or str(exc)
        finally:
            self._progress.set()

    async def publish(self, messages: Iterable[Message], exchange: str = "",
                      batch: int = 2_000) -> int:
        """Publish (routing key, body, properties) messages, ``batch`` per write; return how many.

        Properties (message id, headers, ...) are marshalled per message by pamqp: set
        ``delivery_mode=2`` in them for persistence; None packs a header that says
        persistent and nothing else, far cheaper. A body larger than a frame goes out in
        several body frames.
        """
        limit = self._frame_max - 8
        methods: dict[str, bytes] = {}
        parts: list[bytes] = []
        count = 0
        for key, body, properties in messages:
            method = methods.get(key)
            if method is None:
                method = methods[key] = frame.marshal(commands.Basic.Publish(
                    exchange=exchange, routing_key=key), _CHANNEL)
            parts.append(method)
            if properties is None:
                parts.append(_HEADER.pack(2, _CHANNEL, 15, 60, 0, len(body), 0x1000, 2)
                             + _FRAME_END)
            else:
                parts.append(frame.marshal(header.ContentHeader(0, len(body), properties),
                                           _CHANNEL))
            for start in range(0, max(1, len(body)), limit):
                chunk = body[start : start + limit]
                parts.append(_FRAME_HEAD.pack(3, _CHANNEL, len(chunk)) + chunk + _FRAME_END)
            count += 1
            if count % batch == 0:
                await self._flush(parts, batch)
                parts = []
        if parts:
            await self._flush(parts, count % batch)
        return count

    async def _flush(self, parts: list[bytes], messages: int) -> None:
        assert self._writer is not None
        while self.sent - self.confirmed > self._window and self._failure is None:
            self._progress.clear()
            await self._progress.wait()
        if self._failure is not None:
            raise BenchError(f"fastpub: {self._failure}")
        self._writer.write(b"".join(parts))
        self.sent += messages
        await self._writer.drain()

    async def wait_confirmed(self, timeout: float = 120.0) -> None:
        """Wait until the broker confirmed every message published."""
        async def confirmed() -> None:
            while self.confirmed < self.sent and self._failure is None:
                self._progress.clear()
                await self._progress.wait()

        await asyncio.wait_for(confirmed(), timeout)
        if self._failure is not None:
            raise BenchError(f"fastpub: {self._failure}")


class FastConsumer(_Raw):
    """Consume (no ack) an exclusive queue bound to ``exchange``, body by body.

    Frames are cut by hand (7-byte header, payload, frame end); only the method
    frames of deliveries are told apart, by class and method id, never decoded.
    ``on_body`` gets every message body, in order.
    """

    def __init__(self, url: str, exchange: str, routing_key: str,
                 on_body: Callable[[bytes], None], *, name: str = "bench-fastconsume") -> None:
        super().__init__(url, name)
        self._exchange = exchange
        self._routing_key = routing_key
        self._on_body = on_body
        self.queue = ""

    async def _opened(self) -> None:
        self._send(commands.Queue.Declare(queue="", exclusive=True, auto_delete=True), _CHANNEL)
        self.queue = (await self._expect(commands.Queue.DeclareOk)).queue
        self._send(commands.Queue.Bind(queue=self.queue, exchange=self._exchange,
                                       routing_key=self._routing_key), _CHANNEL)
        await self._expect(commands.Queue.BindOk)
        self._send(commands.Basic.Consume(queue=self.queue, no_ack=True), _CHANNEL)
        await self._expect(commands.Basic.ConsumeOk)
        self._task = asyncio.get_running_loop().create_task(self._consume())

    async def _consume(self) -> None:
        assert self._reader is not None
        data = bytearray(self._buffer)
        pos = 0
        need: int | None = None  # body bytes still expected for the current message
        parts: list[bytes] = []
        on_body = self._on_body
        while True:
            while len(data) - pos >= 7:
                kind, _channel, size = _FRAME_HEAD.unpack_from(data, pos)
                end = pos + 7 + size
                if len(data) < end + 1:
                    break
                if kind == 1:
                    if _METHOD.unpack_from(data, pos + 7) in _CLOSE:
                        self._failure = "the broker closed the consumer's channel"
                        return
                elif kind == 2:
                    need = _BODY_SIZE.unpack_from(data, pos + 11)[0]
                    parts = []
                    if need == 0:
                        on_body(b"")
                        need = None
                elif kind == 3 and need is not None:
                    parts.append(bytes(data[pos + 7 : end]))
                    need -= size
                    if need <= 0:
                        on_body(parts[0] if len(parts) == 1 else b"".join(parts))
                        need = None
                pos = end + 1
            if pos:
                del data[:pos]
                pos = 0
            chunk = await self._reader.read(262_144)
            if not chunk:
                self._failure = "the broker closed the connection"
                return
            data += chunk
