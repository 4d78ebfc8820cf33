"""``run --simulator``: the worker, its callback URL and the simulator in one process.

What ``make run`` starts without a developer token. The simulator plays
Lovense (server API on 127.0.0.1:8788 when that port is free, Remote apps on
loopback, strict about uids as Lovense is); the callback endpoint serves
``LOVENSE_CALLBACK_PORT`` and is the simulator's "developer dashboard" URL; and
before the banner, ``sim-user-1`` is paired through the real path: GetQrCode
through the worker, a scan in the simulator, the app's callback POSTed to the
endpoint, published to RabbitMQ, validated and followed into the registry. A
LAN GetToys for it works at once.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import sys
from collections.abc import Callable, Mapping

import msgspec

from worker.adapters.amqp.producer import Producer
from worker.app import Worker, serve
from worker.config import Settings
from worker.contract.errors import ConfigError
from worker.endpoint import CallbackService
from worker.metrics import CallbackMetrics, Metrics
from worker.simulator import SIMULATOR_TOKEN, CallbackFailed, ScanRefused, Simulator
from worker.simulator.main import DEFAULT_SERVER_PORT

#: The user paired before the banner.
FIRST_USER = "sim-user-1"
#: How long each pairing step may take before start-up gives up.
PAIRING_TIMEOUT_S = 20.0

#: Build settings from ``extra`` (forced) and ``defaults`` (for unset variables).
MakeSettings = Callable[[Mapping[str, str], Mapping[str, str]], Settings]


class PairingFailed(Exception):
    """The first user could not be paired; the message says at which step."""


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: The simulator inside ``run --simulator`` keeps only its newest requests (for
#: ``/_sim/requests``): a ring, so a long-running ``make run`` stays flat in memory.
KEEP_REQUESTS = 1000


async def run(make_settings: MakeSettings, configure_logs: Callable[[Settings], None]) -> int:
    """Run until SIGTERM or SIGINT; return the exit code."""
    port = DEFAULT_SERVER_PORT if _free(DEFAULT_SERVER_PORT) else 0
    async with Simulator(token=SIMULATOR_TOKEN, server_port=port, verbose=True,
                         strict_uids=True, keep=KEEP_REQUESTS) as sim:
        settings = make_settings(
            {
                "LOVENSE_API_BASE": sim.server_url,
                "LOVENSE_DEVELOPER_TOKEN": SIMULATOR_TOKEN,
                "LOVENSE_DEVELOPER_TOKEN_FILE": "",
                "LOVENSE_LAN_CA_FILE": sim.ca_file,
            },
            {
                # The simulated apps listen on loopback: let the LAN route reach them.
                "LOVENSE_LAN_ALLOW": "127.0.0.1/32",
                # A fresh secret per run unless one is set: utokens are checked for real.
                "LOVENSE_UTOKEN_SECRET": secrets.token_hex(32),
            },
        )
        configure_logs(settings)
        metrics = Metrics()
        callbacks = CallbackService(settings, metrics=CallbackMetrics(metrics.registry),
                                    metrics_port=0)
        try:
            await callbacks.start(connect_timeout=PAIRING_TIMEOUT_S)
        except OSError as exc:
            await callbacks.stop()
            raise ConfigError(
                f"LOVENSE_CALLBACK_PORT: cannot serve the callback URL on "
                f"{settings.callback_host}:{settings.callback_port} ({exc.strerror or exc}); "
                "set LOVENSE_CALLBACK_PORT to a free port") from None
        sim.callback_url = callbacks.url

        async def paired(worker: Worker) -> None:
            await pair(settings, sim, worker, FIRST_USER)
            print(banner(sim, callbacks.url, FIRST_USER), file=sys.stderr, flush=True)

        try:
            return await serve(settings, metrics=metrics, started=paired)
        except PairingFailed as exc:
            print(f"lovense-worker: could not pair {FIRST_USER} with the simulator: {exc}",
                  file=sys.stderr)
            return 1
        finally:
            await callbacks.stop()


async def pair(settings: Settings, sim: Simulator, worker: Worker, uid: str,
               timeout: float = PAIRING_TIMEOUT_S) -> None:
    """Pair ``uid`` as a user would: QR code through the worker, scan, callback, registry."""
    async with Producer(settings.amqp_url) as producer:
        qr = await producer.call({"command": "GetQrCode", "uid": uid, "uname": uid},
                                 timeout=timeout)
    if qr.status != "ok" or not isinstance(qr.data, dict) or "code" not in qr.data:
        raise PairingFailed(f"GetQrCode was {qr.status}: {qr.message}")
    try:
        await sim.scan(str(qr.data["code"]))
    except (ScanRefused, CallbackFailed) as exc:
        raise PairingFailed(f"the scan: {exc}") from None
    try:
        async with asyncio.timeout(timeout):
            while worker.registry.get(uid) is None:
                await asyncio.sleep(0.02)  # the callback is on its way through RabbitMQ
    except TimeoutError:
        raise PairingFailed(f"the callback did not reach the registry within {timeout:g} s") \
            from None


def banner(sim: Simulator, callback_url: str, uid: str) -> str:
    """Return the banner: where everything is, and what to try first."""
    app = sim.app(uid)
    lan = msgspec.json.encode({"domain": app.domain, "httpsPort": app.https_port}).decode()
    scan = ".venv/bin/lovense-worker scan CODE"
    if not sim.server_url.endswith(f":{DEFAULT_SERVER_PORT}"):
        scan += f" --simulator-url {sim.server_url}"
    return (
        "\n  ============================================================\n"
        "  SIMULATOR MODE: no LOVENSE_DEVELOPER_TOKEN is set, so nothing\n"
        "  reaches Lovense. Commands go to the built-in simulator:\n"
        f"    server API     {sim.server_url}\n"
        f"    callback URL   {callback_url}\n"
        f"    paired         {uid}, its Remote app at lan {lan}\n"
        "  Try, in another shell:\n"
        "    .venv/bin/lovense-worker publish --wait \\\n"
        f"      '{{\"command\": \"GetToys\", \"uid\": \"{uid}\"}}'\n"
        "    .venv/bin/lovense-worker publish --wait \\\n"
        f"      '{{\"command\": \"Function\", \"uid\": \"{uid}\", \"action\": \"Vibrate:5\", "
        "\"timeSec\": 3}'\n"
        "  Pair another user: publish a GetQrCode, then scan its code:\n"
        f"    {scan}\n"
        "  ============================================================\n"
    )
