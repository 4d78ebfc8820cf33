"""The fake Lovense server API (``/api/lan/v2/command``, ``/api/lan/getQrCode``) and its controls.

Like the real one it answers HTTP 200 with the Lovense code in the JSON body,
checks token, uid, command, parameters and the app's presence in that order,
and relays accepted commands to the simulated apps of those uids. It remembers
every QR code it issues (:class:`~worker.simulator.pairing.QrBook`); with
``strict_uids`` it knows only the uids paired by a scan and answers any other
503 "Invalid User ID", as Lovense does. The ``/_sim/*`` endpoints let another
process read and steer the simulator; they are never recorded and never faulted.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import msgspec
from aiohttp import web

from worker.simulator.certs import Listener
from worker.simulator.dashboard import CallbackFailed
from worker.simulator.lan_app import SimApp, Stage, decode_json, now_ms, toy_ids
from worker.simulator.pairing import QrBook, ScanRefused
from worker.simulator.toys import INVALID_PARAMETER, Rejected, check_call, number

COMMAND_PATH: Final = "/api/lan/v2/command"
QR_PATH: Final = "/api/lan/getQrCode"
CONTROL_PREFIX: Final = "/_sim/"

INVALID_TOKEN: Final = 501
INVALID_USER: Final = 503
APP_OFFLINE: Final = 507
SERVER_MESSAGES: Final = {
    200: "Success",
    400: "Invalid command",
    404: "Invalid Parameter",
    501: "Invalid token",
    502: "You do not have permission to use this API",
    503: "Invalid User ID",
    507: "Lovense APP is offline",
}
SERVER_OK: Final = b'{"result":true,"code":200,"message":"Success"}'
#: Body keys the server consumes itself; the rest is relayed to the app.
_SERVER_KEYS: Final = frozenset({"token", "uid"})

_encode = msgspec.json.Encoder().encode


class FaultSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /_sim/faults``: :meth:`Simulator.set_faults`' keywords."""

    delay_ms: int | None = None
    code: int | None = None
    share: float = 1.0
    mode: Literal["hang", "reset"] | None = None


