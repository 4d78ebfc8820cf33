"""The callback URL: the aiohttp server the Lovense Remote app POSTs its callback to.

Each POST is answered in the order the gate (:mod:`worker.core.gate`) sets:
429 over a rate limit (before the body is read), 413 over 64 KiB, 400 not a
callback, 403 wrong or missing ``utoken``, 503 when the callback could not be
published and confirmed, 200 once RabbitMQ confirmed it. Every answer is a
small JSON object, counted by status; only a 200 was published.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from aiohttp import web

from worker.adapters.http.health import listen
from worker.core.callbacks import MAX_CALLBACK_BYTES
from worker.core.gate import TOO_LARGE, Gate, Verdict, client_address
from worker.core.lan import Networks
from worker.metrics import CallbackMetrics

log = structlog.get_logger("worker.adapters.http.callback_endpoint")

#: Publish a callback body and wait for its confirm; return None when confirmed, else why not.
Forward = Callable[[bytes], Awaitable[str | None]]

#: A body that has not arrived within this is refused (a slow sender holds a connection).
READ_TIMEOUT_S: Final = 10.0
#: On stop, requests in flight get this long to finish (a confirm takes at most 5 s).
SHUTDOWN_S: Final = 10.0
_OK: Final = b'{"status":"ok"}'


class CallbackEndpoint:
    """Serve ``POST <path>`` on ``host:port``; everything else there is 404 or 405."""

    def __init__(
        self,
        gate: Gate,
        forward: Forward,
        metrics: CallbackMetrics,
        *,
        host: str,
        port: int,
        path: str,
        trusted_proxies: Networks,
    ) -> None:
        self._gate = gate
        self._forward = forward
        self._metrics = metrics
        self._host = host
        self._path = path
        self._trusted = trusted_proxies
        self._runner: web.AppRunner | None = None
        #: The bound port (the configured one, or the one picked for port 0) once started.
        self.port = port

    @property
    def url(self) -> str:
        """Return the callback URL on loopback, as the simulator's dashboard is given it."""
        host = "127.0.0.1" if self._host in ("0.0.0.0", "", "::") else self._host
        return f"http://{host}:{self.port}{self._path}"

    async def start(self) -> None:
        """Bind and start serving."""
        app = web.Application(client_max_size=MAX_CALLBACK_BYTES + 1)
        app.router.add_post(self._path, self._post)
        self._runner, self.port = await listen(app, self._host, self.port,
                                               shutdown_timeout=SHUTDOWN_S)

    async def stop(self) -> None:
        """Stop listening; requests in flight get up to :data:`SHUTDOWN_S` to be answered."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _post(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        source = client_address(request.remote, request.headers.get("X-Forwarded-For"),
                                self._trusted)
        verdict = await self._decide(request, source)
        self._metrics.answered(verdict.status)
        self._metrics.sources.set(self._gate.sources)
        self._metrics.seconds.observe(time.perf_counter() - started)
        if verdict.accepted:
            return web.Response(body=_OK, content_type="application/json")
        if verdict.status != 429:
            log.info("callback_refused", status=verdict.status, reason=verdict.reason,
                     source=source)
        headers = {"Retry-After": "1"} if verdict.status in (429, 503) else None
        return web.json_response({"error": verdict.reason}, status=verdict.status,
                                 headers=headers)

    async def _decide(self, request: web.Request, source: str) -> Verdict:
        verdict = self._gate.admit(source, time.monotonic() * 1000.0)
        if not verdict.accepted:
            return verdict
        body = await _read_capped(request)
        if isinstance(body, Verdict):
            return body
        verdict = self._gate.check(body)
        if not verdict.accepted:
            return verdict
        why = await self._forward(body)
        return Verdict(503, why) if why is not None else verdict


async def _read_capped(request: web.Request) -> bytes | Verdict:
    """Return the body, or 413 when it is (or says it is) over the cap: never read more."""
    if request.content_length is not None and request.content_length > MAX_CALLBACK_BYTES:
        return TOO_LARGE
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > MAX_CALLBACK_BYTES:
                    return TOO_LARGE
                chunks.append(chunk)
    except TimeoutError:
        return Verdict(408, f"the body did not arrive within {READ_TIMEOUT_S:g} s")
    return b"".join(chunks)
