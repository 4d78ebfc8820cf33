"""``python -m bench.baseline``: the worker's job at its barest: per message decode, POST,
publish a result with confirms, ack; nothing else (bench/README.md, "Method")."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import AbstractIncomingMessage

from bench.load import BASELINE_ARGUMENTS, BASELINE_QUEUE
from worker.contract import topology

COMMAND_PATH = "/api/lan/v2/command"


async def serve(args: argparse.Namespace) -> None:
    """Consume, call the simulator, publish, ack until SIGTERM or SIGINT."""
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    url = f"{args.server_url.rstrip('/')}{COMMAND_PATH}"
    counts = {"handled": 0, "failed": 0}
    inflight: set[asyncio.Task[Any]] = set()
    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        connection = await aio_pika.connect(
            args.amqp_url, client_properties={"connection_name": "bench-baseline"})
        async with connection:
            publisher = await connection.channel(publisher_confirms=True)
            results = await publisher.get_exchange(topology.RESULTS_EXCHANGE)

            async def on_message(message: AbstractIncomingMessage) -> None:
                task = asyncio.current_task()
                assert task is not None
                inflight.add(task)
                try:
                    command = json.loads(message.body)
                    body = {"token": args.token, "uid": command["uid"],
                            "command": command["command"], "action": command["action"],
                            "timeSec": command["timeSec"], "apiVer": 1}
                    try:
                        async with session.post(url, json=body) as response:
                            answer = await response.json(content_type=None)
                        status = "ok" if answer.get("code") == 200 else "failed"
                    except (aiohttp.ClientError, TimeoutError, ValueError):
                        status = "failed"
                    counts["failed"] += status != "ok"
                    result = json.dumps({"id": message.message_id, "status": status}).encode()
                    await results.publish(aio_pika.Message(
                        result, content_type="application/json", message_id=message.message_id,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ), routing_key=f"{status}.{command['command']}")
                    await message.ack()
                    counts["handled"] += 1
                finally:
                    inflight.discard(task)

            consumer = await connection.channel()
            await consumer.set_qos(prefetch_count=args.prefetch)
            queue = await consumer.declare_queue(
                args.queue, durable=True, arguments=BASELINE_ARGUMENTS)
            tag = await queue.consume(on_message)
            _say({"event": "baseline_ready", "queue": args.queue, "prefetch": args.prefetch})
            await stopping.wait()
            await queue.cancel(tag)
            if inflight:
                await asyncio.wait(set(inflight), timeout=10)
    _say({"event": "baseline_stopped", **counts})


def _say(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    add = parser.add_argument
    add("--amqp-url", default="amqp://guest:guest@localhost:5672/")
    add("--server-url", required=True, help="the simulator's serverUrl")
    add("--token", required=True, help="the simulator's developer token")
    add("--queue", default=BASELINE_QUEUE)
    add("--prefetch", type=int, default=256)
    add("--connections", type=int, default=512, help="aiohttp connector limit (the worker's)")
    add("--timeout-s", type=float, default=5.0, help="per-call timeout (the worker's)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
