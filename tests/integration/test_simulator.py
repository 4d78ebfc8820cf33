"""The Lovense simulator over loopback sockets: both sides of the Standard API, faults, controls."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.support import until
from worker.simulator import SIMULATOR_TOKEN, Simulator
from worker.simulator.main import add_arguments, run

pytestmark = pytest.mark.integration

NORA, MAX, SOLACE = "f082c00246fa", "ff922f7fd345", "c1a7e0501234"
DOMAIN = "127-0-0-1.lovense.club"
LAN_OK = {"code": 200, "type": "ok"}
SERVER_OK = {"result": True, "code": 200, "message": "Success"}
COMMAND = "/api/lan/v2/command"
UNSUPPORTED = "Toy Doesn't Support This Command"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """Yield a started simulator with the default app."""
    async with Simulator() as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    """Yield an httpx client that trusts the simulator's CA."""
    context = ssl.create_default_context(cafile=sim.ca_file)
    async with httpx.AsyncClient(verify=context, timeout=5) as http:
        yield http


async def lan(
    sim: Simulator, client: httpx.AsyncClient, body: dict[str, Any], *, https: bool = True
) -> Any:
    """POST a command to the default app as the docs do and return the JSON answer."""
    app = sim.app("sim-user-1")
    if https:
        response = await client.post(
            f"https://127.0.0.1:{app.https_port}/command",
            json=body,
            headers={"X-platform": "Test Platform"},
            extensions={"sni_hostname": DOMAIN},
        )
    else:
        response = await client.post(f"http://127.0.0.1:{app.http_port}/command", json=body)
    assert response.status_code == 200
    return response.json()


async def server(sim: Simulator, client: httpx.AsyncClient, path: str, body: Any) -> Any:
    """POST to the fake server API and return the JSON answer (always HTTP 200)."""
    response = await client.post(sim.server_url + path, json=body)
    assert response.status_code == 200
    return response.json()


# The docs' request examples, verbatim (server ones get the simulator's token).
LAN_EXAMPLES: list[dict[str, Any]] = json.loads("""[
  {"command": "Function", "action": "Vibrate:16", "timeSec": 20, "loopRunningSec": 9,
   "loopPauseSec": 4, "toy": "ff922f7fd345", "apiVer": 1},
  {"command": "Function", "action": "Vibrate:2,Rotate:3,Pump:3", "timeSec": 20,
   "loopRunningSec": 9, "loopPauseSec": 4, "apiVer": 1},
  {"command": "Function", "action": "Vibrate:2,All:10", "timeSec": 20, "loopRunningSec": 9,
   "loopPauseSec": 4, "apiVer": 1},
  {"command": "Function", "action": "Stroke:0-20,Thrusting:10", "timeSec": 20, "apiVer": 1},
  {"command": "Function", "action": "Stop", "timeSec": 0, "apiVer": 1},
  {"command": "Pattern", "rule": "V:1;F:v;S:1000#", "strength": "20;20;5;20;10", "timeSec": 9,
   "toy": "ff922f7fd345", "apiVer": 2},
  {"command": "Pattern", "rule": "V:1;F:v,r,p;S:100#", "strength": "20;20;5;20;10",
   "timeSec": 9, "apiVer": 2},
  {"command": "PatternV2", "type": "Setup", "actions": [{"ts": 0, "pos": 10},
   {"ts": 100, "pos": 100}, {"ts": 200, "pos": 10}, {"ts": 400, "pos": 15},
   {"ts": 800, "pos": 88}], "apiVer": 1},
  {"command": "PatternV2", "type": "Stop", "toy": "ff922f7fd345", "apiVer": 1},
  {"command": "Preset", "name": "pulse", "timeSec": 9, "toy": "ff922f7fd345", "apiVer": 1}
]""")
PLAY_EXAMPLE = {"command": "PatternV2", "type": "Play", "toy": "ff922f7fd345", "startTime": 100}
PLAY_EXAMPLE |= {"offsetTime": 300, "apiVer": 1}
SERVER_EXAMPLES: list[dict[str, Any]] = json.loads("""[
  {"uid": "1132fsdfsd", "command": "Function", "action": "Vibrate:16", "timeSec": 20,
   "loopRunningSec": 9, "loopPauseSec": 4, "apiVer": 1},
  {"uid": "1132fsdfsd", "command": "Function", "action": "Vibrate:2,Rotate:3,Pump:3",
   "timeSec": 20, "loopRunningSec": 9, "loopPauseSec": 4, "apiVer": 1},
  {"uid": "1ads22adsf", "command": "Pattern", "rule": "V:1;F:v;S:1000#",
   "strength": "20;20;5;20;10", "timeSec": 9, "apiVer": 2},
  {"uid": "1ads22adsf", "command": "Pattern", "rule": "V:1;F:v,r,p;S:100#",
   "strength": "20;20;5;20;10", "timeSec": 9, "apiVer": 2},
  {"uid": "1adsf2323", "command": "Preset", "name": "pulse", "timeSec": 9, "apiVer": 1}
]""")


