"""The simulator's own CA and lovense.club certificate, and the loopback listeners it serves on.

The real Lovense Remote app presents a publicly trusted certificate for its
dashed ``*.lovense.club`` name; the simulator presents one for the same name,
signed by a throw-away CA whose PEM file the client is told to trust.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Sequence

import trustme
from aiohttp import web

CA_FILE_NAME = "lovense-simulator-ca.pem"
#: How long stopping waits for in-flight handlers before cancelling them.
SHUTDOWN_TIMEOUT_S = 0.25

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class LanCertificate:
    """Own a fresh CA, a server certificate for ``domain`` and the CA's PEM file."""

    def __init__(self, domain: str, ca_dir: str | None = None) -> None:
        ca = trustme.CA(organization_name="Lovense simulator")
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(domain).configure_cert(self.server_context)
        self._own_dir = ca_dir is None
        directory = tempfile.mkdtemp(prefix="lovense-sim-") if ca_dir is None else ca_dir
        os.makedirs(directory, exist_ok=True)
        self.ca_file = os.path.join(directory, CA_FILE_NAME)
        ca.cert_pem.write_to_path(self.ca_file)

    def close(self) -> None:
        """Remove the CA file's directory if this object created it."""
        if self._own_dir:
            shutil.rmtree(os.path.dirname(self.ca_file), ignore_errors=True)


def bind(host: str, port: int) -> socket.socket:
    """Return a listening TCP socket on ``host:port`` (0 picks a free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Listener:
    """Serve one handler on a set of ports, and stop and start again on the same ports."""

    def __init__(
        self, handler: Handler, host: str, bindings: Sequence[tuple[int, ssl.SSLContext | None]]
    ) -> None:
        self._handler = handler
        self._host = host
        self._bindings = list(bindings)
        self._runner: web.ServerRunner | None = None
        #: Set while stopping; hanging handlers wait on it so stop() is prompt.
        self.closing = asyncio.Event()

    @property
    def ports(self) -> list[int]:
        """Return the bound ports, in the order of the bindings."""
        return [port for port, _ in self._bindings]

    @property
    def running(self) -> bool:
        """Tell whether the ports are open."""
        return self._runner is not None

    async def start(self) -> None:
        """Open every port; ports given as 0 keep the port first picked on later starts."""
        if self._runner is not None:
            return
        self.closing = asyncio.Event()
        server = web.Server(self._handler, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        self._runner = runner
        try:
            for index, (port, context) in enumerate(self._bindings):
                sock = bind(self._host, port)
                self._bindings[index] = (sock.getsockname()[1], context)
                try:
                    await web.SockSite(runner, sock, ssl_context=context).start()
                except BaseException:
                    sock.close()
                    raise
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close the ports and every open connection, in-flight requests included."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self.closing.set()
            await runner.cleanup()
