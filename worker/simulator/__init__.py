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

Integration tests, ``make run`` without a developer token and the benchmarks
use it over real sockets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final

from worker.simulator.certs import LanCertificate
from worker.simulator.hold import Hold
from worker.simulator.lan_app import AppSpec, RecordedRequest, SimApp, Stage, lovense_domain
from worker.simulator.server_api import ServerApi
from worker.simulator.toys import ToySpec, ToyState

__all__ = [
    "SIMULATOR_TOKEN",
    "AppSpec",
    "Hold",
    "RecordedRequest",
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
    """Run the fake Lovense server API and the fake Lovense Remote apps together."""

    def __init__(
        self,
        token: str = SIMULATOR_TOKEN,
        apps: Sequence[AppSpec] | None = None,
        host: str = "127.0.0.1",
        server_port: int = 0,
        delay_ms: int = 0,
        record: bool = True,
        ca_dir: str | None = None,
        verbose: bool = False,
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
            record=record, delay_ms=delay_ms, announce=_print_line if verbose else None
        )
        self.apps = [SimApp(spec, host=host, stage=self._stage) for spec in specs]
        self._by_uid = {app.uid: app for app in self.apps}
        self._server = ServerApi(
            token=token, host=host, port=server_port, stage=self._stage, apps=self._by_uid
        )
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
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every port and connection and remove the CA file's temporary directory."""
        if self._stage.hold is not None:
            self._stage.hold.release()  # held handlers finish instead of hanging the close
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
        """Return the body the app of ``uid`` would POST to the platform's callback URL."""
        return self._server.callback_body(uid)