def fn(action: str, **extra: Any) -> dict[str, Any]:
    """Return a Function body with the docs' required fields."""
    return {"command": "Function", "action": action, "timeSec": 0, "apiVer": 1, **extra}


def signed(body: dict[str, Any], uid: str = "u1") -> dict[str, Any]:
    """Return ``body`` with the simulator's token and ``uid`` for the server API."""
    return {"token": SIMULATOR_TOKEN, "uid": uid, **body}


@pytest.mark.parametrize("body", LAN_EXAMPLES, ids=lambda b: f"{b['command']}-{b.get('type', '')}")
async def test_every_lan_example_gets_the_documented_answer(
    sim: Simulator, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    """Each LAN request example from the docs is answered {"code": 200, "type": "ok"}."""
    assert await lan(sim, client, body) == LAN_OK


async def test_lan_play_example_after_setup_plays_on_max(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """The docs' Play example, sent after their Setup example, plays the pattern on Max."""
    answers = [await lan(sim, client, LAN_EXAMPLES[7]), await lan(sim, client, PLAY_EXAMPLE)]
    toy = sim.app("sim-user-1").toys[MAX]
    assert answers == [LAN_OK, LAN_OK]
    assert (toy.v2.actions[-1], toy.v2.playing, toy.v2.start_ms) == ((800, 88), True, 100)


@pytest.mark.parametrize("body", SERVER_EXAMPLES, ids=lambda b: str(b["command"]))
async def test_every_server_example_gets_the_documented_answer(
    sim: Simulator, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    """Each server request example from the docs is answered with result true, code 200."""
    assert await server(sim, client, COMMAND, {"token": SIMULATOR_TOKEN, **body}) == SERVER_OK


async def test_get_toys_toys_string_parses_to_the_toys(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """GetToys answers the docs' envelope whose toys field is a JSON string of every toy."""
    answer = await lan(sim, client, {"command": "GetToys"})
    toys = json.loads(answer["data"].pop("toys"))
    assert answer == {"code": 200, "data": {"platform": "ios", "appType": "remote"}, "type": "OK"}
    app_toys = sim.app("sim-user-1").toys
    assert toys == {toy_id: toy.get_toys_entry() for toy_id, toy in app_toys.items()}
    assert list(toys) == [NORA, MAX, SOLACE]
    assert toys[SOLACE]["fullFunctionNames"] == ["Thrusting", "Position"]


async def test_get_toy_name_answers_the_names(sim: Simulator, client: httpx.AsyncClient) -> None:
    """GetToyName answers every toy's name."""
    answer = await lan(sim, client, {"command": "GetToyName"})
    assert answer == {"code": 200, "data": ["Nora", "Max", "Solace Pro"], "type": "OK"}


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"command": "Dance"}, 400, "Invalid Command"),
        (fn("Vibrate:1", toy="nope"), 401, "Toy Not Found"),
        (fn("Rotate:1", toy=MAX), 403, UNSUPPORTED),
        ({"command": "Position", "value": "1", "toy": NORA, "apiVer": 1}, 403, UNSUPPORTED),
        (fn("Vibrate:21"), 404, "Invalid Parameter"),
    ],
)
async def test_lan_errors_use_the_documented_shape(
    sim: Simulator, client: httpx.AsyncClient, body: dict[str, Any], code: int, message: str
) -> None:
    """LAN refusals answer {"code", "type": "error", "message"} with the docs' messages."""
    assert await lan(sim, client, body) == {"code": code, "type": "error", "message": message}


