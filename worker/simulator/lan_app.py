"""The fake Lovense Remote app, and the door every simulated request passes (faults, journal).

One :class:`SimApp` per simulated user: ``POST /command`` over HTTPS (a
``127-0-0-1.lovense.club`` certificate from the simulator's CA) and plain HTTP,
answering in the shapes of the Standard API docs. :func:`lan_command` is the
pure part: one command in, the answer and the toys' changes out.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

import msgspec
from aiohttp import web

from worker.simulator.certs import Listener
from worker.simulator.hold import Hold
from worker.simulator.pattern_v2 import MAX_QUEUED, Playback
from worker.simulator.toys import (
    INVALID_COMMAND,
    INVALID_PARAMETER,
    NOT_SUPPORTED,
    TOY_NOT_CONNECTED,
    TOY_NOT_FOUND,
    Rejected,
    ToySpec,
    ToyState,
    check_api_ver,
    check_call,
    integer,
    number,
)

Side = Literal["server", "lan"]
FaultMode = Literal["hang", "reset"]
Change = tuple[ToyState, str]

LAN_MESSAGES: Final = {
    400: "Invalid Command",
    401: "Toy Not Found",
    402: "Toy Not Connected",
    403: "Toy Doesn't Support This Command",
    404: "Invalid Parameter",
    500: "HTTP server not started or disabled",
    506: "Server Error. Restart Lovense Connect.",
}
LAN_OK: Final = b'{"code":200,"type":"ok"}'
#: From Lovense Remote 7.76.0 on the app takes InitPlay; from 7.71.0 every toy takes PatternV2.
INIT_PLAY_SINCE: Final = (7, 76)
PATTERN_V2_SINCE: Final = (7, 71)
MAX_PATTERN_MS: Final = 7_200_000
MAX_OFFSET_MS: Final = 15_000

DEFAULT_TOYS: Final = (
    ToySpec(id="f082c00246fa", name="Nora", battery=60),
    ToySpec(id="ff922f7fd345", name="Max", battery=80),
    ToySpec(id="c1a7e0501234", name="Solace Pro", battery=95),
)

_encode = msgspec.json.Encoder().encode


def lovense_domain(host: str) -> str:
    """Return the dashed lovense.club name of an IPv4 address, e.g. 127-0-0-1.lovense.club."""
    return f"{host.replace('.', '-')}.lovense.club"


def now_ms() -> int:
    """Return the wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class RecordedRequest(msgspec.Struct, frozen=True):
    """One request a fake received, and the Lovense code it answered (0: none)."""

    side: Side
    app: str | None
    scheme: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_ms: int
    status: int


@dataclass(slots=True)
class Faults:
    """The misbehaviour every fake applies: a delay for all, a code or a mode for a share."""

    delay_ms: int = 0
    code: int | None = None
    share: float = 1.0
    mode: FaultMode | None = None
    _credit: float = field(default=0.0, init=False, repr=False)

    def configure(
        self,
        delay_ms: int | None = None,
        code: int | None = None,
        share: float = 1.0,
        mode: str | None = None,
    ) -> None:
        """Replace every fault at once; no arguments clears them all."""
        if delay_ms is not None and delay_ms < 0:
            raise ValueError(f"delay_ms: {delay_ms} is negative")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share: {share} is outside 0..1")
        if mode not in (None, "hang", "reset"):
            raise ValueError(f"mode: {mode!r} is not 'hang' or 'reset'")
        self.delay_ms, self.code, self.share = delay_ms or 0, code, share
        self.mode = cast(FaultMode | None, mode)
        self._credit = 0.0

    def draw(self) -> bool:
        """Tell whether this request takes the fault: exactly ``share`` of them, evenly spread."""
        if self.code is None and self.mode is None:
            return False
        self._credit += self.share
        if self._credit < 1.0 - 1e-9:
            return False
        self._credit -= 1.0
        return True

    def as_dict(self) -> dict[str, Any]:
        """Return the faults with set_faults' keyword names."""
        return {
            "delay_ms": self.delay_ms,
            "code": self.code,
            "share": self.share,
            "mode": self.mode,
        }