class OfflineUids(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /_sim/offline``: every uid the server calls offline."""

    uids: list[str]


def server_error(code: int) -> bytes:
    """Return the server API's error answer for ``code``."""
    message = SERVER_MESSAGES.get(code, "Error")
    return _encode({"result": False, "code": code, "message": message})


async def read_body(request: web.BaseRequest) -> Any:
    """Return a JSON body, form fields as a dict, or the raw text."""
    if request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        return {name: value for name, value in form.items() if isinstance(value, str)}
    return decode_json(await request.read())


class ServerApi:
    """The fake ``api.lovense-api.com``: command relay, QR codes and the simulator's controls."""

    def __init__(
        self,
        *,
        token: str,
        host: str,
        port: int,
        stage: Stage,
        apps: Mapping[str, SimApp],
        qr_book: QrBook,
        strict_uids: bool = False,
    ) -> None:
        self.token = token
        self.strict_uids = strict_uids
        self.offline_uids: set[str] = set()
        self.qr_requests: dict[str, dict[str, Any]] = {}
        self.qr_book = qr_book
        self._host = host
        self._stage = stage
        self._apps = apps
        self._listener = Listener(self._handle, host, [(port, None)])
        self._controls: dict[tuple[str, str], Callable[[Any], Any]] = {
            ("GET", "requests"): lambda _: stage.requests,
            ("POST", "clear"): lambda _: stage.requests.clear(),
            ("POST", "faults"): self._set_faults,
            ("GET", "state"): lambda _: self.state(),
            ("POST", "offline"): self._set_offline,
            ("GET", "callback"): lambda query: self.callback_body(query.get("uid", "")),
        }

    def add_control(self, method: str, name: str, control: Callable[[Any], Any]) -> None:
        """Serve ``control`` (plain or async; given the body or query) at ``/_sim/<name>``."""
        self._controls[(method, name)] = control

    @property
    def url(self) -> str:
        """Return the base URL, e.g. ``http://127.0.0.1:8788``."""
        return f"http://{self._host}:{self._listener.ports[0]}"

    async def start(self) -> None:
        """Open the port."""
        await self._listener.start()

    async def stop(self) -> None:
        """Close the port and every connection."""
        await self._listener.stop()

    def command(self, body: Any, now: int) -> tuple[int, bytes]:
        """Check a ``/api/lan/v2/command`` body, relay it to simulated apps, and answer."""
        try:
            uids = self._authorize(body, known_only=self.strict_uids)
            check_call(body, lan=False)
            toy_ids(body.get("toy"))
        except Rejected as exc:
            return exc.code, server_error(exc.code)
        relayed = {key: value for key, value in body.items() if key not in _SERVER_KEYS}
        if len(uids) > 1:
            relayed.pop("toy", None)  # the docs: with several uids, toy is ignored
        online = [uid for uid in uids if uid not in self.offline_uids]
        for uid in online:
            if (app := self._apps.get(uid)) is not None:
                app.run(relayed, now)
        # Not documented: with several uids, one offline app makes the whole answer 507.
        if len(online) < len(uids):
            return APP_OFFLINE, server_error(APP_OFFLINE)
        return 200, SERVER_OK

    def qr_code(self, body: Any) -> tuple[int, bytes]:
        """Answer a ``/api/lan/getQrCode`` body and remember it for the app's callback."""
        try:
            self._authorize(body)
            if number(body.get("v")) != 2:
                raise Rejected(INVALID_PARAMETER)
        except Rejected as exc:
            return exc.code, server_error(exc.code)
        self.qr_requests[body["uid"]] = body
        utoken = body.get("utoken")
        code = self.qr_book.issue(body["uid"], utoken if isinstance(utoken, str) else "").code
        data = {"qr": f"{self.url}/UploadFiles/qr/{code}.jpg", "code": code}
        return 0, _encode({"code": 0, "message": "Success", "result": True, "data": data})

    def callback_body(self, uid: str) -> dict[str, Any]:
        """Return the callback the app of ``uid`` would post, with the utoken it was given."""
        app = self._apps.get(uid)
        if app is None:
            raise ValueError(f"uid: {uid!r} is not a simulated app")
        utoken = self.qr_requests.get(uid, {}).get("utoken")
        return app.callback_body(utoken if isinstance(utoken, str) else "")

    def state(self) -> dict[str, Any]:
        """Return the simulator's state: apps, toys, offline uids and faults."""
        now = now_ms()
        return {
            "serverUrl": self.url,
            "offlineUids": sorted(self.offline_uids),
            "faults": self._stage.faults.as_dict(),
            "apps": [app.snapshot(now) for app in self._apps.values()],
        }

    def _authorize(self, body: Any, *, known_only: bool = False) -> list[str]:
        """Check the token (501) and the uid list (503), paired uids only if ``known_only``."""
        if not isinstance(body, dict) or body.get("token") != self.token:
            raise Rejected(INVALID_TOKEN)
        uid = body.get("uid")
        uids = uid.split(",") if isinstance(uid, str) else []
        if not uids or not all(uids):
            raise Rejected(INVALID_USER)
        # Not documented: one never-paired uid among several refuses the whole call.
        if known_only and not self.qr_book.paired.issuperset(uids):
            raise Rejected(INVALID_USER)
        return uids

    def _set_faults(self, body: Any) -> dict[str, Any]:
        """Apply ``POST /_sim/faults``."""
        settings = msgspec.convert(body, FaultSettings)
        self._stage.faults.configure(
            settings.delay_ms, settings.code, settings.share, settings.mode
        )
        return self._stage.faults.as_dict()

    def _set_offline(self, body: Any) -> dict[str, Any]:
        """Apply ``POST /_sim/offline``: replace the set of offline uids."""
        uids = msgspec.convert(body, OfflineUids).uids
        self.offline_uids.clear()
        self.offline_uids.update(uids)
        return {"offlineUids": sorted(self.offline_uids)}

    async def _control(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve the ``/_sim/*`` endpoints."""
        control = self._controls.get((request.method, request.path[len(CONTROL_PREFIX) :]))
        if control is None:
            return web.Response(status=404)
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw) if raw else dict(request.query)
            result = control(body)
            if inspect.isawaitable(result):
                result = await result
        except ScanRefused as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except CallbackFailed as exc:
            answer = {"error": str(exc), "callback": msgspec.to_builtins(exc.post)}
            return web.json_response(answer, status=502)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        payload = _encode({"ok": True} if result is None else result)
        return web.Response(body=payload, content_type="application/json")

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route one request: the two Lovense endpoints, the controls, else HTTP 404."""
        received = now_ms()
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            return await self._control(request)
        if path not in (COMMAND_PATH, QR_PATH):
            return web.Response(status=404)
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        body = await read_body(request)

        def handle() -> tuple[int, bytes]:
            return self.command(body, received) if path == COMMAND_PATH else self.qr_code(body)

        return await self._stage.answer(
            request,
            side="server",
            app=None,
            body=body,
            received_ms=received,
            handle=handle,
            refuse=server_error,
            closing=self._listener.closing,
        )
