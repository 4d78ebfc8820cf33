"""GetUser and Forget, the worker's own commands, and the events dispatch tells: circuits that
open and close, GetToys answers shared through the log (worker.services.users, dispatch)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from worker.config import Secret, Settings
from worker.contract.errors import InvalidCommand, NotDelivered, UpstreamError
from worker.contract.messages import GetToys, GetUser, command_decoder
from worker.contract.users import (
    ToysReport,
    UserEvent,
    UserForgotten,
    UserReachable,
    UserUnreachable,
    event_decoder,
)
from worker.core import intake
from worker.core.bodies import utoken_for
from worker.core.breaker import Breakers
from worker.core.callbacks import decode
from worker.core.lan import LanAddress
from worker.core.registry import Registry
from worker.core.replies import Reply
from worker.core.results import Delivery
from worker.metrics import Metrics
from worker.services.dispatch import Dispatcher
from worker.services.events import Events
from worker.services.runtime import Runtime
from worker.services.users import Users

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ADDRESS = LanAddress("192.168.1.20", 30010, "192-168-1-20.lovense.club")
TOYS = ('{"t1": {"id": "t1", "name": "lush", "status": "1", "battery": 9, '
        '"fullFunctionNames": ["Vibrate"]}}')


class Clock:
    def __init__(self) -> None:
        self.s = 1_764_158_400.0

    def __call__(self) -> float:
        return self.s


class FakeUpstream:
    """Answers LAN calls from a script; the server always succeeds."""

    def __init__(self, answers: list[Reply | UpstreamError] | None = None) -> None:
        self.answers = answers or []
        self.calls = 0

    async def server(self, path: str, body: Mapping[str, Any]) -> Reply:
        self.calls += 1
        return Reply(code=200, ok=True, message="Success")

    async def lan(self, address: LanAddress, body: Mapping[str, Any]) -> Reply:
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else Reply(code=200, ok=True, message="OK")
        if isinstance(answer, UpstreamError):
            raise answer
        return answer


class Published:
    """An events publisher that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[UserEvent] = []

    async def __call__(self, body: bytes, routing_key: str, message_id: str) -> None:
        self.events.append(event_decoder.decode(body))


def world(answers: list[Reply | UpstreamError] | None = None, **values: Any) -> tuple[
        Dispatcher, Published, FakeUpstream, Events]:
    """Return a dispatcher with a registry (u1 paired at ADDRESS), breakers and an event sink."""
    fields: dict[str, Any] = {"lan_allow": (ipaddress.ip_network("192.168.0.0/16"),)} | values
    settings = Settings(developer_token=Secret("tok"), utoken_secret=Secret("s"),
                        breaker_failures=1, shards=4, **fields)
    clock = Clock()
    registry = Registry(3600, clock)
    registry.record(decode(msgspec.json.encode({
        "uid": "u1", "domain": ADDRESS.domain, "httpsPort": 30010, "utoken": utoken_for("u1", "s"),
        "toys": {"t1": {"id": "t1", "name": "lush", "status": 1, "battery": 55}}})),
        ADDRESS, True)
    published, upstream = Published(), FakeUpstream(answers)
    events = Events(published, Metrics())
    dispatcher = Dispatcher(settings, upstream, Metrics(), now=lambda: NOW, registry=registry,
                            breakers=Breakers(1, 30, clock), events=events, member="host-1a2b")
    return dispatcher, published, upstream, events


@pytest.mark.parametrize(("body", "reason"), [
    ({"uids": ["u1", "u2"]}, "uids: GetUser describes one user; give a single uid"),
    ({"uid": "u1", "toy": "t1"}, "toy: GetUser takes no toy; remove it"),
    ({"uid": "u1", "lan": {"domain": "192-168-1-2.lovense.club", "httpsPort": 1}},
     "lan: GetUser names no app; remove lan"),
    ({"uid": "u1", "mode": "lan"},
     "mode: GetUser contacts neither the app nor Lovense; remove mode"),
])
def test_get_user_takes_a_uid_only(body: dict[str, Any], reason: str) -> None:
    """GetUser is refused with anything beyond one uid (and an id or deadline)."""
    with pytest.raises(InvalidCommand) as refused:
        intake.decode(msgspec.json.encode({"command": "GetUser", **body}))
    assert str(refused.value) == reason
    assert isinstance(intake.decode(b'{"command":"GetUser","uid":"u1","id":"q1"}'), GetUser)


