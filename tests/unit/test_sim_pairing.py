"""The simulator's pairing core: issued QR codes, their 4-hour life, strict uids (no sockets)."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
import pytest

from worker.simulator import Simulator
from worker.simulator.dashboard import Dashboard, check_callback_url
from worker.simulator.lan_app import SimApp, Stage
from worker.simulator.main import add_arguments, banner, build
from worker.simulator.pairing import FORGET_AFTER_MS, QR_TTL_MS, QrBook, ScanRefused
from worker.simulator.server_api import SERVER_OK, ServerApi

NORA = "f082c00246fa"
TOKEN = "tok"
START_MS = 1_800_000_000_000


class FakeClock:
    """A wall clock in epoch milliseconds that moves only when told."""

    def __init__(self, now: int = START_MS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def server(clock: FakeClock, *, strict: bool) -> ServerApi:
    """Return an unstarted fake server API with no apps."""
    return ServerApi(token=TOKEN, host="127.0.0.1", port=0, stage=Stage(record=False), apps={},
                     qr_book=QrBook(clock), strict_uids=strict)


def issue(api: ServerApi, uid: str, utoken: str = "ut") -> str:
    """Ask ``api`` for a QR code for ``uid`` as the worker does; return its code."""
    code, answer = api.qr_code({"token": TOKEN, "uid": uid, "uname": "Pat", "utoken": utoken,
                                "v": 2})
    assert code == 0
    decoded: dict[str, Any] = msgspec.json.decode(answer)
    return str(decoded["data"]["code"])


def function(uid: str) -> dict[str, Any]:
    """Return a server-route Function body for ``uid``."""
    return {"token": TOKEN, "uid": uid, "command": "Function", "action": "Vibrate:3",
            "timeSec": 2, "apiVer": 1}


def test_issued_code_is_remembered_with_uid_utoken_and_issue_time() -> None:
    """A scan finds the uid, the utoken of the QR request and the issue time, and pairs the uid."""
    clock = FakeClock()
    book = QrBook(clock)
    issued = book.issue("u1", "secret-ut")
    clock.now += 1000
    scanned = book.scan(issued.code)
    assert (scanned.uid, scanned.utoken, scanned.issued_ms) == ("u1", "secret-ut", START_MS)
    assert issued.code.isalnum() and len(issued.code) == 6
    assert book.paired == {"u1"}


def test_a_code_scans_until_exactly_4_hours_and_is_refused_after() -> None:
    """The docs' 4 hours: a scan at 4 h pairs; 1 ms later it is refused with 410."""
    clock = FakeClock()
    book = QrBook(clock)
    code = book.issue("u1", "").code
    clock.now = START_MS + QR_TTL_MS
    assert book.scan(code).uid == "u1"
    clock.now += 1
    with pytest.raises(ScanRefused) as refused:
        book.scan(code)
    assert (str(refused.value), refused.value.status) == (
        f"code: {code!r} expired; it was issued 4.0 h ago for 'u1' and QR codes expire after "
        "4 hours (ask for a new one)",
        410,
    )


def test_an_expired_code_does_not_pair_its_uid() -> None:
    """A refused scan leaves its uid unpaired."""
    clock = FakeClock()
    book = QrBook(clock)
    code = book.issue("u1", "").code
    clock.now += QR_TTL_MS + 1
    with pytest.raises(ScanRefused):
        book.scan(code)
    assert book.paired == set()


def test_an_unknown_code_is_refused_with_404() -> None:
    """A code this simulator never issued is refused and names the code."""
    with pytest.raises(ScanRefused) as refused:
        QrBook(FakeClock()).scan("nope42")
    assert (str(refused.value), refused.value.status) == (
        "code: 'nope42' was never issued by this simulator", 404)


def test_codes_a_day_old_are_forgotten_on_the_next_issue() -> None:
    """Old codes do not pile up: a day after issue, the next issue drops them."""
    clock = FakeClock()
    book = QrBook(clock)
    old = book.issue("u1", "").code
    clock.now += FORGET_AFTER_MS
    kept = book.issue("u2", "").code
    clock.now += 1
    book.issue("u3", "")
    assert len(book) == 2
    with pytest.raises(ScanRefused) as refused:
        book.scan(old)
    assert refused.value.status == 404
    assert book.scan(kept).uid == "u2"


def test_strict_server_answers_503_until_the_uid_is_scanned() -> None:
    """With strict uids a never-paired uid is 503 Invalid User ID; once scanned it is 200."""
    clock = FakeClock()
    api = server(clock, strict=True)
    code = issue(api, "u1")
    refused = api.command(function("u1"), 0)
    api.qr_book.scan(code)
    assert refused == (503, b'{"result":false,"code":503,"message":"Invalid User ID"}')
    assert api.command(function("u1"), 0) == (200, SERVER_OK)


