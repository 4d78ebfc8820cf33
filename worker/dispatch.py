"""Dispatch: plan a command's route and make single calls to Lovense, each ending in an Outcome.

Route choice is a pure function (:func:`choose_route`); calls go through an
injected :class:`Upstream` (the real one is :class:`worker.lovense.LovenseClient`),
so this module never touches a socket itself. What is sent when is the
scheduler's business (:mod:`worker.runtime`); this module carries one call.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol

import msgspec

from worker import bodies, codes, rules
from worker.config import Settings
from worker.errors import InvalidCommand, MaybeDelivered, NotDelivered, UpstreamError
from worker.lan import LanAddress, open_door
from worker.lovense import SERVER_COMMAND_PATH, SERVER_QR_PATH, Reply
from worker.messages import Command, GetQrCode, GetToys, LanTarget, Status, Via
from worker.metrics import Metrics

Route = Literal["lan", "server"]
QR_LIFETIME: Final = timedelta(hours=4)
#: Codes a Stop does not retry: the request itself is wrong or not allowed.
_STOP_FINAL_CODES: Final = frozenset({400, 401, 402, 403, 404, 501, 502, 503})


class Upstream(Protocol):
    """What dispatch needs from a Lovense client."""

    async def server(self, path: str, body: Mapping[str, Any]) -> Reply: ...

    async def lan(self, address: LanAddress, body: Mapping[str, Any]) -> Reply: ...


@dataclass(slots=True)
class Outcome:
    """What happened to (part of) a command: the fields of a result that dispatch decides."""

    status: Status
    message: str
    via: Via | None = None
    code: int | None = None
    data: Any = None
    attempts: int = 0
    fallback: bool = False
    failed_uids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Plan:
    """How one user's share of a command travels: the route and, on the LAN, the address."""

    route: Route
    address: LanAddress | None = None


def choose_route(cmd: Command, endpoint: LanTarget | None) -> Route | Outcome:
    """Return the route a command takes, or the failed Outcome when none can carry it."""
    if cmd.mode == "server":
        return "server"
    if endpoint is not None:
        return "lan"
    if cmd.mode == "lan" or rules.needs_lan(cmd):
        users = ", ".join(cmd.targets)
        return Outcome(
            status="failed",
            message=(
                f"no LAN endpoint is known for {users}: {cmd.kind} needs the LAN route "
                "(give lan {domain, httpsPort} in the command)"
                if rules.needs_lan(cmd)
                else f"no LAN endpoint is known for {users} (give lan {{domain, httpsPort}} "
                "in the command, or use mode auto or server)"
            ),
        )
    return "server"


_toys_decoder: Final = msgspec.json.Decoder()


def shape_data(cmd: Command, reply: Reply, now: datetime) -> Any:
    """Return the result's ``data``: GetToys' toys string parsed, GetQrCode's expiry added."""
    data = reply.data
    if isinstance(cmd, GetToys) and isinstance(data, dict) and isinstance(data.get("toys"), str):
        try:
            data = {**data, "toys": _toys_decoder.decode(data["toys"])}
        except msgspec.DecodeError:
            raise MaybeDelivered("Lovense Remote answered GetToys with a toys field that is "
                                 "not JSON") from None
    if isinstance(cmd, GetQrCode) and isinstance(data, dict):
        expires = (now + QR_LIFETIME).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        data = {"qr": data.get("qr"), "code": data.get("code"), "expiresAt": expires}
    return data


def stop_backoff_s(attempt: int, *, base: float = 0.1, cap: float = 2.0,
                   rand: Callable[[], float] = random.random) -> float:
    """Return the jittered exponential delay before retry ``attempt`` (1-based) of a Stop."""
    return float(min(cap, base * 2 ** (attempt - 1)) * (0.5 + rand() / 2))