async def test_lan_https_verifies_as_lovense_club_and_records_platform(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """HTTPS to 127.0.0.1 verifies as 127-0-0-1.lovense.club; X-platform and scheme are kept."""
    await lan(sim, client, {"command": "GetToyName"})
    seen = sim.requests[0]
    fields = (seen.side, seen.app, seen.scheme, seen.path, seen.status, seen.body)
    assert fields == ("lan", "sim-user-1", "https", "/command", 200, {"command": "GetToyName"})
    assert seen.headers["x-platform"] == "Test Platform"


async def test_lan_https_fails_for_a_client_without_the_ca(sim: Simulator) -> None:
    """A client trusting only the system CAs refuses the simulator's certificate."""
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.post(
                f"https://127.0.0.1:{sim.app('sim-user-1').https_port}/command",
                json={"command": "GetToys"},
                extensions={"sni_hostname": DOMAIN},
            )
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)


async def test_lan_plain_http_answers_and_changes_the_toy(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """Plain HTTP serves /command too, and the toy takes the level."""
    assert await lan(sim, client, fn("Vibrate:16", toy=MAX), https=False) == LAN_OK
    assert sim.app("sim-user-1").toys[MAX].levels == {"Vibrate": 16, "Pump": 0}
    assert sim.requests[0].scheme == "http"


async def test_unknown_paths_are_http_404(sim: Simulator, client: httpx.AsyncClient) -> None:
    """The app serves only /command, the server only its endpoints; others are 404, unrecorded."""
    app_response = await client.post(f"http://127.0.0.1:{sim.app('sim-user-1').http_port}/x")
    server_response = await client.post(sim.server_url + "/api/lan/v1/command", json={})
    assert (app_response.status_code, server_response.status_code, sim.requests) == (404, 404, [])


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"token": "wrong"}, 501, "Invalid token"),
        ({"uid": ""}, 503, "Invalid User ID"),
        ({"uid": "a,,b"}, 503, "Invalid User ID"),
        ({"uid": 5}, 503, "Invalid User ID"),
        ({"command": "Vibrate"}, 400, "Invalid command"),
        ({"action": "Vibrate:21"}, 404, "Invalid Parameter"),
        ({"action": "All:5"}, 404, "Invalid Parameter"),
        ({"apiVer": 2}, 404, "Invalid Parameter"),
        ({"uid": "offline-user"}, 507, "Lovense APP is offline"),
    ],
)
async def test_server_errors_in_the_documented_shape(
    sim: Simulator, client: httpx.AsyncClient, change: dict[str, Any], code: int, message: str
) -> None:
    """Bad token 501, bad uid 503, unknown command 400, bad parameter 404, offline app 507."""
    sim.offline_uids.add("offline-user")
    answer = await server(sim, client, COMMAND, {**signed(fn("Vibrate:5")), **change})
    assert answer == {"result": False, "code": code, "message": message}
    assert sim.requests[0].status == code