def test_strict_server_refuses_a_batch_with_one_never_paired_uid() -> None:
    """One never-paired uid among several makes the whole call 503."""
    api = server(FakeClock(), strict=True)
    api.qr_book.scan(issue(api, "u1"))
    assert api.command(function("u1,u2"), 0)[0] == 503


def test_lenient_server_answers_any_uid() -> None:
    """Without strict uids (the default) a made-up uid is 200, as the fault suite needs."""
    assert server(FakeClock(), strict=False).command(function("made-up"), 0)[0] == 200


def test_switching_a_toy_off_stops_it_and_the_callback_says_status_0() -> None:
    """A toy switched off stops, answers 402 on the LAN and reports status 0 until switched on."""
    sim = Simulator()
    app = sim.app("sim-user-1")
    app.run({"command": "Function", "action": "Vibrate:5", "timeSec": 0, "toy": NORA,
             "apiVer": 1})
    sim.switch_toy("sim-user-1", NORA, False)
    off = sim.callback_body("sim-user-1")["toys"][NORA]["status"]
    refused = app.run({"command": "Function", "action": "Vibrate:5", "timeSec": 0, "toy": NORA,
                       "apiVer": 1})[0]
    levels = dict(app.toys[NORA].levels)
    sim.switch_toy("sim-user-1", NORA, True)
    assert (off, refused, levels) == (0, 402, {"Vibrate": 0, "Rotate": 0})
    assert sim.callback_body("sim-user-1")["toys"][NORA]["status"] == 1


@pytest.mark.parametrize(
    ("uid", "toy", "message"),
    [
        ("nobody", NORA, "uid: 'nobody' has no simulated app"),
        ("sim-user-1", "feedbeef", "toy: 'feedbeef' is not a toy of 'sim-user-1'"),
    ],
)
def test_switching_an_unknown_toy_is_refused(uid: str, toy: str, message: str) -> None:
    """switch_toy names what it cannot find."""
    with pytest.raises(ValueError) as refused:
        Simulator().switch_toy(uid, toy, False)
    assert str(refused.value) == message


@pytest.mark.parametrize("url", ["ftp://host/cb", "localhost:8080/cb", "http:///cb", ""])
def test_callback_url_must_be_http_with_a_host(url: str) -> None:
    """The dashboard's callback URL is an http(s) URL with a host."""
    with pytest.raises(ValueError) as refused:
        check_callback_url(url)
    assert str(refused.value) == (
        f"callback_url: {url!r} is not an http:// or https:// URL with a host")


def test_negative_heartbeat_is_refused() -> None:
    """heartbeat_s is 0 (only at the scan) or more."""
    async def no_app(uid: str) -> SimApp:
        raise AssertionError(uid)

    with pytest.raises(ValueError) as refused:
        Dashboard(qr_book=QrBook(FakeClock()), app_for=no_app, callback_url=None,
                  heartbeat_s=-1, clock=FakeClock())
    assert str(refused.value) == "heartbeat_s: -1 is negative"


def test_simulate_flags_configure_pairing() -> None:
    """--callback-url, --heartbeat-s and --strict-uids reach the Simulator; defaults are lenient."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sim = build(parser.parse_args(["--callback-url", "http://127.0.0.1:8080/lovense/callback",
                                   "--heartbeat-s", "0.5", "--strict-uids"]))
    default = build(parser.parse_args([]))
    assert (sim.callback_url, sim.heartbeat_s, sim.strict_uids) == (
        "http://127.0.0.1:8080/lovense/callback", 0.5, True)
    assert (default.callback_url, default.heartbeat_s, default.strict_uids) == (None, 60.0, False)


def test_banner_shows_the_callback_url_and_how_to_scan() -> None:
    """The simulate banner names the callback URL, the heartbeat, strict uids and `scan`."""
    event = {"serverUrl": "http://127.0.0.1:8788", "token": "t", "caFile": "/ca.pem",
             "callbackUrl": "http://127.0.0.1:8080/lovense/callback", "heartbeatS": 30.0,
             "strictUids": True, "apps": []}
    lines = banner(event).splitlines()
    assert lines[-2:] == [
        "  callbacks   http://127.0.0.1:8080/lovense/callback, heartbeat every 30 s, strict uids "
        "(never-paired uids get 503)",
        "  scan        lovense-worker scan CODE --simulator-url http://127.0.0.1:8788",
    ]
