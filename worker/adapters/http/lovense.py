"""The Lovense client: the only module that speaks HTTP to Lovense.

Two routes, each an aiohttp ``ClientSession`` with its own connection pool:

* server: ``POST {LOVENSE_API_BASE}/api/lan/v2/command`` and ``/api/lan/getQrCode``;
* LAN: ``POST https://<ip>:<httpsPort>/command`` to a :class:`~worker.core.lan.LanAddress`,
  dialled by IP (no DNS) with TLS verified against the ``lovense.club`` name.

aiohttp is called directly: measured here (``make bench``), httpx over the
httpx-aiohttp transport cost about 0.5 ms of CPU per command more than aiohttp
alone, a third of the worker's own budget. Every request goes through one seam,
a :data:`Sender` taking a :class:`Post`, which tests replace or wrap.

Failures are translated here, once, into :class:`~worker.contract.errors.NotDelivered`
(provably never reached Lovense: refused, TLS failure, connect timeout) or
:class:`~worker.contract.errors.MaybeDelivered` (the request may have been received).
An answer is data, whatever its bytes: it becomes a :class:`Reply` or a
MaybeDelivered, never another exception, and only a short scrubbed
:func:`excerpt` of it can reach a result.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
import certifi
import msgspec

from worker.config import Settings
from worker.contract.errors import MaybeDelivered, NotDelivered, UpstreamError
from worker.core.lan import LanAddress
from worker.core.outcomes import Route
from worker.core.replies import (
    MAX_REPLY_BYTES,
    Reply,
    parse_reply,
    speaker,
)

#: The overall deadline trails the connect timeout, so a connect that never
#: completes is reported as such (NotDelivered) rather than as a bare timeout.
_OVERALL_SLACK_S: Final = 0.05
_encode = msgspec.json.Encoder().encode
#: asyncio gives every TLS connection a 256 KiB receive buffer (``SSLProtocol.max_size``,
#: zero-filled, so all of it resident) and reads each decrypted chunk into a fresh
#: 256 KiB bytes that is then shrunk. A pooled LAN connection cost ~300 KB for replies of a
#: few hundred bytes, and the pool keeps its busiest moment (aiohttp reuses idle connections
#: first in, first out: under steady traffic none stays idle for the keep-alive timeout).
#: 32 KiB holds two full TLS records: ~90 KB a connection (measured: 200 pooled connections).
TLS_READ_BUFFER: Final = 32 * 1024


def shrink_tls_buffers() -> None:
    """Lower asyncio's per-connection TLS read buffer to :data:`TLS_READ_BUFFER`.

    A class attribute of asyncio's internals, so it holds for the whole process (AMQPS
    connections too, where 32 KiB reads are as good); a Python without it is left alone.
    """
    protocol = asyncio.sslproto.SSLProtocol
    if getattr(protocol, "max_size", 0) > TLS_READ_BUFFER:
        protocol.max_size = TLS_READ_BUFFER


@dataclass(frozen=True, slots=True)
class Post:
    """One HTTP request exactly as it is sent: the connect seam."""

    route: Route
    url: str
    headers: Mapping[str, str]
    body: bytes
    #: The TLS name to present (SNI) and verify, when the URL names an IP.
    server_hostname: str | None
    timeout: float


#: Sends a Post and returns the HTTP status and body; raises transport errors.
Sender = Callable[[Post], Awaitable[tuple[int, bytes]]]


def lan_ssl_context(extra_ca: str | None) -> ssl.SSLContext:
    """Return a context trusting the system and certifi roots plus an optional extra CA."""
    context = ssl.create_default_context(cafile=certifi.where())
    context.load_default_certs()
    if extra_ca:
        context.load_verify_locations(cafile=extra_ca)
    return context


def classify(exc: BaseException) -> UpstreamError:
    """Translate a transport exception into NotDelivered or MaybeDelivered.

    The whole cause chain is read: a connector error (refused, unreachable, TLS
    handshake or certificate) or a connect timeout anywhere in it means not a
    byte of the request was written.
    """
    chain: list[BaseException] = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    root = chain[-1]
    text = f"{type(root).__name__}: {root}" if str(root) else type(root).__name__
    if any(isinstance(e, aiohttp.ConnectionTimeoutError) for e in chain):
        return NotDelivered(f"connect timed out: {text}")
    connect_phase = (aiohttp.ClientConnectorError, aiohttp.ClientSSLError, ssl.SSLError,
                     ConnectionRefusedError)
    if any(isinstance(e, connect_phase) for e in chain):
        return NotDelivered(f"could not connect: {text}")
    if any(isinstance(e, aiohttp.SocketTimeoutError | TimeoutError) for e in chain):
        return MaybeDelivered(f"no answer in time: {text}")
    return MaybeDelivered(f"connection failed after the request may have been sent: {text}")


class ByteStream(Protocol):
    """What :func:`read_capped` reads: aiohttp's ``StreamReader`` or a fake."""

    async def read(self, n: int = -1) -> bytes: ...


