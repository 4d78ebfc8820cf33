"""The Lovense client: the only module that speaks HTTP to Lovense.

Two routes, each an ``httpx.AsyncClient`` over the ``httpx-aiohttp`` transport
(httpcore's own pool costs milliseconds of CPU per request under concurrency):

* server: ``POST {LOVENSE_API_BASE}/api/lan/v2/command`` and ``/api/lan/getQrCode``;
* LAN: ``POST https://<ip>:<httpsPort>/command`` to a :class:`~worker.lan.LanAddress`,
  dialled by IP (no DNS) with TLS verified against the ``lovense.club`` name.

Failures are translated here, once, into :class:`~worker.errors.NotDelivered`
(provably never reached Lovense) or :class:`~worker.errors.MaybeDelivered`,
judged from the underlying aiohttp exception: httpx-aiohttp reports almost every
aiohttp error as ``ConnectTimeout``, even after the request was sent.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
import certifi
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport

from worker import codes
from worker.config import Settings
from worker.errors import MaybeDelivered, NotDelivered, UpstreamError
from worker.lan import LanAddress

Route = Literal["lan", "server"]

SERVER_COMMAND_PATH: Final = "/api/lan/v2/command"
SERVER_QR_PATH: Final = "/api/lan/getQrCode"
_JSON_HEADERS: Final = {"content-type": "application/json"}
#: The overall deadline trails the connect timeout, so a connect that never
#: completes is reported as such (NotDelivered) rather than as a bare timeout.
_OVERALL_SLACK_S: Final = 0.05
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Reply:
    """What Lovense answered: its code, whether that means success, its words, its data."""

    code: int | None
    ok: bool
    message: str
    data: Any = None


def lan_ssl_context(extra_ca: str | None) -> ssl.SSLContext:
    """Return a context trusting the system and certifi roots plus an optional extra CA."""
    context = ssl.create_default_context(cafile=certifi.where())
    context.load_default_certs()
    if extra_ca:
        context.load_verify_locations(cafile=extra_ca)
    return context


def classify(exc: BaseException) -> UpstreamError:
    """Translate a transport exception into NotDelivered or MaybeDelivered."""
    root: BaseException = exc
    seen: set[int] = set()
    while root.__cause__ is not None and id(root) not in seen:
        seen.add(id(root))
        root = root.__cause__
    text = f"{type(root).__name__}: {root}" if str(root) else type(root).__name__
    # Connector errors (refused, unreachable, TLS handshake, certificate) and
    # connect timeouts happen before a byte of the request is written.
    if isinstance(root, aiohttp.ClientConnectorError | aiohttp.ClientSSLError):
        return NotDelivered(f"could not connect: {text}")
    if isinstance(root, aiohttp.ConnectionTimeoutError):
        return NotDelivered(f"connect timed out: {text}")
    if isinstance(root, ssl.SSLError | ConnectionRefusedError):
        return NotDelivered(f"could not connect: {text}")
    if isinstance(root, aiohttp.SocketTimeoutError | asyncio.TimeoutError | TimeoutError):
        return MaybeDelivered(f"no answer in time: {text}")
    return MaybeDelivered(f"connection failed after the request may have been sent: {text}")


def parse_reply(route: Route, status: int, content: bytes) -> Reply:
    """Turn an HTTP answer from Lovense into a Reply, or raise MaybeDelivered."""
    where = "Lovense server" if route == "server" else "Lovense Remote app"
    if status >= 500:
        raise MaybeDelivered(f"{where} answered HTTP {status}")
    if status >= 400:
        return Reply(code=None, ok=False, message=f"{where} answered HTTP {status}")
    try:
        body = _decode(content)
    except msgspec.DecodeError:
        snippet = content[:80].decode("utf-8", "replace")
        raise MaybeDelivered(
            f"{where} answered with something that is not JSON: {snippet!r}"
        ) from None
    if not isinstance(body, dict):
        raise MaybeDelivered(f"{where} answered JSON that is not an object")
    code = body.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        raise MaybeDelivered(f"{where} answered without a numeric code")
    ok = codes.is_success(code, route)
    message = body.get("message")
    if not ok or not isinstance(message, str) or not message:
        message = codes.describe(code, route)
    return Reply(code=code, ok=ok, message=message, data=body.get("data"))


class LovenseClient:
    """Send bodies to Lovense's server API or to a Remote app on the LAN."""

    def __init__(
        self,
        settings: Settings,
        *,
        server_transport: httpx.AsyncBaseTransport | None = None,
        lan_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        limits = httpx.Limits(
            max_connections=settings.http_connections,
            max_keepalive_connections=settings.http_connections,
        )
        ca = str(settings.lan_ca_file) if settings.lan_ca_file else None
        self._api_base = settings.api_base
        self._platform = settings.platform
        self._server_timeout = settings.server_timeout_ms / 1000
        self._lan_timeout = settings.lan_timeout_ms / 1000
        self._server = httpx.AsyncClient(
            transport=server_transport or AiohttpTransport(limits=limits),
            timeout=httpx.Timeout(self._server_timeout),
        )
        self._lan = httpx.AsyncClient(
            transport=lan_transport or AiohttpTransport(verify=lan_ssl_context(ca), limits=limits),
            timeout=httpx.Timeout(self._lan_timeout),
        )

    async def aclose(self) -> None:
        """Close both connection pools."""
        await asyncio.gather(self._server.aclose(), self._lan.aclose())

    async def server(self, path: str, body: Mapping[str, Any]) -> Reply:
        """POST a body to the Lovense server API and return its reply."""
        return await self._post(
            "server", self._server, f"{self._api_base}{path}", body, _JSON_HEADERS, {},
            self._server_timeout,
        )

    async def lan(self, address: LanAddress, body: Mapping[str, Any]) -> Reply:
        """POST a body to a Lovense Remote app, dialling its IP and verifying its name."""
        headers = {
            "content-type": "application/json",
            "x-platform": self._platform,
            "host": address.host_header,
        }
        return await self._post(
            "lan", self._lan, f"https://{address.ip}:{address.port}/command", body, headers,
            {"sni_hostname": address.domain}, self._lan_timeout,
        )

    async def _post(
        self,
        route: Route,
        client: httpx.AsyncClient,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        extensions: dict[str, Any],
        timeout: float,
    ) -> Reply:
        try:
            # The transport has no overall deadline of its own (only connect
            # and per-read ones), so bound the whole exchange here.
            async with asyncio.timeout(timeout + _OVERALL_SLACK_S):
                response = await client.post(
                    url, content=_encode(body), headers=headers, extensions=extensions
                )
        except (httpx.HTTPError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise classify(exc) from exc
        return parse_reply(route, response.status_code, response.content)
