"""Pairing: callbacks and tombstones in, registry entries out; snapshots of the registry.

Broker-independent. The broker hands in bodies from ``lovense.callbacks`` (to
:meth:`Pairing.check`, on the one replica that validates and dead-letters) and
from the ``lovense.callbacks.log`` stream (to :meth:`Pairing.apply`, on every
replica). Every replica reaches the same verdict on the same body, so the
registries agree without talking to each other.

Applying an entry also derives its lifecycle events (:mod:`worker.core.events`)
and hands them to :class:`~worker.services.events.Claims`, for the validating
replica to publish; looking for expired users (:meth:`Pairing.expired`) is that
replica's job too. GetToys reports (header ``x-lovense-toys``) teach every
replica a user's batteries and what each toy can do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec
import structlog

from worker.config import Settings
from worker.contract import topology
from worker.contract.users import UserEvent, UserExpired, report_decoder
from worker.core import callbacks, events
from worker.core.callbacks import CallbackRefused
from worker.core.registry import Endpoint, Registry, battery_level, same_state
from worker.metrics import Metrics
from worker.services.events import Claims, claim_key

log = structlog.get_logger("worker.services.pairing")

#: Sweeps a replica that does not validate may miss before its prune drops a stale entry
#: silently: the validating replica reports it expired first.
PRUNE_GRACE_SWEEPS: Final = 3
#: The most users one sweep reports expired (a mass expiry spreads over sweeps).
EXPIRE_PER_SWEEP: Final = 10_000


class Pairing:
    """Validate callbacks and keep the registry from the callback log."""

    def __init__(
        self, settings: Settings, registry: Registry, metrics: Metrics,
        clock: Callable[[], float] = time.time, claims: Claims | None = None,
    ) -> None:
        self._settings = settings
        self.registry = registry
        self._metrics = metrics
        self._clock = clock
        self.claims = claims
        #: How often the validating replica looks for expired users.
        self.sweep_interval_s = events.sweep_interval_s(settings.lan_ttl_s)
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

    def apply(self, body: bytes, headers: Mapping[str, Any] | None, offset: int | None,
              message_id: str | None = None) -> None:
        """Apply one callback-log message: a tombstone forgets, a report teaches, a good
        callback records; the events of what changed go to the claims."""
        if offset is not None:
            self.last_offset = offset
        headers = headers or {}
        forget = headers.get(topology.FORGET_HEADER)
        if forget is not None:
            self.registry.forget(_text(forget))
            self._metrics.registry_users.set(len(self.registry))
            return
        # Ids of the events: the same on every replica, unique per published message.
        key = (f"{message_id}/{offset}" if message_id is not None or offset is not None
               else uuid.uuid4().hex)
        toys_of = headers.get(topology.TOYS_HEADER)
        if toys_of is not None:
            self._derive(body, message_id, self._learn(_text(toys_of), body, key))
            return
        try:
            callback = callbacks.decode(body)
            verified = callbacks.verify(callback, self._settings.utoken_secret.reveal(),
                                        self._settings.allow_unverified_callbacks)
            address = callbacks.address(callback, self._settings.lan_allow)
        except CallbackRefused:
            return  # the validating replica dead-letters it; nothing changes here
        uid = callback.uid
        before = self._fresh(uid)
        self.registry.record(callback, address, verified, self._clock())
        self._metrics.registry_users.set(len(self.registry))
        after = self.registry.raw(uid)
        found: list[UserEvent] = []
        if after is not None and self.claims is not None and (
                before is None or not same_state(before, after)):
            found = events.after_callback(
                None if before is None else Registry.decode(uid, before),
                Registry.decode(uid, after), key=key, at=events.rfc3339_s(self._clock()))
        self._derive(body, message_id, found)

    def _fresh(self, uid: str) -> bytes | None:
        """Return a user's entry as it stands, or None when unknown or stale (so it pairs)."""
        blob = self.registry.raw(uid)
        return blob if blob is not None and self.registry.fresh(blob) else None

    def _learn(self, uid: str, body: bytes, key: str) -> list[UserEvent]:
        """Apply a GetToys report to a known user; return the battery crossings it makes."""
        try:
            report = report_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return []
        known = self.registry.get(uid, fresh_only=False)
        if known is None:
            return []
        self.registry.learn_toys(
            uid,
            {toy: t.fullFunctionNames for toy, t in report.toys.items()
             if t.fullFunctionNames is not None},
            {toy: battery_level(t.battery) for toy, t in report.toys.items()
             if t.battery is not None})
        after: Endpoint | None = self.registry.get(uid, fresh_only=False)
        if after is None or self.claims is None:
            return []
        return events.after_report(known, after, key=key, at=events.rfc3339_s(self._clock()))

    def _derive(self, body: bytes, message_id: str | None, found: list[UserEvent]) -> None:
        if self.claims is not None:
            self.claims.derived(claim_key(body, message_id), tuple(found))

    def prune(self) -> int:
        """Forget entries stale for longer than a few sweeps beyond LOVENSE_LAN_TTL_S, silently;
        return how many went. The validating replica reports them first (:meth:`expired`)."""
        gone = self.registry.prune(PRUNE_GRACE_SWEEPS * self.sweep_interval_s)
        self._metrics.registry_users.set(len(self.registry))
        return gone

    def expired(self, limit: int = EXPIRE_PER_SWEEP) -> list[UserExpired]:
        """Return a ``user.expired`` event for each entry older than LOVENSE_LAN_TTL_S (at most
        ``limit``, those silent longest first: the next sweep takes the rest).

        The entries stay until :meth:`drop` (once the events are out): an event that
        could not be published is derived again, with the same id, next time.
        """
        at = events.rfc3339_s(self._clock())
        return [events.expired(uid, seen, key=f"{uid}@{seen!r}", at=at)
                for uid, seen in sorted(self.registry.stale(), key=lambda e: e[1])[:limit]]

    def drop(self, gone: list[UserExpired]) -> None:
        """Forget the users of these events, unless a callback refreshed them meanwhile."""
        for event in gone:
            blob = self.registry.raw(event.uid)
            if blob is not None and not self.registry.fresh(blob):
                self.registry.forget(event.uid)
        self._metrics.registry_users.set(len(self.registry))


def _text(value: Any) -> str:
    """Return a header value as text (pamqp gives non-UTF-8-safe strings as bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
