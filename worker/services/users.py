"""The worker's own commands about a user: GetUser answers what it knows, Forget erases them.

Neither calls Lovense. GetUser reads this replica's registry and circuits: the
route ``mode: auto`` would take now, the toys as last reported, when the app was
last seen; never the utoken. Forget erases the user here, writes a tombstone for
every other replica, and publishes ``user.forgotten`` (from this replica only,
which is the one the Forget reached).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime

from worker.config import Settings
from worker.contract.errors import InvalidCommand, NotDelivered
from worker.contract.messages import GetUser, Via
from worker.contract.users import Circuit, UserForgotten
from worker.core import events
from worker.core.lan import open_door
from worker.core.outcomes import Outcome
from worker.core.registry import Endpoint
from worker.services.dispatch import Dispatcher
from worker.services.events import Events

#: Writes a tombstone for a uid to the callback log (the registry log's).
AnnounceForget = Callable[[str], Coroutine[object, object, None]]

_ASKED = "what this replica knows; neither the app nor Lovense was contacted"


class Users:
    """Answer GetUser and carry out Forget, from the dispatcher's registry and circuits."""

    def __init__(
        self, settings: Settings, dispatcher: Dispatcher, *, events: Events | None = None,
        announce_forget: AnnounceForget | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._events = events
        self._announce_forget = announce_forget
        self._now = now

    def describe(self, uid: str) -> Outcome:
        """Return GetUser's outcome: ``ok`` with what is known of ``uid``, attempts 0."""
        registry = self._dispatcher.registry
        known = registry.get(uid) if registry is not None else None
        circuit = self._circuit(known)
        info = events.user_info(known, route=self._route(uid, known, circuit), circuit=circuit)
        return Outcome(status="ok", message=_ASKED, data=info)

    def _circuit(self, known: Endpoint | None) -> Circuit:
        breakers = self._dispatcher.breakers
        if known is None or breakers is None:
            return "closed"
        return breakers.state(f"{known.ip}:{known.port}")

    def _route(self, uid: str, known: Endpoint | None, circuit: Circuit) -> Via:
        """Return the route ``mode: auto`` would take now (without taking a half-open trial)."""
        if known is None or circuit == "open":
            return "server"
        endpoint = self._dispatcher.endpoint_for(GetUser(uid=uid), uid)
        if endpoint is None:
            return "server"
        try:
            open_door(endpoint.domain, endpoint.httpsPort, self._settings.lan_allow)
        except (InvalidCommand, NotDelivered):
            return "server"
        return "lan"

    async def forget(self, uid: str) -> Outcome:
        """Erase ``uid`` here and, through a tombstone, everywhere; say so on lovense.events."""
        registry = self._dispatcher.registry
        known = registry.forget(uid) if registry is not None else False
        if self._announce_forget is not None:
            await self._announce_forget(uid)
        if self._events is not None:
            at = events.rfc3339_s(self._now().timestamp())
            await self._events.send([UserForgotten(id=uuid.uuid4().hex, uid=uid, at=at,
                                                   known=known)])
        words = ("forgotten on every replica; a tombstone keeps replays and snapshots from "
                 "bringing it back") if known else "not known here; a tombstone was written anyway"
        return Outcome(status="ok", message=words)
