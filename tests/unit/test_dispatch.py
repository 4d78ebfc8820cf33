"""Dispatch: route choice and how replies and failures become outcomes."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from worker.config import Secret, Settings
from worker.dispatch import Dispatcher, Outcome, choose_route
from worker.errors import MaybeDelivered, NotDelivered, UpstreamError
from worker.lan import LanAddress
from worker.lovense import Reply
from worker.messages import Command, LanTarget, command_decoder
from worker.metrics import Metrics

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
OK = Reply(code=200, ok=True, message="Success")


class FakeUpstream:
    """Answers from a script and records every call."""

    def __init__(self, answers: list[Reply | UpstreamError] | None = None) -> None:
        self.answers = answers or []
        self.calls: list[tuple[str, Any, Mapping[str, Any]]] = []

    def _next(self) -> Reply:
        answer = self.answers.pop(0) if self.answers else OK
        if isinstance(answer, UpstreamError):
            raise answer
        return answer

    async def server(self, path: str, body: Mapping[str, Any]) -> Reply:
        self.calls.append(("server", path, body))
        return self._next()

    async def lan(self, address: LanAddress, body: Mapping[str, Any]) -> Reply:
        self.calls.append(("lan", address, body))
        return self._next()


def _cmd(raw: str) -> Command:
    return command_decoder.decode(raw.encode())


def _dispatcher(upstream: FakeUpstream, **settings: Any) -> Dispatcher:
    values: dict[str, Any] = {"developer_token": Secret("tok"), "max_uids_per_call": 2,
                              "lan_allow": (ipaddress.ip_network("192.168.0.0/16"),)}
    values.update(settings)
    return Dispatcher(Settings(**values), upstream, Metrics(), now=lambda: NOW)


def test_auto_without_endpoint_goes_to_server() -> None:
    """mode auto with no known LAN endpoint takes the server route."""
    assert choose_route(_cmd('{"command":"Stop","uid":"u"}'), None) == "server"


def test_auto_with_endpoint_goes_to_lan() -> None:
    """mode auto with a known LAN endpoint takes the LAN route."""
    target = LanTarget(domain="192-168-1-2.lovense.club", httpsPort=1)
    assert choose_route(_cmd('{"command":"Stop","uid":"u"}'), target) == "lan"


def test_lan_only_command_without_endpoint_fails_clearly() -> None:
    """A LAN-only command with no LAN endpoint fails saying no endpoint is known."""
    assert choose_route(_cmd('{"command":"GetToys","uid":"u7"}'), None) == Outcome(
        status="failed",
        message="no LAN endpoint is known for u7: GetToys needs the LAN route "
        "(give lan {domain, httpsPort} in the command)",
    )


async def test_multi_user_message_is_split_into_calls_of_at_most_n_users() -> None:
    """A uids message becomes comma-joined server calls of at most LOVENSE_MAX_UIDS_PER_CALL."""
    upstream = FakeUpstream()
    cmd = _cmd('{"command":"Preset","uids":["a","b","c"],"name":"wave","timeSec":0}')
    outcome = await _dispatcher(upstream).run(cmd)
    assert [call[2]["uid"] for call in upstream.calls] == ["a,b", "c"]
    assert outcome == Outcome(status="ok", message="Success", via="server", code=200, attempts=2)


async def test_partly_failed_multi_user_message_lists_failed_uids() -> None:
    """When some users' call fails the result is failed with exactly those users."""
    offline = Reply(code=507, ok=False, message="Lovense app is offline")
    upstream = FakeUpstream([OK, offline])
    cmd = _cmd('{"command":"Preset","uids":["a","b","c"],"name":"wave","timeSec":0}')
    outcome = await _dispatcher(upstream).run(cmd)
    assert outcome == Outcome(status="failed", via="server", code=507, attempts=2,
                              message="1 of 3 users failed: Lovense app is offline",
                              failed_uids=["c"])


