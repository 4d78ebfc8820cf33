"""The metrics and health endpoint: ``/metrics``, ``/healthz``, ``/readyz`` on aiohttp."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


async def listen(app: web.Application, host: str, port: int,
                 shutdown_timeout: float = 60.0) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port``; return its runner and the bound port (port 0 picks one)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # the only way aiohttp exposes the bound port
    if server is not None and port == 0:
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, port


class HealthServer:
    """Serve Prometheus metrics, liveness (the loop answers) and readiness (consuming)."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], bool], host: str,
                 port: int, reason: Callable[[], str | None] | None = None) -> None:
        self._registry = registry
        self._ready = ready
        self._reason = reason
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        """Bind and start serving."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_view)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner, self.port = await listen(app, self._host, self._port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics_view(self, request: web.Request) -> web.Response:
        # The Prometheus text format, or OpenMetrics (with exemplars) when the scraper asks.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self._registry), headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        body = {"status": "not ready"}
        reason = self._reason() if self._reason is not None else None
        if reason:
            body["reason"] = reason
        return web.json_response(body, status=503)
