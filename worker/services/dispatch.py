"""Dispatch: plan a command's route and make single calls to Lovense, each ending in an Outcome.

Route choice is a pure function (:func:`choose_route`); calls go through an
injected :class:`Upstream` (the real one is :class:`worker.adapters.http.lovense.LovenseClient`),
so this module never touches a socket itself. What is sent when is the
scheduler's business (:mod:`worker.services.runtime`); this module carries one call.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import msgspec
import structlog

from worker.config import Settings
from worker.contract.errors import InvalidCommand, MaybeDelivered, NotDelivered, UpstreamError
from worker.contract.messages import Command, GetQrCode, GetToys, LanTarget, Via
from worker.contract.users import ReportedToy, ToysReport, UserReachable, UserUnreachable
from worker.core import bodies, codes, rules
from worker.core.breaker import Breakers
from worker.core.events import rfc3339_s
from worker.core.lan import LanAddress, open_door
from worker.core.outcomes import Outcome, Plan, Route, choose_route
from worker.core.registry import NO_BATTERY, Registry, battery_level
from worker.core.replies import (
    MAX_REPLY_DEPTH,
    SERVER_COMMAND_PATH,
    SERVER_QR_PATH,
    Reply,
    too_deep,
)
from worker.core.toys import functions_of, unsupported
from worker.metrics import Metrics
from worker.services.events import Events
from worker.tracing import OFF, Tracing, call_attempt

log = structlog.get_logger("worker.services.dispatch")

#: Writes what a GetToys answer said of a user's toys to the callback log (the registry log's).
ReportToys = Callable[[str, ToysReport], Awaitable[None]]

QR_LIFETIME: Final = timedelta(hours=4)
#: A retry must be able to start this long before the command's deadline.
RETRY_MARGIN_MS: Final = 250.0
#: Codes a Stop does not retry: the request itself is wrong or not allowed.
_STOP_FINAL_CODES: Final = frozenset({400, 401, 402, 403, 404, 501, 502, 503})


class Upstream(Protocol):
    """What dispatch needs from a Lovense client."""

    async def server(self, path: str, body: Mapping[str, Any]) -> Reply: ...

    async def lan(self, address: LanAddress, body: Mapping[str, Any]) -> Reply: ...


_toys_decoder: Final = msgspec.json.Decoder()


def shape_data(cmd: Command, reply: Reply, now: datetime) -> Any:
    """Return the result's ``data``: GetToys' toys string parsed, GetQrCode's expiry added."""
    data = reply.data
    if isinstance(cmd, GetToys) and isinstance(data, dict) and isinstance(data.get("toys"), str):
        try:
            toys = _toys_decoder.decode(data["toys"])
        except (msgspec.DecodeError, ValueError, RecursionError):
            raise MaybeDelivered("Lovense Remote answered GetToys with a toys field that is "
                                 "not JSON") from None
        if too_deep(toys, MAX_REPLY_DEPTH):
            raise MaybeDelivered("Lovense Remote answered GetToys with a toys field nested "
                                 "too deeply to read")
        data = {**data, "toys": toys}
    if isinstance(cmd, GetQrCode) and isinstance(data, dict):
        expires = (now + QR_LIFETIME).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        data = {"qr": data.get("qr"), "code": data.get("code"), "expiresAt": expires}
    return data


