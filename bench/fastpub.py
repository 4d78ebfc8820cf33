"""A minimal AMQP 0-9-1 publisher with confirms and a results consumer, for heavy load
(aio-pika costs ~250 µs of bench CPU per confirmed publish; bench/README.md)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final, Self
from urllib.parse import unquote, urlparse

from pamqp import commands, frame, header

from bench.procs import BenchError

_FRAME_END: Final = b"\xce"
_PROTOCOL: Final = b"AMQP\x00\x00\x09\x01"
_CHANNEL: Final = 1
#: Content header: class 60 (basic), weight 0, body size, flags = delivery-mode only, mode 2.
_HEADER: Final = struct.Struct("!BHIHHQHB")
_FRAME_HEAD: Final = struct.Struct("!BHI")
_METHOD: Final = struct.Struct("!HH")
_LONG: Final = struct.Struct("!Q")  # a delivery tag, a body size
_ACK, _NACK = (60, 80), (60, 120)
_CLOSE: Final = frozenset({(20, 40), (10, 50)})  # Channel.Close, Connection.Close
#: One message: routing key, body, properties (None: persistent, nothing else).
Message = tuple[str, bytes, commands.Basic.Properties | None]


class _Raw:
    """One AMQP connection with one channel, spoken directly: frames are cut by hand (7-byte
    header, payload, frame end); pamqp decodes only the handshake's, the rest are told apart
    by class and method id. ``on_body`` gets every delivered body, in order."""

    def __init__(self, url: str, name: str, on_body: Callable[[bytes], None] | None = None,
                 ) -> None:
        self._url, self._name, self._on_body = urlparse(url), name, on_body
        self._writer: asyncio.StreamWriter | None = None
        self._frames: AsyncIterator[tuple[int, bytes]] | None = None
        self._frame_max = 131_072
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()
        self.sent = self.confirmed = 0

    async def __aenter__(self) -> Self:
        url = self._url
        reader, self._writer = await asyncio.open_connection(url.hostname or "localhost",
                                                             url.port or 5672)
        self._frames = self._cut(reader)
        self._writer.write(_PROTOCOL)
        await self._call(None, commands.Connection.Start)
        user, password = unquote(url.username or "guest"), unquote(url.password or "guest")
        tune = await self._call(commands.Connection.StartOk(
            client_properties={"connection_name": self._name, "product": "lovense-bench"},
            mechanism="PLAIN", response=f"\0{user}\0{password}"), commands.Connection.Tune, 0)
        self._frame_max = tune.frame_max or self._frame_max
        await self._call(commands.Connection.TuneOk(
            channel_max=tune.channel_max, frame_max=self._frame_max, heartbeat=0), None, 0)
        vhost = unquote(url.path[1:]) if len(url.path) > 1 else "/"
        await self._call(commands.Connection.Open(virtual_host=vhost), commands.Connection.OpenOk,
                         0)
        await self._call(commands.Channel.Open(), commands.Channel.OpenOk)
        await self._opened()
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is None:
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._call(commands.Connection.Close(reply_code=200, reply_text="bench done"),
                             None, 0)
            await self._writer.drain()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._writer = None

    async def _opened(self) -> None:  # set the channel up (subclasses)
        pass

    @staticmethod
    async def _cut(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
        """Yield (frame type, whole frame) for every frame the broker sends."""
        data, pos = bytearray(), 0
        while True:
            while len(data) - pos >= 7:
                kind, _channel, size = _FRAME_HEAD.unpack_from(data, pos)
                if len(data) < pos + size + 8:
                    break
                yield kind, bytes(data[pos : pos + size + 8])
                pos += size + 8
            del data[:pos]
            pos = 0
            if not (chunk := await reader.read(262_144)):
                raise BenchError("fastpub: the broker closed the connection")
            data += chunk

    async def _call(self, value: Any, reply: type | None, channel: int = _CHANNEL) -> Any:
        """Send ``value`` (if any); then read the next frame and check it is a ``reply``."""
        assert self._writer is not None and self._frames is not None
        if value is not None:
            self._writer.write(frame.marshal(value, channel))
        if reply is None:
            return None
        if not isinstance(answer := frame.unmarshal((await anext(self._frames))[1])[2], reply):
            raise BenchError(f"fastpub: expected {reply.__name__}, got {answer!r}")
        return answer

    async def _read(self) -> None:
        """Count confirms and hand deliveries' bodies to ``on_body`` until the connection ends."""
        assert self._frames is not None
        need: int | None = None  # body bytes still expected for the current delivery
        parts: list[bytes] = []
        try:
            async for kind, raw in self._frames:
                if kind == 1:
                    method = _METHOD.unpack_from(raw, 7)
                    if method == _ACK:
                        self.confirmed = max(self.confirmed, _LONG.unpack_from(raw, 11)[0])
                    elif method == _NACK:
                        self._failure = f"broker nacked message {_LONG.unpack_from(raw, 11)[0]}"
                    elif method in _CLOSE:
                        close: Any = frame.unmarshal(raw)[2]  # Channel.Close or Connection.Close
                        self._failure = f"broker closed: {close.reply_code} {close.reply_text}"
                        return
                    self._progress.set()
                elif kind == 2 and self._on_body is not None:
                    need, parts = _LONG.unpack_from(raw, 11)[0], []
                elif kind == 3 and need is not None:
                    parts.append(raw[7:-1])
                    need -= len(raw) - 8
                if need is not None and need <= 0 and self._on_body is not None:
                    self._on_body(parts[0] if len(parts) == 1 else b"".join(parts))
                    need = None
        except (BenchError, ConnectionError) as exc:
            self._failure = self._failure or str(exc)
        finally:
            self._progress.set()


