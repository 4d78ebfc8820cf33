"""Dispatch: route choice and how replies and failures become outcomes."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from worker.config import Secret, Settings
from worker.contract.errors import MaybeDelivered, NotDelivered, UpstreamError
from worker.contract.messages import Command, LanTarget, command_decoder
from worker.core.lan import LanAddress
from worker.core.outcomes import Outcome, Plan, choose_route
from worker.core.replies import Reply
from worker.metrics import Metrics
from worker.services.dispatch import Dispatcher, stop_backoff_s

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


async def test_server_call_comma_joins_users() -> None:
    """One server call carries every user it is given, comma-joined."""
    upstream = FakeUpstream()
    cmd = _cmd('{"command":"Preset","uids":["a","b","c"],"name":"wave","timeSec":0}')
    outcome = await _dispatcher(upstream).server(cmd, ["a", "b"])
    assert [call[2]["uid"] for call in upstream.calls] == ["a,b"]
    assert outcome == Outcome(status="ok", message="Success", via="server", code=200, attempts=1)


async def test_lovense_error_code_becomes_failed_with_its_meaning() -> None:
    """A 507 answer is a failed outcome with Lovense's meaning."""
    offline = Reply(code=507, ok=False, message="Lovense app is offline")
    outcome = await _dispatcher(FakeUpstream([offline])).server(
        _cmd('{"command":"Stop","uid":"u"}'), ["u"])
    assert outcome == Outcome(status="failed", via="server", code=507, attempts=1,
                              message="Lovense app is offline")


def test_plan_without_token_fails_before_any_call() -> None:
    """No developer token means the server plan is a failed outcome."""
    outcome = _dispatcher(FakeUpstream(), developer_token=Secret("")).plan(
        _cmd('{"command":"Stop","uid":"u"}'), None)
    assert isinstance(outcome, Outcome) and outcome.status == "failed"
    assert outcome.message.startswith("no Lovense developer token is configured")


def test_plan_refuses_lan_target_outside_allow_list() -> None:
    """A LAN target outside LOVENSE_LAN_ALLOW plans to a failed outcome, never a call."""
    target = LanTarget(domain="10-0-0-5.lovense.club", httpsPort=34568)
    outcome = _dispatcher(FakeUpstream()).plan(_cmd('{"command":"Stop","uid":"u"}'), target)
    assert outcome == Outcome(status="failed", via="lan", message="LAN address 10.0.0.5 is "
                              "outside LOVENSE_LAN_ALLOW; the worker did not connect")


def test_plan_refuses_malformed_lan_domain_as_invalid() -> None:
    """A LAN domain that is not a dashed IPv4 under lovense.club plans to invalid."""
    target = LanTarget(domain="metadata.google.internal", httpsPort=80)
    outcome = _dispatcher(FakeUpstream()).plan(_cmd('{"command":"Stop","uid":"u"}'), target)
    assert isinstance(outcome, Outcome) and outcome.status == "invalid"


def test_plan_lan_target_inside_allow_list() -> None:
    """An allowed LAN target plans to its address."""
    target = LanTarget(domain="192-168-1-2.lovense.club", httpsPort=34568)
    plan = _dispatcher(FakeUpstream()).plan(_cmd('{"command":"Stop","uid":"u"}'), target)
    assert plan == Plan("lan", LanAddress("192.168.1.2", 34568, "192-168-1-2.lovense.club"))


ADDRESS = LanAddress("192.168.1.2", 34568, "192-168-1-2.lovense.club")


async def test_upstream_failure_becomes_failed_with_its_reason() -> None:
    """A transport failure is a failed outcome carrying the classified reason."""
    upstream = FakeUpstream([MaybeDelivered("no answer in time: TimeoutError")])
    outcome = await _dispatcher(upstream).lan(_cmd('{"command":"Stop","uid":"u"}'), ADDRESS)
    assert outcome == Outcome(status="failed", via="lan", attempts=1,
                              message="no answer in time: TimeoutError", retryable=True)


