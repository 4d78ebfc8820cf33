"""Dispatch: carry one validated command to Lovense by the right route and say what happened.

Route choice is a pure function (:func:`choose_route`); the calls go through an
injected :class:`Upstream` (the real one is :class:`worker.lovense.LovenseClient`),
so this module never touches a socket itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
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


class Upstream(Protocol):
    """What dispatch needs from a Lovense client."""

    async def server(self, path: str, body: Mapping[str, Any]) -> Reply: ...

    async def lan(self, address: LanAddress, body: Mapping[str, Any]) -> Reply: ...


@dataclass(slots=True)
class Outcome:
    """The part of a result that dispatch decides."""

    status: Status
    message: str
    via: Via | None = None
    code: int | None = None
    data: Any = None
    attempts: int = 0
    fallback: bool = False
    failed_uids: list[str] = field(default_factory=list)


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


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


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


class Dispatcher:
    """Send commands to Lovense and turn what happens into an Outcome."""

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

    def endpoint_for(self, cmd: Command) -> LanTarget | None:
        """Return the LAN app to call for a single-user command, if one is known."""
        return cmd.lan

    async def run(self, cmd: Command) -> Outcome:
        """Carry a validated command to Lovense and return what happened."""
        endpoint = self.endpoint_for(cmd)
        route = choose_route(cmd, endpoint)
        if isinstance(route, Outcome):
            return route
        try:
            if route == "lan":
                assert endpoint is not None
                address = open_door(endpoint.domain, endpoint.httpsPort, self._settings.lan_allow)
                return await self._lan(cmd, address)
            rules.check_route(cmd, "server")
            return await self._server(cmd)
        except InvalidCommand as exc:
            return Outcome(status="invalid", message=str(exc))
        except NotDelivered as exc:
            return Outcome(status="failed", via=route, message=str(exc))

    async def _call(self, route: Route, cmd: Command, call: Any) -> Reply:
        start = time.perf_counter()
        try:
            reply: Reply = await call
        except UpstreamError as exc:
            kind = "not_delivered" if isinstance(exc, NotDelivered) else "maybe_delivered"
            self._metrics.upstream_requests.labels(route, cmd.kind, kind).inc()
            raise
        finally:
            self._metrics.upstream_seconds.labels(route, cmd.kind).observe(
                time.perf_counter() - start
            )
        self._metrics.upstream_requests.labels(route, cmd.kind, str(reply.code)).inc()
        if reply.code in codes.CONFIG_ERRORS and route == "server":
            self._metrics.config_errors.labels(str(reply.code)).inc()
        return reply

    async def _lan(self, cmd: Command, address: LanAddress) -> Outcome:
        try:
            reply = await self._call("lan", cmd, self._upstream.lan(address, bodies.lan_body(cmd)))
            return self._from_reply(cmd, reply, "lan")
        except MaybeDelivered as exc:
            return Outcome(status="failed", via="lan", message=str(exc), attempts=1)
        except NotDelivered as exc:
            return Outcome(status="failed", via="lan", message=str(exc), attempts=1)

    def _from_reply(self, cmd: Command, reply: Reply, via: Via) -> Outcome:
        if not reply.ok:
            return Outcome(status="failed", via=via, code=reply.code, message=reply.message,
                           attempts=1)
        data = shape_data(cmd, reply, self._now())
        return Outcome(status="ok", via=via, code=reply.code, message=reply.message, data=data,
                       attempts=1)

    async def _server(self, cmd: Command) -> Outcome:
        token = self._settings.developer_token.reveal()
        if not token:
            return Outcome(
                status="failed", via="server",
                message="no Lovense developer token is configured (set LOVENSE_DEVELOPER_TOKEN "
                "or LOVENSE_DEVELOPER_TOKEN_FILE)",
            )
        if isinstance(cmd, GetQrCode):
            utoken = bodies.utoken_for(cmd.targets[0], self._settings.utoken_secret.reveal())
            body = bodies.qr_body(cmd, token, utoken)
            try:
                reply = await self._call("server", cmd, self._upstream.server(SERVER_QR_PATH, body))
                return self._from_reply(cmd, reply, "server")
            except UpstreamError as exc:
                return Outcome(status="failed", via="server", message=str(exc), attempts=1)
        groups = _chunks(cmd.targets, self._settings.max_uids_per_call)
        outcomes = await asyncio.gather(*(self._server_group(cmd, token, g) for g in groups))
        return _merge(cmd, groups, list(outcomes))

    async def _server_group(self, cmd: Command, token: str, uids: list[str]) -> Outcome:
        body = bodies.server_body(cmd, token, uids)
        try:
            reply = await self._call("server", cmd, self._upstream.server(SERVER_COMMAND_PATH, body))
        except UpstreamError as exc:
            return Outcome(status="failed", via="server", message=str(exc), attempts=1)
        return self._from_reply(cmd, reply, "server")


def _merge(cmd: Command, groups: list[list[str]], outcomes: list[Outcome]) -> Outcome:
    """Fold the outcomes of one message's server calls into one."""
    if len(outcomes) == 1:
        return outcomes[0]
    failed = [uid for group, o in zip(groups, outcomes, strict=True) if o.status != "ok"
              for uid in group]
    attempts = sum(o.attempts for o in outcomes)
    if not failed:
        return Outcome(status="ok", via="server", code=outcomes[0].code,
                       message=outcomes[0].message, attempts=attempts)
    first = next(o for o in outcomes if o.status != "ok")
    partial = len(failed) < len(cmd.targets)
    return Outcome(
        status="failed", via="server", code=first.code, attempts=attempts,
        message=(f"{len(failed)} of {len(cmd.targets)} users failed: {first.message}"
                 if partial else first.message),
        failed_uids=failed if partial else [],
    )