class FastPublisher(_Raw):
    """Publish many persistent messages, with confirms, far cheaper than aio-pika."""

    def __init__(self, url: str, *, name: str = "bench-fastpub", window: int = 20_000) -> None:
        super().__init__(url, name)
        self._window = window

    async def _opened(self) -> None:
        await self._call(commands.Confirm.Select(), commands.Confirm.SelectOk)

    async def publish(self, messages: Iterable[Message], exchange: str = "",
                      batch: int = 2_000) -> int:
        """Publish (routing key, body, properties) messages, ``batch`` per write; return how many.
        None packs a header that says persistent and nothing else, far cheaper than pamqp's."""
        limit, methods, parts, count = self._frame_max - 8, dict[str, bytes](), list[bytes](), 0
        for key, body, properties in messages:
            if (method := methods.get(key)) is None:
                method = methods[key] = frame.marshal(commands.Basic.Publish(
                    exchange=exchange, routing_key=key), _CHANNEL)
            parts.append(method)
            parts.append(_HEADER.pack(2, _CHANNEL, 15, 60, 0, len(body), 0x1000, 2) + _FRAME_END
                         if properties is None else
                         frame.marshal(header.ContentHeader(0, len(body), properties), _CHANNEL))
            for start in range(0, len(body), limit):  # none for an empty body
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
        await self._until(lambda: self.sent - self.confirmed <= self._window)
        self._writer.write(b"".join(parts))
        self.sent += messages
        await self._writer.drain()

    async def _until(self, done: Callable[[], bool]) -> None:
        while not done() and self._failure is None:
            self._progress.clear()
            await self._progress.wait()
        if self._failure is not None:
            raise BenchError(f"fastpub: {self._failure}")

    async def wait_confirmed(self, timeout: float = 120.0) -> None:
        """Wait until the broker confirmed every message published."""
        await asyncio.wait_for(self._until(lambda: self.confirmed >= self.sent), timeout)


class FastConsumer(_Raw):
    """Consume (no ack) an exclusive queue bound to ``exchange``; ``on_body`` gets every body."""

    def __init__(self, url: str, exchange: str, routing_key: str,
                 on_body: Callable[[bytes], None], *, name: str = "bench-fastconsume") -> None:
        super().__init__(url, name, on_body)
        self._bind = commands.Queue.Bind(exchange=exchange, routing_key=routing_key)

    async def _opened(self) -> None:
        self._bind.queue = (await self._call(commands.Queue.Declare(
            queue="", exclusive=True, auto_delete=True), commands.Queue.DeclareOk)).queue
        await self._call(self._bind, commands.Queue.BindOk)
        await self._call(commands.Basic.Consume(queue=self._bind.queue, no_ack=True),
                         commands.Basic.ConsumeOk)
