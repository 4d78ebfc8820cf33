"""The callback endpoint process (``lovense-worker callbacks``): wiring and lifecycle.

A separate, stateless process, so the URL the Lovense Remote app posts to can
face the internet behind an ingress while the workers stay private. It holds
no registry and consumes nothing: it gates each POST, publishes what passes to
``lovense.callbacks`` with a confirm, and answers. ``/healthz``, ``/readyz``
(ready while connected to RabbitMQ) and ``/metrics`` are on
``LOVENSE_METRICS_PORT``, as for the worker. ``run --simulator`` runs one
inside the worker process (:class:`CallbackService` with ``metrics_port=0``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Final

import structlog

from worker.adapters.amqp.forwarder import BrokerAway, Forwarder
from worker.adapters.http.callback_endpoint import CallbackEndpoint
from worker.adapters.http.health import HealthServer
from worker.app import stop_requested
from worker.config import VARIABLES, Settings
from worker.core.gate import Gate
from worker.metrics import CallbackMetrics

log = structlog.get_logger("worker.endpoint")

#: The settings the endpoint reads; every other one keeps its default. So a pod that shares
#: the workers' ConfigMap never resolves a replica ordinal from its Deployment pod name, nor
#: needs the developer token file mounted.
READS: Final = frozenset(VARIABLES[attr] for attr in (
    "amqp_url", "utoken_secret", "allow_unverified_callbacks", "callback_host",
    "callback_port", "callback_path", "callback_source_rate", "callback_source_burst",
    "callback_rate", "callback_trusted_proxies", "metrics_port", "metrics_host",
    "log_format", "log_level",
))


def settings_from_env(environ: Mapping[str, str] | None = None,
                      overrides: Mapping[str, str | None] | None = None) -> Settings:
    """Return the endpoint's settings: only :data:`READS` from the environment."""
    return Settings.from_env(environ, overrides, only=READS)


class CallbackService:
    """The endpoint, its link to RabbitMQ and its health server, started and stopped as one."""

    def __init__(self, settings: Settings, *, metrics: CallbackMetrics | None = None,
                 metrics_port: int | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or CallbackMetrics()
        self.forwarder = Forwarder(settings.brokers, self.metrics)
        gate = Gate(
            source_rate=settings.callback_source_rate,
            source_burst=settings.callback_source_burst,
            rate=settings.callback_rate,
            secret=settings.utoken_secret.reveal(),
            allow_unverified=settings.allow_unverified_callbacks,
        )
        self.endpoint = CallbackEndpoint(
            gate, self._forward, self.metrics, host=settings.callback_host,
            port=settings.callback_port, path=settings.callback_path,
            trusted_proxies=settings.callback_trusted_proxies,
        )
        port = settings.metrics_port if metrics_port is None else metrics_port
        self.health: HealthServer | None = None
        if port:
            self.health = HealthServer(self.metrics.registry, lambda: self.forwarder.connected,
                                       settings.metrics_host, port)

    @property
    def url(self) -> str:
        """Return the callback URL on loopback (the port is known once started)."""
        return self.endpoint.url

    async def _forward(self, body: bytes) -> str | None:
        try:
            await self.forwarder.publish(body)
        except BrokerAway as exc:
            return str(exc)
        return None

    async def start(self, connect_timeout: float = 0.0) -> None:
        """Serve health, start connecting, then serve the callback URL.

        With ``connect_timeout``, wait that long for RabbitMQ first (the endpoint
        answers 503 until it is connected either way).
        """
        if not self.settings.utoken_secret and not self.settings.allow_unverified_callbacks:
            log.warning("callbacks_all_refused",
                        why="LOVENSE_UTOKEN_SECRET is unset: every callback is answered 403 "
                        "(set it to the secret the workers use)")
        if self.health is not None:
            await self.health.start()
        self.forwarder.start()
        if connect_timeout:
            await self.forwarder.wait_connected(connect_timeout)
        await self.endpoint.start()
        log.info("callback_endpoint_started", url_path=self.settings.callback_path,
                 port=self.endpoint.port, metrics_port=self.health.port if self.health else None)

    async def stop(self) -> None:
        """Stop taking callbacks, then close the link and the health server."""
        await self.endpoint.stop()
        await self.forwarder.close()
        if self.health is not None:
            await self.health.stop()
        log.info("callback_endpoint_stopped")

    async def __aenter__(self) -> CallbackService:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve_callbacks(settings: Settings) -> int:
    """Run the callback endpoint until SIGTERM or SIGINT; return the exit code."""
    stopping = stop_requested()
    service = CallbackService(settings)
    await service.start()
    try:
        await stopping.wait()
        log.info("shutdown_requested")
    finally:
        await service.stop()
    return 0