async def test_server_route_without_token_fails_without_calling() -> None:
    """No developer token means a failed result and no call at all."""
    upstream = FakeUpstream()
    outcome = await _dispatcher(upstream, developer_token=Secret("")).run(
        _cmd('{"command":"Stop","uid":"u"}'))
    assert upstream.calls == []
    assert outcome.status == "failed"
    assert outcome.message.startswith("no Lovense developer token is configured")


async def test_lan_target_outside_allow_list_is_never_called() -> None:
    """A LAN target outside LOVENSE_LAN_ALLOW fails and nothing is dialled."""
    upstream = FakeUpstream()
    cmd = _cmd('{"command":"Stop","uid":"u","mode":"lan",'
               '"lan":{"domain":"10-0-0-5.lovense.club","httpsPort":34568}}')
    outcome = await _dispatcher(upstream).run(cmd)
    assert upstream.calls == []
    assert outcome == Outcome(status="failed", via="lan", message="LAN address 10.0.0.5 is "
                              "outside LOVENSE_LAN_ALLOW; the worker did not connect")


async def test_malformed_lan_domain_is_invalid_and_never_called() -> None:
    """A LAN domain that is not a dashed IPv4 under lovense.club is invalid; nothing is dialled."""
    upstream = FakeUpstream()
    cmd = _cmd('{"command":"Stop","uid":"u","mode":"lan",'
               '"lan":{"domain":"metadata.google.internal","httpsPort":80}}')
    outcome = await _dispatcher(upstream).run(cmd)
    assert upstream.calls == []
    assert outcome.status == "invalid"


async def test_upstream_failure_becomes_failed_with_its_reason() -> None:
    """A transport failure is a failed outcome carrying the classified reason."""
    upstream = FakeUpstream([MaybeDelivered("no answer in time: TimeoutError")])
    cmd = _cmd('{"command":"Stop","uid":"u","mode":"lan",'
               '"lan":{"domain":"192-168-1-2.lovense.club","httpsPort":34568}}')
    outcome = await _dispatcher(upstream).run(cmd)
    assert outcome == Outcome(status="failed", via="lan", attempts=1,
                              message="no answer in time: TimeoutError")


async def test_refused_connection_is_failed_not_retried_elsewhere() -> None:
    """A refused LAN connection fails (fallback comes with the registry)."""
    upstream = FakeUpstream([NotDelivered("could not connect: refused")])
    cmd = _cmd('{"command":"Stop","uid":"u","mode":"lan",'
               '"lan":{"domain":"192-168-1-2.lovense.club","httpsPort":34568}}')
    outcome = await _dispatcher(upstream).run(cmd)
    assert [c[0] for c in upstream.calls] == ["lan"]
    assert outcome.status == "failed"


async def test_get_toys_string_is_parsed() -> None:
    """GetToys' toys JSON string comes back as an object."""
    reply = Reply(code=200, ok=True, message="OK",
                  data={"toys": '{"t1": {"id": "t1", "name": "nora"}}', "platform": "ios"})
    cmd = _cmd('{"command":"GetToys","uid":"u",'
               '"lan":{"domain":"192-168-1-2.lovense.club","httpsPort":34568}}')
    outcome = await _dispatcher(FakeUpstream([reply])).run(cmd)
    assert outcome.data == {"toys": {"t1": {"id": "t1", "name": "nora"}}, "platform": "ios"}


async def test_qr_code_result_carries_expiry_four_hours_later() -> None:
    """GetQrCode's data has qr, code and expiresAt four hours after issue."""
    reply = Reply(code=0, ok=True, message="Success", data={"qr": "q.jpg", "code": "ab12cd"})
    outcome = await _dispatcher(FakeUpstream([reply])).run(
        _cmd('{"command":"GetQrCode","uid":"u"}'))
    assert outcome.data == {"qr": "q.jpg", "code": "ab12cd",
                            "expiresAt": "2026-11-26T16:00:00.000Z"}
