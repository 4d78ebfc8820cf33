"""The baseline: the honest minimal version of the worker's job, to compare the worker with.

``python -m bench.baseline --server-url URL --token T`` consumes its own durable
quorum queue with one prefetch window and, per message: json-decodes it, POSTs
the same server API body the worker would send with one shared aiohttp
session, publishes a result ``{id, status}`` to ``lovense.results`` with
publisher confirms, then acks. No validation, no metrics, no logging, no
retries: whatever the worker costs beyond this is what its features cost.

It prints one JSON line on stdout once it consumes (``"event":
"baseline_ready"``) and stops cleanly on SIGTERM or SIGINT (in-flight messages
finish or go back to the queue), printing ``"event": "baseline_stopped"``.
"""

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
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from bench.load import BASELINE_ARGUMENTS, BASELINE_QUEUE
from worker.contract import topology

COMMAND_PATH = "/api/lan/v2/command"


class Baseline:
    """Consume, call the simulator, publish, ack: nothing else."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = f"{args.server_url.rstrip('/')}{COMMAND_PATH}"
        self.handled = 0
        self.failed = 0
        self.inflight: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._results: AbstractExchange | None = None

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None and self._session is not None and self._results is not None
        self.inflight.add(task)
        try:
            command = json.loads(message.body)
            body = {
                "token": self.args.token,
                "uid": command["uid"],
                "command": command["command"],
                "action": command["action"],
                "timeSec": command["timeSec"],
                "apiVer": 1,
            }
            try:
                async with self._session.post(self.url, json=body) as response:
                    answer = await response.json(content_type=None)
                status = "ok" if answer.get("code") == 200 else "failed"
            except (aiohttp.ClientError, TimeoutError, ValueError):
                status = "failed"
            self.failed += status != "ok"
            result = json.dumps({"id": message.message_id, "status": status}).encode()
            await self._results.publish(
                aio_pika.Message(
                    result, content_type="application/json", message_id=message.message_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=f"{status}.{command['command']}",
            )
            await message.ack()
            self.handled += 1
        finally:
            self.inflight.discard(task)

    async def run(self, stopping: asyncio.Event) -> None:
        connector = aiohttp.TCPConnector(limit=self.args.connections)
        timeout = aiohttp.ClientTimeout(total=self.args.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._session = session
            connection = await aio_pika.connect(
                self.args.amqp_url, client_properties={"connection_name": "bench-baseline"}
            )
            async with connection:
                publisher = await connection.channel(publisher_confirms=True)
                self._results = await publisher.get_exchange(topology.RESULTS_EXCHANGE)
                consumer = await connection.channel()
                await consumer.set_qos(prefetch_count=self.args.prefetch)
                queue = await consumer.declare_queue(
                    self.args.queue, durable=True, arguments=BASELINE_ARGUMENTS
                )
                tag = await queue.consume(self.on_message)
                _say({"event": "baseline_ready", "queue": self.args.queue,
                      "prefetch": self.args.prefetch})
                await stopping.wait()
                await queue.cancel(tag)
                if self.inflight:
                    await asyncio.wait(set(self.inflight), timeout=10)
        _say({"event": "baseline_stopped", "handled": self.handled, "failed": self.failed})


def _say(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@localhost:5672/")
    parser.add_argument("--server-url", required=True, help="the simulator's serverUrl")
    parser.add_argument("--token", required=True, help="the simulator's developer token")
    parser.add_argument("--queue", default=BASELINE_QUEUE)
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--connections", type=int, default=512,
                        help="aiohttp connector limit (the worker's default pool size)")
    parser.add_argument("--timeout-s", type=float, default=5.0,
                        help="per-call timeout (the worker's default server timeout)")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await Baseline(args).run(stopping)


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parse(argv)))


if __name__ == "__main__":
    main()
