"""The simulator pairs as Lovense does, over loopback sockets: QR codes, scans, callbacks,
heartbeats, toys switched off, apps going offline, and strict uids (503) through the worker."""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.integration.support import free_port, until, worker_settings
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.simulator import SIMULATOR_TOKEN, AppSpec, CallbackFailed, ScanRefused, Simulator
from worker.simulator import dashboard as sim_dashboard
from worker.simulator.lan_app import now_ms
from worker.simulator.pairing import QR_TTL_MS

pytestmark = pytest.mark.integration

NORA, MAX, SOLACE = "f082c00246fa", "ff922f7fd345", "c1a7e0501234"
DOMAIN = "127-0-0-1.lovense.club"
#: The keys of the docs' callback body, in the docs' order.
DOC_KEYS = ["uid", "appVersion", "toys", "wssPort", "httpPort", "wsPort", "appType", "domain",
            "utoken", "httpsPort", "version", "platform"]
BEAT_S = 0.05


class CallbackSink:
    """A platform's callback URL: an aiohttp server on loopback keeping every body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self.status = 200
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/lovense/callback"

    def of(self, uid: str) -> list[dict[str, Any]]:
        """Return the bodies received for ``uid``, oldest first."""
        return [body for body in self.bodies if body["uid"] == uid]

    async def _take(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.content_types.append(request.content_type)
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/lovense/callback", self._take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class FakeClock:
    """The simulator's wall clock in epoch milliseconds, moved by the test."""

    def __init__(self) -> None:
        self.now = now_ms()

    def __call__(self) -> int:
        return self.now


@pytest.fixture
async def sink() -> AsyncIterator[CallbackSink]:
    """Yield a started callback URL."""
    receiver = CallbackSink()
    await receiver.start()
    yield receiver
    await receiver.stop()


async def qr_code(sim: Simulator, uid: str, utoken: str = "ut-1") -> str:
    """Ask the simulated server for ``uid``'s QR code, as the worker does; return its code."""
    async with httpx.AsyncClient() as http:
        answer = await http.post(sim.server_url + "/api/lan/getQrCode", json={
            "token": SIMULATOR_TOKEN, "uid": uid, "uname": "Pat", "utoken": utoken, "v": 2})
    return str(answer.json()["data"]["code"])