async def read_capped(stream: ByteStream, route: Route, limit: int = MAX_REPLY_BYTES) -> bytes:
    """Read a body to its end, raising MaybeDelivered once more than limit bytes arrive."""
    parts: list[bytes] = []
    size = 0
    while chunk := await stream.read(limit + 1 - size):
        size += len(chunk)
        if size > limit:
            shown = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
            raise MaybeDelivered(f"{speaker(route)} answered more than {shown}")
        parts.append(chunk)
    return b"".join(parts)


class AiohttpSender:
    """The real Sender: one aiohttp session (connection pool) per route."""

    def __init__(self, connections: int, lan_ca_file: str | None) -> None:
        shrink_tls_buffers()
        self._connections = connections
        self._ssl = {"server": ssl.create_default_context(cafile=certifi.where()),
                     "lan": lan_ssl_context(lan_ca_file)}
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, route: Route) -> aiohttp.ClientSession:
        session = self._sessions.get(route)
        if session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, ssl=self._ssl[route])
            session = self._sessions[route] = aiohttp.ClientSession(
                connector=connector, skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar())
        return session

    async def __call__(self, post: Post) -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=post.timeout + _OVERALL_SLACK_S,
                                        sock_connect=post.timeout)
        async with self._session(post.route).post(
            post.url, data=post.body, headers=dict(post.headers), timeout=timeout,
            server_hostname=post.server_hostname, allow_redirects=False,
        ) as response:
            try:
                return response.status, await read_capped(response.content, post.route)
            except MaybeDelivered:
                response.close()  # the rest of the body is never read: drop the connection
                raise

    async def aclose(self) -> None:
        """Close the pools."""
        await asyncio.gather(*(s.close() for s in self._sessions.values()))


class LovenseClient:
    """Send bodies to Lovense's server API or to a Remote app on the LAN."""

    def __init__(self, settings: Settings, *, send: Sender | None = None) -> None:
        ca = str(settings.lan_ca_file) if settings.lan_ca_file else None
        self._send: Sender = send or AiohttpSender(settings.http_connections, ca)
        self._api_base = settings.api_base
        self._platform = settings.platform
        self._server_timeout = settings.server_timeout_ms / 1000
        self._lan_timeout = settings.lan_timeout_ms / 1000

    async def aclose(self) -> None:
        """Close the sender's connection pools, if it has any."""
        close = getattr(self._send, "aclose", None)
        if close is not None:
            await close()

    async def server(self, path: str, body: Mapping[str, Any]) -> Reply:
        """POST a body to the Lovense server API and return its reply."""
        return await self._post(Post(
            "server", f"{self._api_base}{path}", {"Content-Type": "application/json"},
            _encode(body), None, self._server_timeout))

    async def lan(self, address: LanAddress, body: Mapping[str, Any]) -> Reply:
        """POST a body to a Lovense Remote app, dialling its IP and verifying its name."""
        headers = {"Content-Type": "application/json", "X-platform": self._platform,
                   "Host": address.host_header}
        return await self._post(Post(
            "lan", f"https://{address.ip}:{address.port}/command", headers, _encode(body),
            address.domain, self._lan_timeout))

    async def _post(self, post: Post) -> Reply:
        try:
            status, content = await self._send(post)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise classify(exc) from exc
        return parse_reply(post.route, status, content)
