"""The ``simulate`` and ``scan`` commands: run the simulator; scan a QR code in a running one.

``simulate`` prints one JSON object first on stdout (``"event":
"simulator_ready"``) naming every address, for scripts and benchmarks; a banner
for people goes to stderr; with ``--quiet`` off, one line per toy change
follows on stdout. ``scan`` asks a running simulator to scan a code, as a user
holding Lovense Remote would, and says what happened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import aiohttp

from worker.simulator import DEFAULT_HEARTBEAT_S, SIMULATOR_TOKEN, AppSpec, Simulator

DEFAULT_SERVER_PORT = 8788
DEFAULT_SIMULATOR_URL = f"http://127.0.0.1:{DEFAULT_SERVER_PORT}"
#: ``scan`` exit codes besides 0: the code was refused, the callback was not taken, no simulator.
SCAN_REFUSED, SCAN_CALLBACK_FAILED, SCAN_UNREACHABLE = 1, 3, 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument(
        "--server-port",
        type=int,
        default=DEFAULT_SERVER_PORT,
        help="server API port (0: any free port)",
    )
    parser.add_argument(
        "--apps",
        type=int,
        default=1,
        metavar="N",
        help="number of simulated apps, uids sim-user-1..N",
    )
    parser.add_argument(
        "--https-port", type=int, default=0, help="first app's HTTPS port (0: any free port)"
    )
    parser.add_argument(
        "--http-port", type=int, default=0, help="first app's HTTP port (0: any free port)"
    )
    parser.add_argument("--delay-ms", type=int, default=0, help="answer every request this late")
    parser.add_argument(
        "--fail-code",
        type=int,
        default=None,
        help="answer this Lovense error code to --fail-share of requests",
    )
    parser.add_argument(
        "--fail-share",
        type=float,
        default=1.0,
        help="share (0..1) of requests that get --fail-code",
    )
    parser.add_argument("--token", default=SIMULATOR_TOKEN, help="developer token to accept")
    parser.add_argument(
        "--ca-dir", default=None, help="directory for the CA file (default: a temporary one)"
    )
    parser.add_argument(
        "--no-record", action="store_true", help="do not keep requests (for long benchmarks)"
    )
    parser.add_argument("--quiet", action="store_true", help="do not print toy changes")
    parser.add_argument(
        "--callback-url",
        default=None,
        metavar="URL",
        help="the developer dashboard's callback URL: where a scanned app POSTs its callback "
        "(default: none, a scan pairs but posts nothing)",
    )
    parser.add_argument(
        "--heartbeat-s",
        type=float,
        default=DEFAULT_HEARTBEAT_S,
        metavar="S",
        help=f"seconds between a paired app's callbacks ({DEFAULT_HEARTBEAT_S:g}; 0: only at "
        "the scan)",
    )
    parser.add_argument(
        "--strict-uids",
        action="store_true",
        help='answer 503 "Invalid User ID" for uids never paired by a scan, as Lovense does '
        "(the preconfigured apps included)",
    )


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``scan`` command's arguments to ``parser``."""
    parser.add_argument("code", help="the code of a GetQrCode result (data.code)")
    parser.add_argument(
        "--simulator-url",
        default=DEFAULT_SIMULATOR_URL,
        metavar="URL",
        help=f"the simulator's server API ({DEFAULT_SIMULATOR_URL})",
    )


def build(args: argparse.Namespace) -> Simulator:
    """Return a Simulator configured from parsed arguments."""
    if args.apps < 1:
        raise ValueError(f"--apps: {args.apps} is less than 1")
    apps = [AppSpec(uid="sim-user-1", https_port=args.https_port, http_port=args.http_port)]
    apps += [AppSpec(uid=f"sim-user-{n}") for n in range(2, args.apps + 1)]
    sim = Simulator(
        token=args.token,
        apps=apps,
        host=args.host,
        server_port=args.server_port,
        delay_ms=args.delay_ms,
        record=not args.no_record,
        ca_dir=args.ca_dir,
        verbose=not args.quiet,
        callback_url=args.callback_url,
        heartbeat_s=args.heartbeat_s,
        strict_uids=args.strict_uids,
    )
    if args.fail_code is not None:
        sim.set_faults(delay_ms=args.delay_ms, code=args.fail_code, share=args.fail_share)
    return sim