async def test_get_toys_string_is_parsed() -> None:
    """GetToys' toys JSON string comes back as an object."""
    reply = Reply(code=200, ok=True, message="OK",
                  data={"toys": '{"t1": {"id": "t1", "name": "nora"}}', "platform": "ios"})
    outcome = await _dispatcher(FakeUpstream([reply])).lan(
        _cmd('{"command":"GetToys","uid":"u"}'), ADDRESS)
    assert outcome.data == {"toys": {"t1": {"id": "t1", "name": "nora"}}, "platform": "ios"}


async def test_qr_code_result_carries_expiry_four_hours_later() -> None:
    """GetQrCode's data has qr, code and expiresAt four hours after issue."""
    reply = Reply(code=0, ok=True, message="Success", data={"qr": "q.jpg", "code": "ab12cd"})
    upstream = FakeUpstream([reply])
    outcome = await _dispatcher(upstream).server(_cmd('{"command":"GetQrCode","uid":"u"}'), ["u"])
    assert upstream.calls[0][1] == "/api/lan/getQrCode"
    assert outcome.data == {"qr": "q.jpg", "code": "ab12cd",
                            "expiresAt": "2026-11-26T16:00:00.000Z"}


async def test_stop_on_lan_also_stops_pattern_v2() -> None:
    """A LAN Stop sends Function Stop, then PatternV2 Stop for the same toys."""
    upstream = FakeUpstream()
    outcome = await _dispatcher(upstream).stop("u", ["t1"], Plan("lan", ADDRESS), 1e12)
    assert [call[2] for call in upstream.calls] == [
        {"command": "Function", "action": "Stop", "timeSec": 0, "toy": "t1", "apiVer": 1},
        {"command": "PatternV2", "type": "Stop", "toy": "t1", "apiVer": 1},
    ]
    assert (outcome.status, outcome.attempts) == ("ok", 1)


async def test_stop_retries_until_it_lands() -> None:
    """A Stop that fails to connect is retried until Lovense answers."""
    upstream = FakeUpstream([NotDelivered("refused"), NotDelivered("refused"), OK])
    outcome = await _dispatcher(upstream).stop("u", None, Plan("server"), 1e12)
    assert (outcome.status, outcome.attempts, len(upstream.calls)) == ("ok", 3, 3)


async def test_stop_does_not_retry_a_final_code() -> None:
    """A Stop answered 501 (invalid token) is not retried."""
    bad = Reply(code=501, ok=False, message="Invalid token")
    upstream = FakeUpstream([bad])
    outcome = await _dispatcher(upstream).stop("u", None, Plan("server"), 1e12)
    assert (outcome.status, outcome.attempts, outcome.code) == ("failed", 1, 501)


def test_stop_backoff_grows_with_jitter_and_a_cap() -> None:
    """Stop retries back off exponentially with jitter in [half, full] and a cap."""
    assert [stop_backoff_s(n, rand=lambda: 1.0) for n in (1, 2, 3, 10)] == [0.1, 0.2, 0.4, 2.0]
    assert stop_backoff_s(1, rand=lambda: 0.0) == 0.05


def _code_labels(metrics: Metrics) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["route"], s.labels["command"], s.labels["code"]): s.value
        for family in metrics.registry.collect()
        if family.name == "lovense_worker_upstream_requests"
        for s in family.samples if s.name.endswith("_total")
    }


async def test_undocumented_codes_share_the_label_other() -> None:
    """Codes a route does not document, and no code at all, count under the one label "other"."""
    answers: list[Reply | UpstreamError] = [
        Reply(code=12345, ok=False, message="Lovense answered with undocumented code 12345"),
        Reply(code=0, ok=False, message="Lovense answered with undocumented code 0"),
        Reply(code=None, ok=False, message="Lovense Remote app answered HTTP 404"),
        Reply(code=402, ok=False, message="Toy not connected"),
    ]
    metrics = Metrics()
    dispatcher = Dispatcher(
        Settings(developer_token=Secret("tok"),
                 lan_allow=(ipaddress.ip_network("192.168.0.0/16"),)),
        FakeUpstream(list(answers)), metrics, now=lambda: NOW)
    for _ in answers:
        await dispatcher.lan(_cmd('{"command":"GetToys","uid":"u"}'), ADDRESS)
    assert _code_labels(metrics) == {("lan", "GetToys", "other"): 3.0,
                                     ("lan", "GetToys", "402"): 1.0}