class Stage:
    """Hold what every fake shares: the faults, the hold, the request journal and the console."""

    def __init__(
        self,
        *,
        record: bool,
        keep: int | None = None,
        delay_ms: int = 0,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep: {keep} must be at least 1 (or None to keep every request)")
        self.faults = Faults(delay_ms=delay_ms)
        self.record = record
        #: At most this many requests are kept, the newest (a ring); None keeps all.
        self.keep = keep
        self.requests: list[RecordedRequest] = []
        self.announce = announce
        self.hold: Hold | None = None

    async def answer(
        self,
        request: web.BaseRequest,
        *,
        side: Side,
        app: str | None,
        body: Any,
        received_ms: int,
        handle: Callable[[], tuple[int, bytes]],
        refuse: Callable[[int], bytes],
        closing: asyncio.Event,
    ) -> web.StreamResponse:
        """Answer one request through the hold and the faults, recording it with its code."""
        if self.hold is not None:
            await self.hold.enter()
        faulted = self.faults.draw()
        if faulted and self.faults.mode is not None:
            self._note(request, side, app, body, received_ms, 0)
            if self.faults.mode == "hang":
                await closing.wait()  # the client giving up cancels this handler
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=204)  # never reaches the client
        if faulted and self.faults.code is not None:
            status, payload = self.faults.code, refuse(self.faults.code)
        else:
            status, payload = handle()
        self._note(request, side, app, body, received_ms, status)
        if self.faults.delay_ms:
            await asyncio.sleep(self.faults.delay_ms / 1000)
        return web.Response(body=payload, content_type="application/json")

    def _note(
        self,
        request: web.BaseRequest,
        side: Side,
        app: str | None,
        body: Any,
        received: int,
        status: int,
    ) -> None:
        """Append the request to the journal when recording, dropping the oldest past ``keep``."""
        if self.record:
            headers = {name.lower(): value for name, value in request.headers.items()}
            self.requests.append(
                RecordedRequest(
                    side,
                    app,
                    request.scheme,
                    request.method,
                    request.path,
                    headers,
                    body,
                    received,
                    status,
                )
            )
            if self.keep is not None and len(self.requests) > self.keep:
                del self.requests[: len(self.requests) - self.keep]


def decode_json(raw: bytes) -> Any:
    """Return the JSON in ``raw``, or its text when it is not JSON."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw.decode("utf-8", "replace")


def lan_error(code: int) -> bytes:
    """Return the LAN app's error answer for ``code``."""
    message = LAN_MESSAGES.get(code, "Error")
    return _encode({"code": code, "type": "error", "message": message})


def toy_ids(value: object) -> list[str] | None:
    """Return the ``toy`` parameter as a list of ids (None: every toy); reject other shapes."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return value
    raise Rejected(INVALID_PARAMETER)


def _targets(
    toys: Mapping[str, ToyState], body: dict[str, Any], able: Callable[[ToyState], bool]
) -> list[ToyState]:
    """Return the toys a command is for: the named ones, or every connected one able to."""
    ids = toy_ids(body.get("toy"))
    if ids is None:
        connected = [toy for toy in toys.values() if toy.status == 1]
        if not connected:
            raise Rejected(TOY_NOT_CONNECTED if toys else TOY_NOT_FOUND)
        chosen = [toy for toy in connected if able(toy)]
        if not chosen:
            raise Rejected(NOT_SUPPORTED)
        return chosen
    named: list[ToyState] = []
    for toy_id in ids:
        toy = toys.get(toy_id)
        if toy is None:
            raise Rejected(TOY_NOT_FOUND)
        if toy.status != 1:
            raise Rejected(TOY_NOT_CONNECTED)
        if not able(toy):
            raise Rejected(NOT_SUPPORTED)
        named.append(toy)
    return named


def _version(text: str) -> tuple[int, ...]:
    """Return "7.76.0" as (7, 76, 0); unreadable parts count as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in text.split("."))


@dataclass(frozen=True, slots=True)
class AppSpec:
    """Describe one simulated Lovense Remote app and its user."""

    uid: str
    toys: tuple[ToySpec, ...] = DEFAULT_TOYS
    https_port: int = 0
    http_port: int = 0
    platform: str = "ios"
    app_version: str = "7.76.0"
    version: str = "101"
    app_type: str = "remote"