async def test_server_checks_token_before_everything(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """A body wrong in every way answers 501, the first check."""
    answer = await server(sim, client, COMMAND, {"command": "Nope", "uid": ""})
    assert answer == {"result": False, "code": 501, "message": "Invalid token"}


async def test_server_accepts_form_bodies(sim: Simulator, client: httpx.AsyncClient) -> None:
    """A form-encoded command is read like JSON, and recorded as its fields."""
    form = signed({"command": "Preset", "name": "wave", "timeSec": "9", "apiVer": "1"})
    response = await client.post(sim.server_url + COMMAND, data=form)
    assert (response.json(), sim.requests[0].body) == (SERVER_OK, form)


async def test_server_relays_to_the_simulated_app(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """A server command for a simulated uid reaches that app's named toy only."""
    body = signed(fn("Vibrate:5", toy=NORA), "sim-user-1")
    assert await server(sim, client, COMMAND, body) == SERVER_OK
    toys = sim.app("sim-user-1").toys
    assert (toys[NORA].levels["Vibrate"], toys[MAX].levels["Vibrate"]) == (5, 0)


async def test_server_with_several_uids_ignores_toy(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """With comma-separated uids the toy parameter is ignored and every toy responds."""
    body = signed(fn("Vibrate:5", toy=NORA), "sim-user-1,elsewhere")
    assert await server(sim, client, COMMAND, body) == SERVER_OK
    assert sim.app("sim-user-1").toys[MAX].levels["Vibrate"] == 5


async def test_server_with_one_offline_uid_answers_507_and_reaches_the_others(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """One offline uid in a multi-uid call makes the answer 507; online apps still get it."""
    sim.offline_uids = {"gone"}
    answer = await server(sim, client, COMMAND, signed(fn("Vibrate:9"), "sim-user-1,gone"))
    assert answer == {"result": False, "code": 507, "message": "Lovense APP is offline"}
    assert sim.app("sim-user-1").toys[NORA].levels == {"Vibrate": 9, "Rotate": 0}


async def test_get_qr_code_answers_and_feeds_the_callback(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """getQrCode answers code 0 with a QR URL and code; the callback echoes the utoken."""
    body = signed({"uname": "Ann", "utoken": "s3cr3t", "v": 2}, "sim-user-1")
    answer = await server(sim, client, "/api/lan/getQrCode", body)
    code = answer["data"]["code"]
    assert answer == {
        "code": 0,
        "message": "Success",
        "result": True,
        "data": {"qr": f"{sim.server_url}/UploadFiles/qr/{code}.jpg", "code": code},
    }
    assert (len(code), code.isalnum(), sim.qr_requests["sim-user-1"]) == (6, True, body)
    app = sim.app("sim-user-1")
    callback = sim.callback_body("sim-user-1")
    ports = [callback[key] for key in ("httpsPort", "wssPort", "httpPort", "wsPort")]
    assert ports == [str(app.https_port)] * 2 + [str(app.http_port)] * 2
    assert (callback["utoken"], callback["domain"]) == ("s3cr3t", DOMAIN)


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"token": "x"}, 501, "Invalid token"),
        ({"uid": None}, 503, "Invalid User ID"),
        ({"v": 1}, 404, "Invalid Parameter"),
    ],
)
async def test_get_qr_code_errors(
    sim: Simulator, client: httpx.AsyncClient, change: dict[str, Any], code: int, message: str
) -> None:
    """getQrCode checks the token, the uid and v=2."""
    body = {**signed({"uname": "n", "utoken": "t", "v": 2}), **change}
    answer = await server(sim, client, "/api/lan/getQrCode", body)
    assert (answer, sim.qr_requests) == ({"result": False, "code": code, "message": message}, {})


async def test_delay_fault_answers_late(sim: Simulator, client: httpx.AsyncClient) -> None:
    """With delay_ms 150 the answer takes at least 150 ms and is otherwise unchanged."""
    sim.set_faults(delay_ms=150)
    started = time.monotonic()
    answer = await lan(sim, client, {"command": "GetToyName"}, https=False)
    assert (time.monotonic() - started >= 0.15, answer["code"]) == (True, 200)


async def test_code_fault_answers_the_code_on_both_sides(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """With code 502 at share 1.0 the server and the app answer it and apply nothing."""
    sim.set_faults(code=502)
    server_answer = await server(sim, client, COMMAND, signed(fn("Vibrate:5"), "sim-user-1"))
    lan_answer = await lan(sim, client, fn("Vibrate:5", toy=NORA))
    permission = "You do not have permission to use this API"
    assert server_answer == {"result": False, "code": 502, "message": permission}
    assert lan_answer == {"code": 502, "type": "error", "message": "Error"}
    assert sim.app("sim-user-1").toys[NORA].levels["Vibrate"] == 0
    assert [r.status for r in sim.requests] == [502, 502]


async def test_code_fault_share_half_hits_every_other_request(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """A share of 0.5 faults exactly the second and fourth of four requests."""
    sim.set_faults(code=506, share=0.5)
    answers = [await lan(sim, client, {"command": "GetToyName"}, https=False) for _ in range(4)]
    assert [a["code"] for a in answers] == [200, 506, 200, 506]


async def test_reset_fault_closes_without_answer(sim: Simulator, client: httpx.AsyncClient) -> None:
    """In reset mode connections close with no answer on both sides; set_faults() clears it."""
    sim.set_faults(mode="reset")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(sim.server_url + COMMAND, json={"token": SIMULATOR_TOKEN})
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await lan(sim, client, {"command": "GetToys"})
    sim.set_faults()
    answer = await server(sim, client, COMMAND, {"token": "x"})
    assert (answer["code"], [r.status for r in sim.requests]) == (501, [0, 0, 501])


async def test_hang_fault_never_answers(sim: Simulator, client: httpx.AsyncClient) -> None:
    """In hang mode the client times out; the request is recorded with status 0."""
    sim.set_faults(mode="hang")
    with pytest.raises(httpx.ReadTimeout):
        await client.post(sim.server_url + COMMAND, json={}, timeout=0.2)
    assert [r.status for r in sim.requests] == [0]


async def test_stop_ends_a_hanging_request_promptly() -> None:
    """Stopping the simulator does not wait for a hanging request."""
    simulator = Simulator()
    await simulator.start()
    simulator.set_faults(mode="hang")
    async with httpx.AsyncClient() as http:
        call = asyncio.ensure_future(http.post(simulator.server_url + COMMAND, json={}))
        await until(lambda: bool(simulator.requests), what="the hanging request recorded")
        started = time.monotonic()
        await simulator.stop()
        with pytest.raises(httpx.RemoteProtocolError):
            await call
    assert time.monotonic() - started < 1.0


async def test_hold_keeps_requests_unanswered_until_released(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """Held requests of both fakes wait unrecorded and unanswered; released, they are answered
    in arrival order, and later requests pass."""
    gate = sim.hold()
    first = asyncio.ensure_future(server(sim, client, COMMAND, signed(fn("Vibrate:1"))))
    await gate.arrived(1)
    second = asyncio.ensure_future(lan(sim, client, {"command": "GetToyName"}))
    await gate.arrived(2)
    assert (first.done(), second.done(), sim.requests) == (False, False, [])
    gate.release()
    assert ((await first)["code"], (await second)["code"]) == (200, 200)
    assert [r.side for r in sim.requests] == ["server", "lan"]
    assert (await lan(sim, client, {"command": "GetToyName"}))["code"] == 200
    assert (gate.arrivals, gate.released) == (3, True)


async def test_hold_reports_what_did_not_arrive_and_allows_one_at_a_time(sim: Simulator) -> None:
    """Waiting for more requests than arrive fails naming the count; a second hold while one
    is unreleased is refused."""
    gate = sim.hold()
    with pytest.raises(TimeoutError, match=r"^hold: 0 of 1 requests arrived within 0.05 s$"):
        await gate.arrived(1, timeout=0.05)
    with pytest.raises(RuntimeError, match="release the previous hold first"):
        sim.hold()
    gate.release()
    assert sim.hold() is not gate


async def test_stop_releases_held_requests() -> None:
    """Stopping the simulator lets a held request finish instead of hanging the stop."""
    simulator = Simulator()
    await simulator.start()
    gate = simulator.hold()
    async with httpx.AsyncClient() as http:
        call = asyncio.ensure_future(http.post(simulator.server_url + COMMAND, json={}))
        await gate.arrived(1)
        async with asyncio.timeout(5):
            await simulator.stop()
        answer = await call
    assert (answer.status_code, answer.json()["code"], gate.released) == (200, 501, True)


async def test_go_offline_refuses_and_go_online_restores_the_same_ports(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """An offline app refuses connections on both ports; back online it answers on the same ones."""
    app = sim.app("sim-user-1")
    ports = (app.https_port, app.http_port)
    await lan(sim, client, {"command": "GetToyName"}, https=False)  # a kept-alive connection
    await app.go_offline()
    assert app.offline is True
    with pytest.raises(httpx.ConnectError):
        await lan(sim, client, {"command": "GetToyName"})
    with pytest.raises(httpx.ConnectError):
        await lan(sim, client, {"command": "GetToyName"}, https=False)
    await app.go_online()
    assert (app.offline, (app.https_port, app.http_port)) == (False, ports)
    assert (await lan(sim, client, {"command": "GetToyName"}))["code"] == 200


async def test_control_endpoints_read_and_steer_the_simulator(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    """/_sim/* lists and clears requests, sets faults and offline uids, shows state, unrecorded."""
    await server(sim, client, COMMAND, {"token": "x"})
    listed = (await client.get(sim.server_url + "/_sim/requests")).json()
    assert [(r["side"], r["path"], r["status"]) for r in listed] == [("server", COMMAND, 501)]
    assert (await client.post(sim.server_url + "/_sim/clear")).json() == {"ok": True}
    faults = await client.post(sim.server_url + "/_sim/faults", json={"code": 506, "share": 0.5})
    assert faults.json() == {"delay_ms": 0, "code": 506, "share": 0.5, "mode": None}
    offline = await client.post(sim.server_url + "/_sim/offline", json={"uids": ["a", "b"]})
    assert (offline.json(), sim.offline_uids) == ({"offlineUids": ["a", "b"]}, {"a", "b"})
    state = (await client.get(sim.server_url + "/_sim/state")).json()
    app = state["apps"][0]
    assert (state["offlineUids"], state["faults"]["code"]) == (["a", "b"], 506)
    assert (app["uid"], app["offline"], app["toys"][NORA]["levels"]) == (
        "sim-user-1",
        False,
        {"Vibrate": 0, "Rotate": 0},
    )
    callback = await client.get(sim.server_url + "/_sim/callback", params={"uid": "sim-user-1"})
    assert callback.json() == sim.callback_body("sim-user-1")
    assert sim.requests == []


async def test_control_rejects_bad_settings(sim: Simulator, client: httpx.AsyncClient) -> None:
    """A fault mode that does not exist is HTTP 400 and changes nothing."""
    response = await client.post(sim.server_url + "/_sim/faults", json={"mode": "explode"})
    assert response.status_code == 400
    state = (await client.get(sim.server_url + "/_sim/state")).json()
    assert state["faults"] == {"delay_ms": 0, "code": None, "share": 1.0, "mode": None}


async def test_record_false_keeps_no_requests() -> None:
    """With record=False nothing is journaled."""
    async with Simulator(record=False) as simulator, httpx.AsyncClient() as http:
        await http.post(simulator.server_url + COMMAND, json={})
        assert simulator.requests == []


async def test_keep_journals_only_the_newest_requests() -> None:
    """With keep=N the journal is a ring: the newest N requests, in the order handled."""
    async with Simulator(keep=3) as simulator, httpx.AsyncClient() as http:
        for n in range(7):
            await http.post(simulator.server_url + COMMAND, json={"n": n})
        assert [r.body["n"] for r in simulator.requests] == [4, 5, 6]


def test_keep_below_one_is_refused() -> None:
    """keep=0 would silently record nothing: it is refused, naming the argument."""
    with pytest.raises(ValueError, match="keep: 0 must be at least 1"):
        Simulator(keep=0)


async def test_verbose_prints_one_line_per_toy_change(capsys: pytest.CaptureFixture[str]) -> None:
    """A verbose simulator prints "[uid] Toy: change" for each toy a command changes."""
    async with Simulator(verbose=True) as simulator, httpx.AsyncClient() as http:
        body = fn("Vibrate:16", toy=MAX, timeSec=20)
        await http.post(
            f"http://127.0.0.1:{simulator.app('sim-user-1').http_port}/command", json=body
        )
    assert capsys.readouterr().out == "[sim-user-1] Max: Vibrate 16 (20 s)\n"


async def test_ca_dir_keeps_the_ca_file_and_a_temporary_one_is_removed(
    tmp_path: pathlib.Path,
) -> None:
    """A given ca_dir keeps its PEM after stop; the default temporary directory is removed."""
    async with Simulator(ca_dir=str(tmp_path)) as kept:
        assert kept.ca_file == str(tmp_path / "lovense-simulator-ca.pem")
    async with Simulator() as temporary:
        temporary_dir = os.path.dirname(temporary.ca_file)
        assert os.path.isdir(temporary_dir) is True
    pem = (tmp_path / "lovense-simulator-ca.pem").read_text()
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    assert os.path.exists(temporary_dir) is False


async def test_cli_run_prints_ready_json_first_and_cleans_up_on_cancel(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """run() prints one simulator_ready JSON line first, serves, and closes on cancellation."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--server-port", "0", "--apps", "2", "--quiet"])
    events: list[dict[str, Any]] = []
    task = asyncio.ensure_future(run(args, ready=events.append))
    await until(lambda: bool(events), what="simulator_ready")
    event = events[0]
    async with httpx.AsyncClient() as http:
        state = (await http.get(event["serverUrl"] + "/_sim/state")).json()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0]) == event
    assert (event["event"], event["token"]) == ("simulator_ready", SIMULATOR_TOKEN)
    assert [a["uid"] for a in event["apps"]] == [a["uid"] for a in state["apps"]]
    assert [a["uid"] for a in state["apps"]] == ["sim-user-1", "sim-user-2"]
    assert (event["apps"][0]["domain"], event["apps"][0]["toys"]) == (DOMAIN, [NORA, MAX, SOLACE])
    assert os.path.exists(event["caFile"]) is False