async def control(sim: Simulator, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST to one of the simulator's ``/_sim/*`` controls."""
    async with httpx.AsyncClient() as http:
        return await http.post(f"{sim.server_url}/_sim/{path}", json=body)


async def lan_get_toys(sim: Simulator, uid: str) -> Any:
    """Ask ``uid``'s app for GetToys over HTTPS as the worker does; return the JSON answer."""
    context = ssl.create_default_context(cafile=sim.ca_file)
    async with httpx.AsyncClient(verify=context, timeout=5) as http:
        answer = await http.post(
            f"https://127.0.0.1:{sim.app(uid).https_port}/command", json={"command": "GetToys"},
            headers={"X-platform": "test"}, extensions={"sni_hostname": DOMAIN})
    return answer.json()


def expected_callback(sim: Simulator, uid: str, utoken: str, off: frozenset[str] = frozenset()
                      ) -> dict[str, Any]:
    """Return the docs' callback body for ``uid``'s app, ports as strings."""
    app = sim.app(uid)
    toys = {toy_id: {"nickName": "", "name": name, "id": toy_id, "status": int(toy_id not in off)}
            for toy_id, name in ((NORA, "nora"), (MAX, "max"), (SOLACE, "solace pro"))}
    https, http = str(app.https_port), str(app.http_port)
    return {"uid": uid, "appVersion": "7.76.0", "toys": toys, "wssPort": https, "httpPort": http,
            "wsPort": http, "appType": "remote", "domain": DOMAIN, "utoken": utoken,
            "httpsPort": https, "version": "101", "platform": "ios"}


async def test_scan_posts_the_docs_callback_body_to_the_callback_url(sink: CallbackSink) -> None:
    """POST /_sim/scan makes the app POST the docs' callback, with the QR request's utoken."""
    async with Simulator(callback_url=sink.url, heartbeat_s=0) as sim:
        code = await qr_code(sim, "sim-user-1", utoken="ut-from-qr")
        answer = await control(sim, "scan", {"code": code})
        expected = expected_callback(sim, "sim-user-1", "ut-from-qr")
        assert (answer.status_code, answer.json()) == (200, {
            "uid": "sim-user-1", "callbackUrl": sink.url, "status": 200, "body": expected})
        assert (sink.bodies, sink.content_types) == ([expected], ["application/json"])
        assert list(sink.bodies[0]) == DOC_KEYS
        assert [(p.uid, p.reason, p.status) for p in sim.callbacks] == [
            ("sim-user-1", "scan", 200)]
        assert sim.paired_uids == {"sim-user-1"}


async def test_scanning_a_new_uid_starts_its_app_on_demand() -> None:
    """A uid with no app gets one with the default toys; with no callback URL nothing is posted."""
    async with Simulator() as sim:
        body = await sim.scan(await qr_code(sim, "pat-42", utoken="pat-ut"))
        assert body == expected_callback(sim, "pat-42", "pat-ut")
        toys = await lan_get_toys(sim, "pat-42")
        assert (toys["code"], sorted(toys["data"]["toys"].count(i) for i in (NORA, MAX))) == (
            200, [2, 2])
        assert ([app.uid for app in sim.apps], sim.callbacks) == (["sim-user-1", "pat-42"], [])


async def test_heartbeats_repost_with_the_toys_current_status(sink: CallbackSink) -> None:
    """Every heartbeat re-posts the callback; after a switch-off it reports the toy's status 0."""
    async with Simulator(callback_url=sink.url, heartbeat_s=BEAT_S) as sim:
        await sim.scan(await qr_code(sim, "sim-user-1"))
        await until(lambda: len(sink.bodies) >= 2, what="a heartbeat after the scan")
        switched = await control(sim, "toy", {"uid": "sim-user-1", "toy": NORA, "on": False})
        before = len(sink.bodies)
        await until(lambda: any(b["toys"][NORA]["status"] == 0 for b in sink.bodies[before:]),
                    what="a heartbeat with Nora off")
        off = next(b for b in sink.bodies[before:] if b["toys"][NORA]["status"] == 0)
        sim.switch_toy("sim-user-1", NORA, True)
        again = len(sink.bodies)
        await until(lambda: any(b["toys"][NORA]["status"] == 1 for b in sink.bodies[again:]),
                    what="a heartbeat with Nora on again")
        reasons = {p.reason for p in sim.callbacks[1:]}
    assert switched.json() == {"uid": "sim-user-1", "toy": NORA, "status": 0}
    assert off == expected_callback(sim, "sim-user-1", "ut-1", off=frozenset({NORA}))
    assert sink.bodies[0] == expected_callback(sim, "sim-user-1", "ut-1")
    assert (sim.callbacks[0].reason, reasons) == ("scan", {"heartbeat"})


async def test_a_qr_code_older_than_4_hours_is_refused() -> None:
    """A scan 4 h and 1 ms after issue is refused (HTTP 410 and ScanRefused); nothing pairs."""
    clock = FakeClock()
    async with Simulator(clock=clock) as sim:
        code = await qr_code(sim, "sim-user-1")
        clock.now += QR_TTL_MS + 1
        answer = await control(sim, "scan", {"code": code})
        with pytest.raises(ScanRefused) as refused:
            await sim.scan(code)
        message = (f"code: {code!r} expired; it was issued 4.0 h ago for 'sim-user-1' and QR "
                   "codes expire after 4 hours (ask for a new one)")
        assert (answer.status_code, answer.json()) == (410, {"error": message})
        assert (str(refused.value), sim.paired_uids, sim.callbacks) == (message, frozenset(), [])


async def test_an_unknown_code_is_refused_and_the_cli_exits_1() -> None:
    """A code never issued is HTTP 404; `lovense-worker scan` says so and exits 1."""
    async with Simulator() as sim:
        answer = await control(sim, "scan", {"code": "nope42"})
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "scan", "nope42", "--simulator-url", sim.server_url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
    message = "code: 'nope42' was never issued by this simulator"
    assert (answer.status_code, answer.json()) == (404, {"error": message})
    assert (process.returncode, out, err.decode()) == (
        1, b"", f"lovense-worker scan: {message}\n")


async def test_the_cli_scans_a_code_and_says_where_the_callback_went(sink: CallbackSink) -> None:
    """`lovense-worker scan CODE --simulator-url URL` pairs, prints the outcome and exits 0."""
    async with Simulator(callback_url=sink.url, heartbeat_s=0) as sim:
        code = await qr_code(sim, "sim-user-1")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "scan", code, "--simulator-url", sim.server_url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        assert (process.returncode, err) == (0, b"")
        assert out.decode() == (f"scanned {code}: sim-user-1's Lovense Remote posted its "
                                f"callback to {sink.url} (HTTP 200)\n")
        assert sink.bodies == [expected_callback(sim, "sim-user-1", "ut-1")]


async def test_the_cli_exits_4_when_no_simulator_answers() -> None:
    """`scan` against a closed port says no simulator answered and exits 4."""
    url = f"http://127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "scan", "abc123", "--simulator-url", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert (process.returncode, out) == (4, b"")
    assert err.decode().startswith(f"lovense-worker scan: no simulator answered at {url}/_sim/scan")


async def test_an_offline_app_stops_answering_on_the_lan_and_the_server_says_507(
    sink: CallbackSink,
) -> None:
    """/_sim/app online false: the LAN endpoint refuses, the server says 507; true undoes it."""
    async with Simulator(callback_url=sink.url, heartbeat_s=0) as sim, httpx.AsyncClient() as http:
        await sim.scan(await qr_code(sim, "sim-user-1"))
        before = await lan_get_toys(sim, "sim-user-1")
        answer = await control(sim, "app", {"uid": "sim-user-1", "online": False})
        with pytest.raises(httpx.ConnectError):
            await lan_get_toys(sim, "sim-user-1")
        server = await http.post(sim.server_url + "/api/lan/v2/command", json={
            "token": SIMULATOR_TOKEN, "uid": "sim-user-1", "command": "Function",
            "action": "Vibrate:3", "timeSec": 2, "apiVer": 1})
        await control(sim, "app", {"uid": "sim-user-1", "online": True})
        after = await lan_get_toys(sim, "sim-user-1")
    assert answer.json() == {"uid": "sim-user-1", "online": False}
    assert server.json() == {"result": False, "code": 507, "message": "Lovense APP is offline"}
    assert (before["code"], after["code"]) == (200, 200)


async def test_an_offline_app_posts_no_heartbeats_until_it_is_back(sink: CallbackSink) -> None:
    """An offline app posts nothing while another keeps beating; back online, it beats again."""
    apps = [AppSpec(uid="sim-user-1"), AppSpec(uid="sim-user-2")]
    async with Simulator(apps=apps, callback_url=sink.url, heartbeat_s=BEAT_S) as sim:
        for uid in ("sim-user-1", "sim-user-2"):
            await sim.scan(await qr_code(sim, uid))
        await sim.set_online("sim-user-1", False)
        # Two beats of the other app: the second starts a whole period after the switch,
        # so a post of the offline app already in flight then has landed.
        seen = len(sink.of("sim-user-2"))
        await until(lambda: len(sink.of("sim-user-2")) >= seen + 2, what="two more beats")
        quiet = len(sink.of("sim-user-1"))
        seen = len(sink.of("sim-user-2"))
        await until(lambda: len(sink.of("sim-user-2")) >= seen + 3, what="three more beats")
        assert len(sink.of("sim-user-1")) == quiet
        await sim.set_online("sim-user-1", True)
        await until(lambda: len(sink.of("sim-user-1")) > quiet, what="sim-user-1 beating again")


class LogRecorder:
    """Stands in for the dashboard's logger and keeps every event it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    exception = warning


async def test_a_callback_url_that_is_down_is_logged_retried_and_stopped_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused connection fails the scan (502 / CallbackFailed), is logged, retried each beat,
    never crashes the simulator, and the heartbeats end with it."""
    recorder = LogRecorder()
    monkeypatch.setattr(sim_dashboard, "log", recorder)
    url = f"http://127.0.0.1:{free_port()}/lovense/callback"
    async with Simulator(callback_url=url, heartbeat_s=BEAT_S) as sim:
        with pytest.raises(CallbackFailed) as failed:
            await sim.scan(await qr_code(sim, "sim-user-1"))
        answer = await control(sim, "scan", {"code": await qr_code(sim, "sim-user-1")})
        await until(lambda: sum(p.reason == "heartbeat" for p in sim.callbacks) >= 3,
                    what="three heartbeats tried")
        async with httpx.AsyncClient() as http:
            state = (await http.get(sim.server_url + "/_sim/state")).json()["pairing"]
    assert str(failed.value).startswith(f"callback: {url} did not take sim-user-1's callback "
                                        "(no answer: ClientConnectorError")
    assert str(failed.value).endswith("; sim-user-1 is paired and its heartbeats will retry")
    assert (answer.status_code, answer.json()["callback"]["status"]) == (502, None)
    assert {(p.status, p.error is not None) for p in sim.callbacks} == {(None, True)}
    assert len(recorder.events) == len(sim.callbacks)
    event, fields = recorder.events[-1]
    assert (event, fields["uid"], fields["reason"], fields["url"]) == (
        "callback_post_failed", "sim-user-1", "heartbeat", url)
    assert (state["heartbeating"], state["pairedUids"]) == (["sim-user-1"], ["sim-user-1"])
    assert sim.dashboard.beating == []


async def test_a_refusing_callback_url_is_retried_on_the_next_beat(sink: CallbackSink) -> None:
    """A callback answered 503 (broker away) is posted again on the next beat until it is taken."""
    sink.status = 503
    async with Simulator(callback_url=sink.url, heartbeat_s=BEAT_S) as sim:
        with pytest.raises(CallbackFailed) as failed:
            await sim.scan(await qr_code(sim, "sim-user-1"))
        sink.status = 200
        await until(lambda: any(p.status == 200 for p in sim.callbacks), what="a 200 beat")
        first_ok = next(p for p in sim.callbacks if p.status == 200)
    assert "did not take sim-user-1's callback (HTTP 503)" in str(failed.value)
    assert (sim.callbacks[0].reason, sim.callbacks[0].status) == ("scan", 503)
    assert (first_ok.reason, first_ok.body) == (
        "heartbeat", expected_callback(sim, "sim-user-1", "ut-1"))


async def test_strict_uids_answer_503_for_a_never_paired_uid_through_the_worker(
    producer: Producer, clean_broker: None
) -> None:
    """With strict uids the worker's result for a never-paired uid is failed with Lovense's 503,
    not retried; the preconfigured app too until it is scanned, then the same command is ok."""
    async with Simulator(strict_uids=True) as sim, Worker(worker_settings(sim)):
        def vibrate(uid: str) -> dict[str, Any]:
            return {"command": "Function", "uid": uid, "mode": "server", "action": "Vibrate:3",
                    "timeSec": 2}

        never = await producer.call(vibrate("never-paired"))
        preconfigured = await producer.call(vibrate("sim-user-1"))
        qr = await producer.call({"command": "GetQrCode", "uid": "sim-user-1", "uname": "Pat"})
        assert isinstance(qr.data, dict)
        await sim.scan(qr.data["code"])
        paired = await producer.call(vibrate("sim-user-1"))
    for refused in (never, preconfigured):
        assert (refused.status, refused.via, refused.code, refused.message, refused.attempts) == (
            "failed", "server", 503, "Invalid user ID", 1)
    assert (qr.status, paired.status, paired.code) == ("ok", "ok", 200)


async def test_a_verbose_simulator_prints_scans_switches_and_presence(
    sink: CallbackSink, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console shows each scan with its callback's outcome, toy switches and apps going away."""
    async with Simulator(verbose=True, callback_url=sink.url, heartbeat_s=0) as sim:
        code = await qr_code(sim, "sim-user-1")
        await sim.scan(code)
        sim.switch_toy("sim-user-1", MAX, False)
        await sim.set_online("sim-user-1", False)
    assert capsys.readouterr().out.splitlines() == [
        f"[sim-user-1] Lovense Remote: scanned {code}, callback to {sink.url}: HTTP 200",
        "[sim-user-1] Max: switched off",
        "[sim-user-1] Lovense Remote: offline",
    ]


async def test_init_play_stop_previous_through_the_worker_queues_or_replaces(
    sim: Simulator, worker: Worker, producer: Producer
) -> None:
    """InitPlay goes out with stopPrevious as given: 0 queues behind the running pattern, 1
    replaces it, and without it the app's default (0) applies."""
    app = sim.app("sim-user-1")
    lan = {"domain": DOMAIN, "httpsPort": app.https_port}

    def init_play(last_pos: int, **extra: int) -> dict[str, Any]:
        actions = [{"ts": 0, "pos": 10}, {"ts": 600_000, "pos": last_pos}]
        return {"command": "PatternV2", "uid": "sim-user-1", "type": "InitPlay", "toy": SOLACE,
                "actions": actions, "mode": "lan", "lan": lan, **extra}

    player = app.toys[SOLACE].v2
    first = await producer.call(init_play(90))
    queued = await producer.call(init_play(50, stopPrevious=0))
    waiting = (player.actions[-1], len(player.queue))
    replaced = await producer.call(init_play(20, stopPrevious=1))
    sent = [r.body.get("stopPrevious") for r in sim.requests if r.side == "lan"]
    assert [r.status for r in (first, queued, replaced)] == ["ok"] * 3
    assert waiting == ((600_000, 90), 1)
    assert (player.actions[-1], player.queue, player.playing) == ((600_000, 20), [], True)
    assert sent == [None, 0, 1]