def lan_command(
    spec: AppSpec, toys: Mapping[str, ToyState], body: Any, now: int
) -> tuple[bytes, list[Change]]:
    """Run one LAN command; return the answer and what changed, or raise Rejected."""
    if not isinstance(body, dict):
        raise Rejected(INVALID_COMMAND)
    match body.get("command"):
        case "GetToys":
            listing = _encode({toy.id: toy.get_toys_entry() for toy in toys.values()})
            data = {"toys": listing.decode(), "platform": spec.platform, "appType": spec.app_type}
            return _encode({"code": 200, "data": data, "type": "OK"}), []
        case "GetToyName":
            names = [toy.name for toy in toys.values()]
            return _encode({"code": 200, "data": names, "type": "OK"}), []
        case "Function" | "Pattern" | "Preset":
            call = check_call(body, lan=True)
            chosen = _targets(toys, body, lambda toy: toy.handles(call))
            return LAN_OK, [(toy, toy.apply(call, now)) for toy in chosen]
        case "Position":
            value = integer(body.get("value"), 0, 100)
            check_api_ver(body, 1)
            chosen = _targets(toys, body, lambda toy: toy.supports("Position"))
            return LAN_OK, [(toy, toy.set_position(value)) for toy in chosen]
        case "PatternV2":
            return LAN_OK, _pattern_v2(spec, toys, body, now)
    raise Rejected(INVALID_COMMAND)


def check_setup(actions: object) -> tuple[tuple[int, int], ...]:
    """Return PatternV2 ``actions`` as (ts, pos) pairs, dropping invalid ones as the app does."""
    if not isinstance(actions, list):
        raise Rejected(INVALID_PARAMETER)
    points: list[tuple[int, int]] = []
    for action in actions:
        if not isinstance(action, dict):
            continue
        ts, pos = number(action.get("ts")), number(action.get("pos"))
        if ts is None or pos is None or not ts.is_integer() or not pos.is_integer():
            continue
        previous = points[-1][0] if points else -1
        if previous < ts <= MAX_PATTERN_MS and 0 <= pos <= 100:
            points.append((int(ts), int(pos)))
    # Not documented: a Setup left with nothing to play is refused here.
    if not points:
        raise Rejected(INVALID_PARAMETER)
    return tuple(points)


def _pattern_v2(
    spec: AppSpec, toys: Mapping[str, ToyState], body: dict[str, Any], now: int
) -> list[Change]:
    """Run a PatternV2 Setup, Play, InitPlay, Stop or SyncTime."""
    check_api_ver(body, 1)
    version = _version(spec.app_version)
    kind = body.get("type")
    if kind == "SyncTime":
        return []
    if kind == "InitPlay" and version < INIT_PLAY_SINCE:
        raise Rejected(INVALID_COMMAND)
    if kind not in ("Setup", "Play", "InitPlay", "Stop"):
        raise Rejected(INVALID_PARAMETER)
    actions = check_setup(body.get("actions")) if kind in ("Setup", "InitPlay") else ()
    start = integer(body.get("startTime", 0), 0, MAX_PATTERN_MS)
    offset = integer(body.get("offsetTime", 0), 0, MAX_OFFSET_MS)
    time_ms = None if body.get("timeMs") is None else number(body["timeMs"])
    if body.get("timeMs") is not None and (time_ms or 0) <= 100:
        raise Rejected(INVALID_PARAMETER)
    # Lovense's InitPlay default is 0: queued behind a running pattern. Other types ignore it.
    stop_previous = kind == "InitPlay" and integer(body.get("stopPrevious", 0), 0, 1) == 1
    old = version < PATTERN_V2_SINCE
    chosen = _targets(toys, body, lambda toy: not old or toy.supports("Position"))
    if kind == "Stop":
        return [(toy, toy.v2.stop()) for toy in chosen]
    if kind == "Setup":
        return [(toy, toy.v2.setup(actions)) for toy in chosen]
    if kind == "Play":
        if not all(toy.v2.actions for toy in chosen):
            raise Rejected(INVALID_PARAMETER)  # not documented: Play before any Setup
        return [(toy, toy.v2.play(start, offset, now, time_ms)) for toy in chosen]
    queueing = [toy for toy in chosen if not stop_previous and toy.v2.running(now)]
    if any(len(toy.v2.queue) >= MAX_QUEUED for toy in queueing):
        raise Rejected(INVALID_PARAMETER)
    playback = Playback(actions, start, offset, time_ms)
    return [(toy, toy.v2.init_play(playback, stop_previous, now)) for toy in chosen]