async def test_get_user_answers_from_the_registry_without_any_call() -> None:
    """Known: paired, the LAN route, the toys, when seen, the circuit; unknown: paired false."""
    dispatcher, _, upstream, _ = world()
    runtime = Runtime(dispatcher._settings, dispatcher, Metrics(), users=Users(
        dispatcher._settings, dispatcher))
    known = await runtime.handle(Delivery(b'{"command":"GetUser","uid":"u1"}', "q1"))
    unknown = await runtime.handle(Delivery(b'{"command":"GetUser","uid":"u9"}', "q2"))
    assert upstream.calls == 0
    result = known.result
    assert (result.status, result.via, result.code, result.attempts, result.routing_key) == (
        "ok", None, None, 0, "ok.GetUser")
    assert msgspec.to_builtins(result.data) == {
        "paired": True, "route": "lan", "circuit": "closed",
        "lastSeenAt": "2025-11-26T12:00:00.000Z",
        "toys": [{"id": "t1", "name": "lush", "status": "connected", "battery": 55}]}
    assert msgspec.to_builtins(unknown.result.data) == {"paired": False}
    assert b"utoken" not in msgspec.json.encode(result)


async def test_get_user_says_server_while_the_circuit_is_open_or_lan_is_off() -> None:
    """An open circuit, or no LAN allowed, makes auto take the server: GetUser says so."""
    dispatcher, _, _, _ = world([NotDelivered("refused")])
    users = Users(dispatcher._settings, dispatcher)
    await dispatcher.lan(command_decoder.decode(b'{"command":"Stop","uid":"u1"}'), ADDRESS)
    assert (users.describe("u1").data.circuit, users.describe("u1").data.route) == (
        "open", "server")
    off, _, _, _ = world(lan_allow=())
    assert Users(off._settings, off).describe("u1").data.route == "server"


async def test_circuits_opening_and_closing_are_told_with_the_member() -> None:
    """Opening the circuit publishes user.unreachable, the next call that lands user.reachable,
    both with this process's member id and no address."""
    dispatcher, published, _, events = world([NotDelivered("refused")])
    stop = command_decoder.decode(b'{"command":"Stop","uids":["u1","u2"]}')
    await dispatcher.lan(stop, ADDRESS, uid="u1")
    assert dispatcher.breakers is not None
    dispatcher.breakers._open[f"{ADDRESS.ip}:{ADDRESS.port}"].opened_at = -1e9  # cooled down
    await dispatcher.lan(stop, ADDRESS, uid="u1")
    await events.close()
    assert [type(e) for e in published.events] == [UserUnreachable, UserReachable]
    assert [(e.uid, e.replica) for e in published.events
            if isinstance(e, UserUnreachable | UserReachable)] == [("u1", "host-1a2b"),
                                                                   ("u1", "host-1a2b")]
    assert b"192" not in msgspec.json.encode(published.events)


async def test_a_get_toys_answer_goes_to_the_log_not_straight_into_the_registry() -> None:
    """With a log, GetToys' batteries and functions are reported there for every replica; without
    one (or when writing fails) the registry learns them here."""
    reports: list[tuple[str, ToysReport]] = []

    async def report(uid: str, toys: ToysReport) -> None:
        reports.append((uid, toys))

    answer = Reply(code=200, ok=True, message="OK", data={"toys": TOYS})
    dispatcher, _, _, _ = world([answer])
    dispatcher._report_toys = report
    await dispatcher.lan(GetToys(uid="u1"), ADDRESS)
    assert [(uid, msgspec.to_builtins(r)) for uid, r in reports] == [
        ("u1", {"toys": {"t1": {"battery": 9, "fullFunctionNames": ["Vibrate"]}}})]
    assert dispatcher.registry is not None
    known = dispatcher.registry.get("u1")
    assert known is not None and known.toys[0][4:] == ("", 55)

    async def broken(uid: str, toys: ToysReport) -> None:
        raise ConnectionError("broker gone")

    local, _, _, _ = world([answer])
    local._report_toys = broken
    await local.lan(GetToys(uid="u1"), ADDRESS)
    assert local.registry is not None
    learned = local.registry.get("u1")
    assert learned is not None and learned.toys[0][4:] == ("Vibrate", 9)


async def test_forget_publishes_forgotten_once_and_says_whether_it_was_known() -> None:
    """Forget erases the user, writes a tombstone, then publishes user.forgotten."""
    dispatcher, published, _, events = world()
    tombstones: list[str] = []

    async def tombstone(uid: str) -> None:
        tombstones.append(uid)

    users = Users(dispatcher._settings, dispatcher, events=events, announce_forget=tombstone,
                  now=lambda: NOW)
    first, second = await users.forget("u1"), await users.forget("u1")
    assert (first.status, second.status, tombstones) == ("ok", "ok", ["u1", "u1"])
    assert [(e.uid, e.known, e.at) for e in published.events if isinstance(e, UserForgotten)] == [
        ("u1", True, "2026-11-26T12:00:00.000Z"), ("u1", False, "2026-11-26T12:00:00.000Z")]
