"""Pairing: callbacks and tombstones in, registry entries out; snapshots of the registry.

Broker-independent. The broker hands in bodies from ``lovense.callbacks`` (to
:meth:`Pairing.check`, on the one replica that validates and dead-letters) and
from the ``lovense.callbacks.log`` stream (to :meth:`Pairing.apply`, on every
replica). Every replica reaches the same verdict on the same body, so the
registries agree without talking to each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from worker.config import Settings
from worker.contract import topology
from worker.core import callbacks
from worker.core.callbacks import CallbackRefused
from worker.core.registry import Registry
from worker.metrics import Metrics

log = structlog.get_logger("worker.services.pairing")



class Pairing:
    """Validate callbacks and keep the registry from the callback log."""

    def __init__(
        self, settings: Settings, registry: Registry, metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self.registry = registry
        self._metrics = metrics
        self._clock = clock
        #: The callback log offset of the last message applied (snapshots record it).
        self.last_offset: int | None = None

    def check(self, body: bytes) -> str | None:
        """Return why a callback is refused, or None when it is accepted."""
        try:
            callback = callbacks.decode(body)
            callbacks.verify(callback, self._settings.utoken_secret.reveal(),
                             self._settings.allow_unverified_callbacks)
            callbacks.address(callback, self._settings.lan_allow)
        except CallbackRefused as exc:
            self._metrics.callbacks.labels("refused").inc()
            log.warning("callback_refused", reason=str(exc))
            return str(exc)
        self._metrics.callbacks.labels("accepted").inc()
        return None

    def apply(self, body: bytes, headers: Mapping[str, Any] | None, offset: int | None) -> None:
        """Apply one callback-log message: a tombstone forgets, a good callback records."""
        if offset is not None:
            self.last_offset = offset
        forget = (headers or {}).get(topology.FORGET_HEADER)
        if forget is not None:
            uid = forget.decode() if isinstance(forget, bytes) else str(forget)
            self.registry.forget(uid)
            return
        try:
            callback = callbacks.decode(body)
            verified = callbacks.verify(callback, self._settings.utoken_secret.reveal(),
                                        self._settings.allow_unverified_callbacks)
            address = callbacks.address(callback, self._settings.lan_allow)
        except CallbackRefused:
            return  # the validating replica dead-letters it; nothing changes here
        self.registry.record(callback, address, verified, self._clock())
        self._metrics.registry_users.set(len(self.registry))

    def prune(self) -> int:
        """Forget entries older than LOVENSE_LAN_TTL_S; return how many went."""
        gone = self.registry.prune()
        self._metrics.registry_users.set(len(self.registry))
        return gone
