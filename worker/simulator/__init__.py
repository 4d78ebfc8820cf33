"""A faithful fake of both sides of the Lovense Standard API, on loopback only.

:class:`Simulator` runs a fake Lovense server API and one fake Lovense Remote
app per :class:`AppSpec`, each an aiohttp server on 127.0.0.1::

    async with Simulator() as sim:
        sim.server_url        # LOVENSE_API_BASE
        sim.ca_file           # LOVENSE_LAN_CA_FILE
        sim.app("sim-user-1").https_port

``sim.set_faults(...)`` makes the fakes slow, failing or silent;
``sim.hold()`` keeps requests waiting until released, so a test can get a call
in flight without racing a delay (:mod:`worker.simulator.hold`).

Pairing goes as with Lovense: a getQrCode issues a code; ``await sim.scan(code)``
makes the app of its uid (started on demand) POST its callback to
``callback_url`` and re-post it every ``heartbeat_s`` with its toys' status
(:mod:`worker.simulator.dashboard`); ``sim.switch_toy(uid, toy, on)`` and
``await sim.set_online(uid, online)`` change what the next heartbeat says. With
``strict_uids`` the server API answers 503 for any uid never paired by a scan
(the preconfigured apps included: Lovense knows only scanned uids).

Integration tests, ``make run`` without a developer token and the benchmarks
use it over real sockets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final

from worker.simulator.certs import LanCertificate
from worker.simulator.controls import pairing_controls
from worker.simulator.dashboard import (
    DEFAULT_HEARTBEAT_S,
    CallbackFailed,
    CallbackPost,
    Dashboard,
    check_callback_url,
)
from worker.simulator.hold import Hold
from worker.simulator.lan_app import (
    AppSpec,
    RecordedRequest,
    SimApp,
    Stage,
    lovense_domain,
    now_ms,
)
from worker.simulator.pairing import QrBook, ScanRefused
from worker.simulator.server_api import ServerApi
from worker.simulator.toys import ToySpec, ToyState

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "SIMULATOR_TOKEN",
    "AppSpec",
    "CallbackFailed",
    "CallbackPost",
    "Hold",
    "RecordedRequest",
    "ScanRefused",
    "SimApp",
    "Simulator",
    "ToySpec",
    "ToyState",
]

SIMULATOR_TOKEN: Final = "simulator-token"


def _print_line(line: str) -> None:
    """Print one console line at once."""
    print(line, flush=True)


class Simulator:
    """Run the fake Lovense server API and the fake Lovense Remote apps together.

    Every request is journaled (:attr:`requests`) unless ``record`` is false; with
    ``keep`` only the newest ``keep`` are, so a simulator that runs for days stays flat.
    """

    def __init__(
        self,
        token: str = SIMULATOR_TOKEN,
        apps: Sequence[AppSpec] | None = None,
        host: str = "127.0.0.1",
        server_port: int = 0,
        delay_ms: int = 0,
        record: bool = True,
        keep: int | None = None,
        ca_dir: str | None = None,
        verbose: bool = False,
        callback_url: str | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        strict_uids: bool = False,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        address = ipaddress.ip_address(host)
        if address.version != 4 or not address.is_loopback:
            raise ValueError(f"host: {host} is not an IPv4 loopback address")
        specs = list(apps) if apps is not None else [AppSpec(uid="sim-user-1")]
        if len({spec.uid for spec in specs}) != len(specs):
            raise ValueError("apps: two apps share a uid")
        self.token = token
        self._host = host
        self._ca_dir = ca_dir
        self._stage = Stage(
            record=record,
            keep=keep,
            delay_ms=delay_ms,
            announce=_print_line if verbose else None,
        )
        self.apps = [SimApp(spec, host=host, stage=self._stage) for spec in specs]
        self._by_uid = {app.uid: app for app in self.apps}
        qr_book = QrBook(clock)
        self._dashboard = Dashboard(
            qr_book=qr_book,
            app_for=self._app_for,
            callback_url=callback_url,
            heartbeat_s=heartbeat_s,
            clock=clock,
            announce=self._stage.announce,
        )
        self._server = ServerApi(
            token=token,
            host=host,
            port=server_port,
            stage=self._stage,
            apps=self._by_uid,
            qr_book=qr_book,
            strict_uids=strict_uids,
        )
        for (method, name), control in pairing_controls(self).items():
            self._server.add_control(method, name, control)
        self._certificate: LanCertificate | None = None

    async def start(self) -> None:
        """Write the CA file and open every port (port 0 picks a free one)."""
        if self._certificate is not None:
            return
        self._certificate = LanCertificate(lovense_domain(self._host), self._ca_dir)
        try:
            for app in self.apps:
                await app.start(self._certificate.server_context)
            await self._server.start()
            self._dashboard.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every port and connection and remove the CA file's temporary directory."""
        if self._stage.hold is not None:
            self._stage.hold.release()  # held handlers finish instead of hanging the close
        await self._dashboard.close()
        await self._server.stop()
        for app in self.apps:
            await app.stop()
        if self._certificate is not None:
            self._certificate.close()
            self._certificate = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def server_url(self) -> str:
        """Return the fake server API's base URL (for LOVENSE_API_BASE)."""
        return self._server.url

    @property
    def ca_file(self) -> str:
        """Return the path of the PEM file of the CA that signed the apps' certificate."""
        if self._certificate is None:
            raise RuntimeError("the simulator is not started")
        return self._certificate.ca_file

    def app(self, uid: str) -> SimApp:
        """Return the simulated app of ``uid``."""
        return self._by_uid[uid]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return the recorded requests in the order they were handled (live list)."""
        return self._stage.requests

    def clear(self) -> None:
        """Forget the recorded requests."""
        self._stage.requests.clear()

    def hold(self) -> Hold:
        """Hold every request from now on, before it is handled, until the Hold is released."""
        if self._stage.hold is not None and not self._stage.hold.released:
            raise RuntimeError("hold: release the previous hold first")
        self._stage.hold = Hold()
        return self._stage.hold

    def set_faults(
        self,
        delay_ms: int | None = None,
        code: int | None = None,
        share: float = 1.0,
        mode: str | None = None,
    ) -> None:
        """Replace every fault of the server API and the apps; no arguments clears them."""
        self._stage.faults.configure(delay_ms, code, share, mode)

    @property
    def offline_uids(self) -> set[str]:
        """Return the uids for which the server API answers 507 (mutate it in place)."""
        return self._server.offline_uids

    @offline_uids.setter
    def offline_uids(self, uids: set[str]) -> None:
        self._server.offline_uids.clear()
        self._server.offline_uids.update(uids)

    @property
    def qr_requests(self) -> dict[str, dict[str, Any]]:
        """Return the last getQrCode body received per uid."""
        return self._server.qr_requests

    def callback_body(self, uid: str) -> dict[str, Any]:
        """Return the body the app of ``uid`` would POST to the platform's callback URL.

        Its utoken is the one of the QR code that paired it, else of its last QR request.
        """
        utoken = self._dashboard.utoken(uid)
        if utoken is None:
            return self._server.callback_body(uid)
        return self._app_of(uid).callback_body(utoken)

    @property
    def dashboard(self) -> Dashboard:
        """Return the developer dashboard: scans, callback posts and heartbeats."""
        return self._dashboard

    @property
    def callback_url(self) -> str | None:
        """Return the developer dashboard's callback URL, where scanned apps post (None: none)."""
        return self._dashboard.callback_url

    @callback_url.setter
    def callback_url(self, url: str | None) -> None:
        """Point the dashboard at another callback URL (one only known once it listens)."""
        self._dashboard.callback_url = check_callback_url(url)

    @property
    def heartbeat_s(self) -> float:
        """Return how often a paired app re-posts its callback (0: only at the scan)."""
        return self._dashboard.heartbeat_s

    @property
    def strict_uids(self) -> bool:
        """Tell whether the server API answers 503 for uids never paired by a scan."""
        return self._server.strict_uids

    @property
    def paired_uids(self) -> frozenset[str]:
        """Return the uids paired by a scan."""
        return frozenset(self._server.qr_book.paired)

    @property
    def callbacks(self) -> list[CallbackPost]:
        """Return the callback POSTs made, oldest first (the last 1,000)."""
        return list(self._dashboard.posts)

    async def scan(self, code: str) -> dict[str, Any]:
        """Scan a QR code as Lovense Remote would; return the callback body its app posted.

        The code's uid gets an app if it has none, is paired, and its app POSTs the
        callback to ``callback_url`` (without one, nothing is posted and the body is
        returned all the same), then once every ``heartbeat_s``. Raises ScanRefused
        for a code never issued or issued more than 4 hours ago, and CallbackFailed
        when the callback URL did not answer 2xx (the uid is paired all the same and
        its heartbeats retry).
        """
        body, _ = await self._dashboard.scan(code)
        return body

    def switch_toy(self, uid: str, toy_id: str, on: bool) -> None:
        """Switch a toy of ``uid``'s app on or off; one switched off stops and reports status 0."""
        toy = self._app_of(uid).toys.get(toy_id)
        if toy is None:
            raise ValueError(f"toy: {toy_id!r} is not a toy of {uid!r}")
        if not on:
            toy.stop()
        toy.status = 1 if on else 0
        if self._stage.announce is not None:
            self._stage.announce(f"[{uid}] {toy.name}: switched {'on' if on else 'off'}")

    async def set_online(self, uid: str, online: bool) -> None:
        """Take ``uid``'s app offline (LAN refused, server 507, no heartbeats) or bring it back."""
        app = self._app_of(uid)
        if online:
            self._server.offline_uids.discard(uid)
            await app.go_online()
        else:
            self._server.offline_uids.add(uid)
            await app.go_offline()
        if self._stage.announce is not None:
            self._stage.announce(f"[{uid}] Lovense Remote: {'online' if online else 'offline'}")

    def state(self) -> dict[str, Any]:
        """Return what ``GET /_sim/state`` shows: apps, toys, faults and pairing."""
        return {
            **self._server.state(),
            "pairing": {
                "callbackUrl": self.callback_url,
                "heartbeatS": self.heartbeat_s,
                "strictUids": self.strict_uids,
                "pairedUids": sorted(self._server.qr_book.paired),
                "heartbeating": self._dashboard.beating,
                "qrCodes": len(self._server.qr_book),
            },
        }

    def _app_of(self, uid: str) -> SimApp:
        app = self._by_uid.get(uid)
        if app is None:
            raise ValueError(f"uid: {uid!r} has no simulated app")
        return app

    async def _app_for(self, uid: str) -> SimApp:
        """Return ``uid``'s app, starting a new one with the default toys if it has none."""
        if (app := self._by_uid.get(uid)) is not None:
            return app
        if self._certificate is None:
            raise RuntimeError("the simulator is not started")
        app = SimApp(AppSpec(uid=uid), host=self._host, stage=self._stage)
        await app.start(self._certificate.server_context)
        self.apps.append(app)
        self._by_uid[uid] = app
        return app
