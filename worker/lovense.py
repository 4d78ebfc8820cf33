"""The Lovense client: the only module that speaks HTTP to Lovense.

Two routes, each an aiohttp ``ClientSession`` with its own connection pool:

* server: ``POST {LOVENSE_API_BASE}/api/lan/v2/command`` and ``/api/lan/getQrCode``;
* LAN: ``POST https://<ip>:<httpsPort>/command`` to a :class:`~worker.lan.LanAddress`,
  dialled by IP (no DNS) with TLS verified against the ``lovense.club`` name.

aiohttp is called directly: measured here (``make bench``), httpx over the
httpx-aiohttp transport cost about 0.5 ms of CPU per command more than aiohttp
alone, a third of the worker's own budget. Every request goes through one seam,
a :data:`Sender` taking a :class:`Post`, which tests replace or wrap.

Failures are translated here, once, into :class:`~worker.errors.NotDelivered`
(provably never reached Lovense: refused, TLS failure, connect timeout) or
:class:`~worker.errors.MaybeDelivered` (the request may have been received).
An answer is data, whatever its bytes: it becomes a :class:`Reply` or a
MaybeDelivered, never another exception, and only a short scrubbed
:func:`excerpt` of it can reach a result.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import string
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import aiohttp
import certifi
import msgspec

from worker import codes
from worker.config import Settings
from worker.errors import MaybeDelivered, NotDelivered, UpstreamError
from worker.lan import LanAddress

Route = Literal["lan", "server"]

SERVER_COMMAND_PATH: Final = "/api/lan/v2/command"
SERVER_QR_PATH: Final = "/api/lan/getQrCode"
#: The overall deadline trails the connect timeout, so a connect that never
#: completes is reported as such (NotDelivered) rather than as a bare timeout.
_OVERALL_SLACK_S: Final = 0.05
#: The most bytes read of one answer; GetToys, the largest, is a few KiB.
MAX_REPLY_BYTES: Final = 1 << 20
#: The deepest nesting kept (Lovense's answers are 3 deep): results must encode again.
MAX_REPLY_DEPTH: Final = 32
#: A code given as a string has at most this many ASCII digits.
_CODE_DIGITS: Final = 6
#: Integer codes beyond this magnitude are not codes Lovense could mean.
_CODE_LIMIT: Final = 10**_CODE_DIGITS
#: How much of a non-JSON answer is quoted, and of an ok answer's own message.
_EXCERPT_CHARS: Final = 40
_MESSAGE_CHARS: Final = 200
#: How many bytes of a non-JSON answer are looked at to make its excerpt.
_EXCERPT_WINDOW: Final = 1024
#: Any long opaque run (tokens are such runs), and a shorter one after the word token.
_OPAQUE_RUN: Final = re.compile(r"[A-Za-z0-9+/=_\-]{20,}")
_AFTER_TOKEN: Final = re.compile(r"(?i)(token[\"'\s:=]{0,4})[A-Za-z0-9_\-]{16,}")
_RUN_CHARS: Final = string.ascii_letters + string.digits + "+/=_-"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Reply:
    """What Lovense answered: its code, whether that means success, its words, its data."""

    code: int | None
    ok: bool
    message: str
    data: Any = None


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


def excerpt(text: str, limit: int) -> str:
    """Return text as at most limit printable chars, with anything token-like replaced by "…".

    The developer token cannot be recognised here, so every run that could be a
    secret goes: any opaque run of 20 or more, then a shorter one after the word token.
    """
    if len(text) > limit * 8:
        text = _cut(text[: limit * 8])
    text = "".join(c if c.isprintable() else " " if c.isspace() else "" for c in text)
    text = _AFTER_TOKEN.sub(r"\1…", _OPAQUE_RUN.sub("…", text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(route: Route) -> str:
    return "Lovense server" if route == "server" else "Lovense Remote app"


def _cut(head: str) -> str:
    """Return the head of a longer text without its last run: that may be a token's start."""
    return head.rstrip(_RUN_CHARS)


def _quote(content: bytes) -> str:
    text = content[:_EXCERPT_WINDOW].decode("utf-8", "replace")
    if len(content) > _EXCERPT_WINDOW:
        text = _cut(text)
    return excerpt(text, _EXCERPT_CHARS)


def too_deep(value: object, limit: int) -> bool:
    """Return whether decoded JSON nests deeper than ``limit`` (checked without recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children: Iterable[object] = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _decode_object(where: str, content: bytes) -> dict[str, Any]:
    deep = MaybeDelivered(f"{where} answered JSON nested too deeply to read")
    try:
        body = _decode(content)
    except RecursionError:
        raise deep from None
    except ValueError:  # msgspec.DecodeError, and any other way the bytes are not JSON
        raise MaybeDelivered(
            f"{where} answered with something that is not JSON: {_quote(content)!r}"
        ) from None
    if not isinstance(body, dict):
        raise MaybeDelivered(f"{where} answered JSON that is not an object")
    if too_deep(body, MAX_REPLY_DEPTH):
        raise deep
    return body


def parse_reply(route: Route, status: int, content: bytes) -> Reply:
    """Turn an HTTP answer from Lovense into a Reply, or raise MaybeDelivered.

    Nothing else escapes, whatever the bytes: a Stop's retry loop depends on it.
    """
    where = _where(route)
    if status >= 500:
        raise MaybeDelivered(f"{where} answered HTTP {status}")
    if status >= 400:
        return Reply(code=None, ok=False, message=f"{where} answered HTTP {status}")
    body = _decode_object(where, content)
    code = body.get("code")
    if isinstance(code, str) and len(code) <= _CODE_DIGITS and code.isascii() and code.isdigit():
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        raise MaybeDelivered(f"{where} answered without a numeric code")
    if not -_CODE_LIMIT < code < _CODE_LIMIT:
        return Reply(code=None, ok=False, message=codes.describe(code, route))
    ok = codes.is_success(code, route)
    message = body.get("message")
    message = excerpt(message, _MESSAGE_CHARS) if ok and isinstance(message, str) else ""
    return Reply(code=code, ok=ok, message=message or codes.describe(code, route),
                 data=body.get("data"))


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
            raise MaybeDelivered(f"{_where(route)} answered more than {shown}")
        parts.append(chunk)
    return b"".join(parts)


class AiohttpSender:
    """The real Sender: one aiohttp session (connection pool) per route."""

    def __init__(self, connections: int, lan_ca_file: str | None) -> None:
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