def _endpoint_key(address: LanAddress) -> str:
    return f"{address.ip}:{address.port}"


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
        registry: Registry | None = None,
        breakers: Breakers | None = None,
        events: Events | None = None,
        report_toys: ReportToys | None = None,
        member: str = "",
        tracing: Tracing = OFF,
    ) -> None:
        self._settings = settings
        self._tracing = tracing
        #: This process's member id, named in its circuit events.
        self._member = member
        self._upstream = upstream
        self._metrics = metrics
        self._now = now
        self.registry = registry
        self.breakers = breakers
        self._events = events
        self._report_toys = report_toys

    def endpoint_for(self, cmd: Command, uid: str) -> LanTarget | None:
        """Return the LAN app to call for this user: the command's own, else a fresh paired one."""
        if cmd.lan is not None:
            return cmd.lan
        if self.registry is None or not self._settings.lan_enabled:
            return None
        known = self.registry.get(uid)
        if known is None or not (known.verified or self._settings.allow_unverified_callbacks):
            return None
        return known.target

    def toy_problem(self, cmd: Command, uid: str) -> str | None:
        """Return why the toy a command names cannot do it, as far as the registry knows."""
        if cmd.toy is None or self.registry is None:
            return None
        known = self.registry.get(uid, fresh_only=False)
        if known is None:
            return None
        named = [cmd.toy] if isinstance(cmd.toy, str) else cmd.toy
        toys = [(t[0], t[1], functions_of(t[1], t[4])) for t in known.toys if t[0] in named]
        return unsupported(cmd, toys)

    def plan(self, cmd: Command, endpoint: LanTarget | None) -> Plan | Outcome:
        """Return how a share travels given its LAN endpoint, or the Outcome that ends it unsent."""
        route = choose_route(cmd, endpoint)
        if isinstance(route, Outcome):
            return route
        fallback = False
        try:
            if route == "lan":
                assert endpoint is not None
                address = open_door(endpoint.domain, endpoint.httpsPort, self._settings.lan_allow)
                if self.breakers is None or self.breakers.allow(_endpoint_key(address)):
                    return Plan("lan", address)
                if cmd.mode == "lan" or rules.needs_lan(cmd):
                    return Outcome(status="failed", via="lan", message=(
                        f"the LAN endpoint {address.ip}:{address.port} is failing; its circuit "
                        f"is open for up to {self._settings.breaker_cooldown_s} s"))
                fallback = True
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
        return Plan("server", fallback=fallback)

    async def _call(self, route: Route, command: str, call: Awaitable[Reply]) -> Reply:
        """Carry one call (one attempt): the seam every call to Lovense passes, once."""
        span = self._tracing.call(route, command) if self._tracing.enabled else None
        start = time.perf_counter()
        try:
            reply = await call
        except UpstreamError as exc:
            kind = "not_delivered" if isinstance(exc, NotDelivered) else "maybe_delivered"
            self._metrics.child(self._metrics.upstream_requests, route, command, kind).inc()
            self._tracing.called(span, error=exc, not_delivered=isinstance(exc, NotDelivered))
            raise
        except BaseException as exc:
            self._tracing.called(span, error=exc)
            raise
        finally:
            self._metrics.child(self._metrics.upstream_seconds, route, command).observe(
                time.perf_counter() - start,
                self._tracing.exemplar(span) if span is not None else None,
            )
        self._tracing.called(span, code=reply.code, ok=reply.ok)
        # Undocumented codes share one label: an upstream must not mint new series.
        code = codes.label(reply.code, route)
        self._metrics.child(self._metrics.upstream_requests, route, command, code).inc()
        if reply.code in codes.CONFIG_ERRORS and route == "server":
            self._metrics.child(self._metrics.config_errors, str(reply.code)).inc()
        return reply

    def _from_reply(self, cmd: Command, reply: Reply, via: Via) -> Outcome:
        if not reply.ok:
            return Outcome(status="failed", via=via, code=reply.code, message=reply.message,
                           attempts=1, retryable=via == "lan" and reply.code in codes.RETRYABLE)
        try:
            data = shape_data(cmd, reply, self._now())
        except MaybeDelivered as exc:
            return Outcome(status="failed", via=via, code=reply.code, message=str(exc),
                           attempts=1)
        return Outcome(status="ok", via=via, code=reply.code, message=reply.message, data=data,
                       attempts=1)

    async def _retrying(
        self, route: Route, attempt: Callable[[], Awaitable[Outcome]], deadline_ms: float,
        *, give_back_not_delivered: bool = False,
    ) -> Outcome:
        """Repeat an attempt with jittered backoff while it fails retryably, within the deadline.

        A repeat after a failure where Lovense may already have the request is
        allowed only because a repeated command sets the same state; those
        repeats are counted. With ``give_back_not_delivered`` a call that never
        reached Lovense is returned at once, for the caller to carry elsewhere.
        """
        attempts = 0
        while True:
            attempts += 1
            call_attempt.set(attempts)
            outcome = await attempt()
            if outcome.status == "ok" or not outcome.retryable or (
                give_back_not_delivered and outcome.not_delivered
            ):
                break
            delay = stop_backoff_s(attempts)
            # No retry starts in the deadline's last moments: it would land late.
            if time.time() * 1000 + delay * 1000 + RETRY_MARGIN_MS >= deadline_ms:
                break
            if not outcome.not_delivered:
                self._metrics.child(self._metrics.repeats, route).inc()
            await asyncio.sleep(delay)
        outcome.attempts = attempts
        return outcome

    async def lan(self, cmd: Command, address: LanAddress, deadline_ms: float = 0.0,
                  *, fallback_possible: bool = False, uid: str | None = None) -> Outcome:
        """Send a command to one user's Remote app (``uid``'s, default the command's),
        retrying within the deadline."""
        user = uid if uid is not None else cmd.uid
        return await self._retrying(
            "lan", lambda: self._lan_once(cmd, address, user), deadline_ms,
            give_back_not_delivered=fallback_possible,
        )

    async def _lan_once(self, cmd: Command, address: LanAddress, uid: str | None) -> Outcome:
        body = bodies.lan_body(cmd, self._settings.max_time_sec)
        key = _endpoint_key(address)
        try:
            reply = await self._call("lan", cmd.kind, self._upstream.lan(address, body))
        except UpstreamError as exc:
            never = isinstance(exc, NotDelivered)
            if never and self.breakers is not None and self.breakers.failure(key):
                self._metrics.child(self._metrics.circuit_opened, "lan").inc()
                self._circuit_changed(uid, opened=True)
            self._track_circuits()
            return Outcome(status="failed", via="lan", message=str(exc), attempts=1,
                           not_delivered=never, retryable=True)
        if self.breakers is not None:
            if self.breakers.success(key):
                self._circuit_changed(uid, opened=False)
            self._track_circuits()
        outcome = self._from_reply(cmd, reply, "lan")
        if isinstance(cmd, GetToys) and outcome.status == "ok" and self.registry is not None:
            await self._learn_toys(cmd, outcome.data)
        return outcome

    def _track_circuits(self) -> None:
        if self.breakers is not None:
            self._metrics.child(self._metrics.circuits_open, "lan").set(self.breakers.open_count())

    def _circuit_changed(self, uid: str | None, *, opened: bool) -> None:
        """Tell the platform that this process's circuit for a user's app opened or closed."""
        if self._events is None or uid is None:
            return
        at = rfc3339_s(self._now().timestamp())
        ident, replica = uuid.uuid4().hex, self._member
        self._events.emit([
            UserUnreachable(id=ident, uid=uid, at=at, replica=replica,
                            cooldownS=self._settings.breaker_cooldown_s) if opened
            else UserReachable(id=ident, uid=uid, at=at, replica=replica)])

    async def _learn_toys(self, cmd: GetToys, data: Any) -> None:
        """Share what a GetToys answer said (functions, batteries) with every replica.

        Through the callback log, so every registry learns it alike and the
        validating replica reports battery crossings; without a log (tests), here.
        """
        toys = data.get("toys") if isinstance(data, dict) else None
        if not isinstance(toys, dict) or cmd.uid is None or self.registry is None:
            return
        report = ToysReport(toys={
            str(toy_id): ReportedToy(
                battery=None if (level := battery_level(toy.get("battery"))) == NO_BATTERY
                else level,
                fullFunctionNames=[str(f)[:64] for f in toy["fullFunctionNames"][:64]]
                if isinstance(toy.get("fullFunctionNames"), list) else None)
            for toy_id, toy in list(toys.items())[:64]
            if isinstance(toy, dict) and len(str(toy_id)) <= 64
        })
        if self._report_toys is not None:
            try:
                await self._report_toys(cmd.uid, report)
                return
            except Exception as exc:  # noqa: BLE001 - the answer stands; learn it here at least
                log.warning("toys_report_failed", error=repr(exc))
        self.registry.learn_toys(
            cmd.uid,
            {t: r.fullFunctionNames for t, r in report.toys.items()
             if r.fullFunctionNames is not None},
            {t: r.battery for t, r in report.toys.items() if r.battery is not None})

    async def server(self, cmd: Command, uids: list[str], deadline_ms: float = 0.0) -> Outcome:
        """Send a command for these users (at most LOVENSE_MAX_UIDS_PER_CALL) in one call,
        retrying within the deadline."""
        return await self._retrying("server", lambda: self._server_once(cmd, uids), deadline_ms)

    async def _server_once(self, cmd: Command, uids: list[str]) -> Outcome:
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
            return Outcome(status="failed", via="server", message=str(exc), attempts=1,
                           not_delivered=isinstance(exc, NotDelivered), retryable=True)
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
            call_attempt.set(attempts)
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