class Dispatcher:
    """Plan routes and carry single calls to Lovense, turning what happens into Outcomes."""

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        metrics: Metrics,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._upstream = upstream
        self._metrics = metrics
        self._now = now

    def endpoint_for(self, cmd: Command, uid: str) -> LanTarget | None:
        """Return the LAN app to call for this user, if one is known."""
        return cmd.lan

    def plan(self, cmd: Command, endpoint: LanTarget | None) -> Plan | Outcome:
        """Return how a share travels given its LAN endpoint, or the Outcome that ends it unsent."""
        route = choose_route(cmd, endpoint)
        if isinstance(route, Outcome):
            return route
        try:
            if route == "lan":
                assert endpoint is not None
                return Plan("lan", open_door(endpoint.domain, endpoint.httpsPort,
                                             self._settings.lan_allow))
            rules.check_route(cmd, "server")
        except InvalidCommand as exc:
            return Outcome(status="invalid", message=str(exc))
        except NotDelivered as exc:
            return Outcome(status="failed", via=route, message=str(exc))
        if not self._settings.developer_token:
            return Outcome(
                status="failed", via="server",
                message="no Lovense developer token is configured (set LOVENSE_DEVELOPER_TOKEN "
                "or LOVENSE_DEVELOPER_TOKEN_FILE)",
            )
        return Plan("server")

    async def _call(self, route: Route, command: str, call: Awaitable[Reply]) -> Reply:
        start = time.perf_counter()
        try:
            reply = await call
        except UpstreamError as exc:
            kind = "not_delivered" if isinstance(exc, NotDelivered) else "maybe_delivered"
            self._metrics.upstream_requests.labels(route, command, kind).inc()
            raise
        finally:
            self._metrics.upstream_seconds.labels(route, command).observe(
                time.perf_counter() - start
            )
        self._metrics.upstream_requests.labels(route, command, str(reply.code)).inc()
        if reply.code in codes.CONFIG_ERRORS and route == "server":
            self._metrics.config_errors.labels(str(reply.code)).inc()
        return reply

    def _from_reply(self, cmd: Command, reply: Reply, via: Via) -> Outcome:
        if not reply.ok:
            return Outcome(status="failed", via=via, code=reply.code, message=reply.message,
                           attempts=1)
        try:
            data = shape_data(cmd, reply, self._now())
        except MaybeDelivered as exc:
            return Outcome(status="failed", via=via, code=reply.code, message=str(exc),
                           attempts=1)
        return Outcome(status="ok", via=via, code=reply.code, message=reply.message, data=data,
                       attempts=1)

    async def lan(self, cmd: Command, address: LanAddress) -> Outcome:
        """Send a command to one user's Remote app."""
        body = bodies.lan_body(cmd, self._settings.max_time_sec)
        try:
            reply = await self._call("lan", cmd.kind, self._upstream.lan(address, body))
        except UpstreamError as exc:
            return Outcome(status="failed", via="lan", message=str(exc), attempts=1)
        return self._from_reply(cmd, reply, "lan")

    async def server(self, cmd: Command, uids: list[str]) -> Outcome:
        """Send a command for these users (at most LOVENSE_MAX_UIDS_PER_CALL) in one call."""
        token = self._settings.developer_token.reveal()
        if isinstance(cmd, GetQrCode):
            utoken = bodies.utoken_for(uids[0], self._settings.utoken_secret.reveal())
            path, body = SERVER_QR_PATH, bodies.qr_body(cmd, token, utoken)
        else:
            path = SERVER_COMMAND_PATH
            body = bodies.server_body(cmd, token, uids, self._settings.max_time_sec)
        try:
            reply = await self._call("server", cmd.kind, self._upstream.server(path, body))
        except UpstreamError as exc:
            return Outcome(status="failed", via="server", message=str(exc), attempts=1)
        return self._from_reply(cmd, reply, "server")

    async def stop(self, uid: str, toys: list[str] | None, plan: Plan,
                   give_up_at: float) -> Outcome:
        """Send a Stop on one route, retrying (jittered backoff) until it lands or time is up.

        On the LAN a PatternV2 Stop follows the Function Stop, so a playing
        position pattern ends too.
        """
        attempts, last = 0, Outcome(status="failed", via=plan.route, message="not sent")
        while True:
            attempts += 1
            last = await self._stop_once(uid, toys, plan)
            if last.status == "ok" or last.code in _STOP_FINAL_CODES:
                break
            delay = stop_backoff_s(attempts)
            if time.monotonic() + delay >= give_up_at:
                break
            await asyncio.sleep(delay)
        last.attempts = attempts
        return last

    async def _stop_once(self, uid: str, toys: list[str] | None, plan: Plan) -> Outcome:
        body = bodies.stop_body(toys)
        if plan.route == "server":
            body = {"token": self._settings.developer_token.reveal(), "uid": uid, **body}
            call: Awaitable[Reply] = self._upstream.server(SERVER_COMMAND_PATH, body)
        else:
            assert plan.address is not None
            call = self._upstream.lan(plan.address, body)
        try:
            reply = await self._call(plan.route, "Stop", call)
            if reply.ok and plan.address is not None:
                v2 = bodies.pattern_v2_stop_body(toys)
                await self._call("lan", "PatternV2", self._upstream.lan(plan.address, v2))
        except UpstreamError as exc:
            return Outcome(status="failed", via=plan.route, message=str(exc))
        return Outcome(status="ok" if reply.ok else "failed", via=plan.route, code=reply.code,
                       message=reply.message)