def ready_event(sim: Simulator) -> dict[str, Any]:
    """Return the ``simulator_ready`` event describing every address of a started simulator."""
    return {
        "event": "simulator_ready",
        "serverUrl": sim.server_url,
        "token": sim.token,
        "caFile": sim.ca_file,
        "callbackUrl": sim.callback_url,
        "heartbeatS": sim.heartbeat_s,
        "strictUids": sim.strict_uids,
        "apps": [
            {
                "uid": app.uid,
                "domain": app.domain,
                "httpsPort": app.https_port,
                "httpPort": app.http_port,
                "toys": list(app.toys),
            }
            for app in sim.apps
        ],
    }


def banner(event: dict[str, Any]) -> str:
    """Return the human summary of a ``simulator_ready`` event."""
    lines = [
        "Lovense simulator ready (Ctrl-C stops it)",
        f"  server API  {event['serverUrl']}  token {event['token']}",
        f"  CA file     {event['caFile']}",
    ]
    for app in event["apps"]:
        lines.append(
            f"  {app['uid']}  https://{app['domain']}:{app['httpsPort']}/command"
            f"  http port {app['httpPort']}  toys {', '.join(app['toys'])}"
        )
    lines.append(f"  state       {event['serverUrl']}/_sim/state")
    callback = event["callbackUrl"] or "none (a scan pairs but posts nothing)"
    lines.append(
        f"  callbacks   {callback}, heartbeat every {event['heartbeatS']:g} s"
        + (", strict uids (never-paired uids get 503)" if event["strictUids"] else "")
    )
    lines.append(f"  scan        lovense-worker scan CODE --simulator-url {event['serverUrl']}")
    return "\n".join(lines)


async def run(
    args: argparse.Namespace, ready: Callable[[dict[str, Any]], None] | None = None
) -> None:
    """Run a simulator from ``args`` until the task is cancelled, then close everything."""
    async with build(args) as sim:
        event = ready_event(sim)
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
        print(banner(event), file=sys.stderr, flush=True)
        if ready is not None:
            ready(event)
        await asyncio.Event().wait()


async def scan(args: argparse.Namespace) -> int:
    """Ask the simulator at ``--simulator-url`` to scan ``code``; print what happened.

    Returns 0 when the app posted its callback (or pairing needed none), 1 when
    the code was refused, 3 when the callback URL did not take the callback, 4
    when no simulator answered.
    """
    url = args.simulator_url.rstrip("/") + "/_sim/scan"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.post(url, json={"code": args.code}) as response,
        ):
            status, answer = response.status, await response.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        print(f"lovense-worker scan: no simulator answered at {url} ({exc or type(exc).__name__})",
              file=sys.stderr)
        return SCAN_UNREACHABLE
    if status == 200 and isinstance(answer, dict):
        print(_scanned(args.code, answer))
        return 0
    error = answer.get("error") if isinstance(answer, dict) else None
    if error is None:
        print(f"lovense-worker scan: {url} answered HTTP {status}, not like the simulator",
              file=sys.stderr)
        return SCAN_UNREACHABLE
    print(f"lovense-worker scan: {error}", file=sys.stderr)
    return SCAN_CALLBACK_FAILED if status == 502 else SCAN_REFUSED


def _scanned(code: str, answer: dict[str, Any]) -> str:
    uid = answer["uid"]
    if answer["callbackUrl"] is None:
        return (f"scanned {code}: {uid} is paired; the simulator has no --callback-url, "
                "so nothing was posted")
    return (f"scanned {code}: {uid}'s Lovense Remote posted its callback to "
            f"{answer['callbackUrl']} (HTTP {answer['status']})")


def main(argv: list[str] | None = None) -> None:
    """Run ``python -m worker.simulator.main``; Ctrl-C stops it cleanly."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.simulator.main", description="Run the Lovense simulator."
    )
    add_arguments(parser)
    try:
        asyncio.run(run(parser.parse_args(argv)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
