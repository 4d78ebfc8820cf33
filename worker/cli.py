"""The ``lovense-worker`` command: ``run``, ``callbacks``, ``simulate``, ``scan``, ``publish``
and ``requeue-dead``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

import msgspec
from opentelemetry import context as otel_context

from worker import logs, tracing
from worker.config import VARIABLES, Settings
from worker.contract import topology
from worker.contract.errors import ConfigError

#: The settings ``run`` takes as flags: ``--amqp-url`` overrides LOVENSE_AMQP_URL, and so on.
_RUN_FLAGS: tuple[str, ...] = (
    "amqp_url", "api_base", "platform", "lan_allow", "lan_ca_file", "shards", "prefetch",
    "metrics_port", "log_format", "log_level",
)
#: The settings ``callbacks`` takes as flags.
_CALLBACK_FLAGS: tuple[str, ...] = (
    "amqp_url", "callback_host", "callback_port", "callback_path", "metrics_port",
    "log_format", "log_level",
)


def _parser() -> argparse.ArgumentParser:
    from worker.simulator import main as simulator_main

    parser = argparse.ArgumentParser(
        prog="lovense-worker",
        description="Drive Lovense toys from RabbitMQ: consume commands, call Lovense, "
        "publish one result per command.",
    )
    sub = parser.add_subparsers(dest="subcommand", required=True)

    run = sub.add_parser(
        "run", help="run the worker",
        description="Run the worker. Settings come from LOVENSE_* variables (see the README); "
        "these flags override them.",
    )
    for attr in _RUN_FLAGS:
        env = VARIABLES[attr]
        run.add_argument("--" + attr.replace("_", "-"), default=None, metavar=env,
                         help=f"overrides {env}")
    run.add_argument(
        "--simulator", action="store_true",
        help="start the built-in Lovense simulator in this process and use it "
        "(what `make run` does without a developer token)",
    )

    callbacks = sub.add_parser(
        "callbacks", help="serve the callback URL the Lovense Remote app posts to",
        description="Serve the callback URL entered in the Lovense developer dashboard: "
        "gate each POST (rate limits, size, shape, utoken) and publish what passes to "
        "lovense.callbacks with a confirm. Settings come from LOVENSE_* variables; these "
        "flags override them.",
    )
    for attr in _CALLBACK_FLAGS:
        env = VARIABLES[attr]
        callbacks.add_argument("--" + attr.replace("_", "-"), default=None, metavar=env,
                               help=f"overrides {env}")

    simulate = sub.add_parser(
        "simulate", help="run the Lovense simulator (server API and Remote apps)",
        description="Run fakes of the Lovense server API and of Lovense Remote apps on loopback.",
    )
    simulator_main.add_arguments(simulate)

    scan = sub.add_parser(
        "scan", help="scan a QR code in a running simulator, as Lovense Remote would",
        description="Ask a running simulator to scan CODE (from a GetQrCode result): the app of "
        "its uid posts its callback to the simulator's --callback-url. Exits 0 when it did, 1 "
        "when the code is unknown or older than 4 hours, 3 when the callback URL did not take "
        "the callback, 4 when no simulator answers.",
    )
    simulator_main.add_scan_arguments(scan)

    publish = sub.add_parser(
        "publish", help="publish one command from a shell",
        description="Publish one command message, persistent, with x-lovense-published-ms and "
        "a message_id: a Stop (Stop, or Function with action Stop) to the Stop lane, "
        "lovense.stop; any other command to lovense.commands. With --wait, print its result "
        "and exit 0 when its status is ok, 1 when not, 3 on timeout (2: not JSON).",
    )
    publish.add_argument(
        "command",
        help='the command as JSON, e.g. \'{"command": "Function", "uid": "sim-user-1", '
        '"action": "Vibrate:5", "timeSec": 3}\' (- reads stdin)',
    )
    publish.add_argument("--amqp-url", default=None, metavar="LOVENSE_AMQP_URL")
    publish.add_argument(
        "--traceparent", default=os.environ.get("TRACEPARENT"), metavar="TRACEPARENT",
        help="W3C trace context the command continues (default: $TRACEPARENT, as otel-cli "
        "and CI tracers set it); the worker's spans join that trace")
    publish.add_argument("--routing-key", default=None,
                         help="default: the command's uid; for uids, the message id")
    publish.add_argument("--wait", action="store_true", help="wait for the result and print it")
    publish.add_argument("--timeout", type=float, default=15.0, help="seconds to wait (15)")
    requeue = sub.add_parser(
        "requeue-dead", help="send dead letters back to where they came from",
        description="Republish messages from lovense.dead (all, or those whose x-lovense-error "
        "contains --match) to the exchange they first came through, once their cause is fixed.",
    )
    requeue.add_argument("--amqp-url", default=None, metavar="LOVENSE_AMQP_URL")
    requeue.add_argument("--match", default=None, help="only errors containing this text")
    requeue.add_argument("--limit", type=int, default=None, help="at most this many")
    requeue.add_argument("--dry-run", action="store_true", help="count, change nothing")
    return parser


async def _requeue_dead(args: argparse.Namespace) -> int:
    from worker.adapters.amqp.dead_letters import requeue_dead

    done = await requeue_dead(_amqp_url(args), args.match, args.limit, args.dry_run)
    verb = "would requeue" if args.dry_run else "requeued"
    print(f"{verb} {done.requeued}, left {done.kept} in {topology.DEAD_QUEUE}")
    return 0


def _amqp_url(args: argparse.Namespace) -> str:
    """Return ``--amqp-url``, else LOVENSE_AMQP_URL, else its default, checked like ``run``'s.

    Logs (a node of the list that did not answer, a reconnect) go to stderr as ``run``'s
    do, so stdout keeps only the command's answer.
    """
    env = VARIABLES["amqp_url"]
    settings = Settings.from_env(overrides={env: args.amqp_url or None},
                                 only={env, VARIABLES["log_format"], VARIABLES["log_level"]})
    _configure_logs(settings)
    return settings.amqp_url


def _settings(args: argparse.Namespace, extra: dict[str, str] | None = None,
              defaults: dict[str, str] | None = None) -> Settings:
    overrides: dict[str, str | None] = {VARIABLES[attr]: getattr(args, attr) for attr in _RUN_FLAGS}
    overrides.update(extra or {})
    return Settings.from_env(overrides=overrides, defaults=defaults)


async def _callbacks(args: argparse.Namespace) -> int:
    from worker.endpoint import serve_callbacks, settings_from_env

    settings = settings_from_env(
        overrides={VARIABLES[attr]: getattr(args, attr) for attr in _CALLBACK_FLAGS})
    _configure_logs(settings)
    return await serve_callbacks(settings)


async def _run(args: argparse.Namespace) -> int:
    from worker.app import serve

    if not args.simulator:
        settings = _settings(args)
        _configure_logs(settings)
        return await serve(settings)
    from worker import simulated

    return await simulated.run(
        lambda extra, defaults: _settings(args, dict(extra), dict(defaults)), _configure_logs)


def _configure_logs(settings: Settings) -> None:
    from urllib.parse import unquote, urlsplit

    # The password as written in each URL of the list (maybe percent-encoded) and as sent.
    written = {urlsplit(node.url).password or "" for node in settings.brokers.nodes}
    passwords = sorted(written | {unquote(password) for password in written})
    logs.configure(
        settings.log_format, settings.log_level,
        secrets=(settings.developer_token.reveal(), settings.utoken_secret.reveal(),
                 *passwords),
        utoken_hex=bool(settings.utoken_secret),
        trace_ids=tracing.wanted(os.environ),
    )


async def _simulate(args: argparse.Namespace) -> int:
    from worker.simulator import main as simulator_main

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await simulator_main.run(args)
    return 0


async def _scan(args: argparse.Namespace) -> int:
    from worker.simulator import main as simulator_main

    return await simulator_main.scan(args)


async def _publish(args: argparse.Namespace) -> int:
    from worker.adapters.amqp.producer import Producer

    raw = sys.stdin.buffer.read() if args.command == "-" else args.command.encode()
    try:
        msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        print(f"lovense-worker publish: the command is not valid JSON ({exc})", file=sys.stderr)
        return 2
    if args.traceparent:
        # The producer injects the current context: this one, when it is valid trace context.
        otel_context.attach(tracing.extract({tracing.TRACEPARENT: args.traceparent,
                                             tracing.TRACESTATE: os.environ.get("TRACESTATE")}))
    async with Producer(_amqp_url(args)) as producer:
        if not args.wait:
            ident = await producer.publish(raw, routing_key=args.routing_key)
            print(ident)
            return 0
        try:
            result = await producer.call(raw, timeout=args.timeout, routing_key=args.routing_key)
        except TimeoutError:
            print(f"lovense-worker publish: no result within {args.timeout} s "
                  "(is a worker running?)", file=sys.stderr)
            return 3
    print(msgspec.json.format(msgspec.json.encode(result)).decode())
    return 0 if result.status == "ok" else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    args = _parser().parse_args(argv)
    handlers = {"run": _run, "callbacks": _callbacks, "simulate": _simulate, "scan": _scan,
                "publish": _publish, "requeue-dead": _requeue_dead}
    try:
        return asyncio.run(handlers[args.subcommand](args))
    except ConfigError as exc:
        print(f"lovense-worker: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
