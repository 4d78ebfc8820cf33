"""The ``simulate`` command: run the simulator in the foreground until cancelled.

The first line on stdout is one JSON object (``"event": "simulator_ready"``)
naming every address, for scripts and benchmarks; a banner for people goes to
stderr; with ``--quiet`` off, one line per toy change follows on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from worker.simulator import SIMULATOR_TOKEN, AppSpec, Simulator

DEFAULT_SERVER_PORT = 8788


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