class SimApp:
    """One simulated Lovense Remote app: its user, its toys and its two listeners."""

    def __init__(self, spec: AppSpec, *, host: str, stage: Stage) -> None:
        self.spec = spec
        self.uid = spec.uid
        self.domain = lovense_domain(host)
        self.toys = {toy.id: ToyState.from_spec(toy) for toy in spec.toys}
        self._host = host
        self._stage = stage
        self._listener: Listener | None = None
        self._offline = False

    @property
    def https_port(self) -> int:
        """Return the HTTPS port (the spec's until started)."""
        return self._listener.ports[0] if self._listener else self.spec.https_port

    @property
    def http_port(self) -> int:
        """Return the plain HTTP port (the spec's until started)."""
        return self._listener.ports[1] if self._listener else self.spec.http_port

    @property
    def offline(self) -> bool:
        """Tell whether the app's listeners were taken down with :meth:`go_offline`."""
        return self._offline

    async def start(self, context: ssl.SSLContext) -> None:
        """Open the HTTPS and HTTP ports (after a restart, the same ones with a new certificate)."""
        if self._listener is None or not self._listener.running:
            bindings = [(self.https_port, context), (self.http_port, None)]
            self._listener = Listener(self._handle, self._host, bindings)
        if not self._offline:
            await self._listener.start()

    async def stop(self) -> None:
        """Close both ports and every connection."""
        if self._listener is not None:
            await self._listener.stop()

    async def go_offline(self) -> None:
        """Close the app's ports and connections so that connecting is refused."""
        self._offline = True
        await self.stop()

    async def go_online(self) -> None:
        """Reopen the app's ports, the same ones as before."""
        self._offline = False
        if self._listener is not None:
            await self._listener.start()

    def run(self, body: Any, now: int | None = None) -> tuple[int, bytes]:
        """Run one LAN command on this app's toys; return the code and the answer."""
        try:
            answer, changes = lan_command(
                self.spec, self.toys, body, now_ms() if now is None else now
            )
        except Rejected as exc:
            return exc.code, lan_error(exc.code)
        self._announce(changes)
        return 200, answer

    def callback_body(self, utoken: str) -> dict[str, Any]:
        """Return what the app POSTs to the platform's callback URL, in the docs' shape."""
        return {
            "uid": self.uid,
            "appVersion": self.spec.app_version,
            "toys": {toy.id: toy.callback_entry() for toy in self.toys.values()},
            "wssPort": str(self.https_port),
            "httpPort": str(self.http_port),
            "wsPort": str(self.http_port),
            "appType": self.spec.app_type,
            "domain": self.domain,
            "utoken": utoken,
            "httpsPort": str(self.https_port),
            "version": self.spec.version,
            "platform": self.spec.platform,
        }

    def snapshot(self, now: int) -> dict[str, Any]:
        """Return the app and its toys as plain JSON-ready data."""
        return {
            "uid": self.uid,
            "domain": self.domain,
            "httpsPort": self.https_port,
            "httpPort": self.http_port,
            "offline": self._offline,
            "toys": {toy.id: toy.snapshot(now) for toy in self.toys.values()},
        }

    def _announce(self, changes: list[Change]) -> None:
        """Print one line per toy change when the simulator is verbose."""
        if self._stage.announce is not None:
            for toy, text in changes:
                self._stage.announce(f"[{self.uid}] {toy.name}: {text}")

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve ``POST /command``; any other path is HTTP 404."""
        received = now_ms()
        if request.path != "/command":
            return web.Response(status=404)
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        body = decode_json(await request.read())
        assert self._listener is not None
        return await self._stage.answer(
            request,
            side="lan",
            app=self.uid,
            body=body,
            received_ms=received,
            handle=lambda: self.run(body, received),
            refuse=lan_error,
            closing=self._listener.closing,
        )
