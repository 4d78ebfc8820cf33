"""Helpers the scenarios share: worker settings, /metrics, the simulator's request log.

Kept apart from :mod:`bench.throughput` so every scenario reads the worker and
the simulator the same way: the worker through its ``/metrics`` endpoint and
``/proc``, the simulator through ``GET /_sim/requests`` (run it with
``record=True``), never through the worker's internals.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import aio_pika
import aiohttp
import msgspec

from bench.load import percentile
from bench.procs import BenchError, Proc, clean_env, free_port
from bench.scenario import Options
from worker.contract import topology

SHARDS: Final = 4
PREFETCH: Final = 256
COMMAND_PATH: Final = "/api/lan/v2/command"


def worker_env(amqp_url: str, sim_event: dict[str, Any] | None, *,
               extra: dict[str, str] | None = None, opts: Options | None = None,
               log_level: str = "warning") -> dict[str, str]:
    """Return a worker's environment: this bench's broker and simulator, 4 shards, JSON logs.

    ``extra`` are the scenario's own settings; ``--worker-env`` (``opts.worker_env``)
    wins over them. Without a simulator the server API points at a closed port.
    """
    env = {
        "LOVENSE_AMQP_URL": amqp_url,
        "LOVENSE_API_BASE": sim_event["serverUrl"] if sim_event else "http://127.0.0.1:9",
        "LOVENSE_DEVELOPER_TOKEN": sim_event["token"] if sim_event else "bench-no-server",
        "LOVENSE_SHARDS": str(SHARDS),
        "LOVENSE_PREFETCH": str(PREFETCH),
        "LOVENSE_METRICS_PORT": str(free_port()),
        "LOVENSE_METRICS_HOST": "127.0.0.1",
        "LOVENSE_LOG_LEVEL": log_level,
        "LOVENSE_LOG_FORMAT": "json",
        **(extra or {}),
        **dict(opts.worker_env if opts else ()),
    }
    return clean_env(env)


def recorded_env(env: dict[str, str]) -> dict[str, str]:
    """Return a worker's LOVENSE_* settings as results.json records them (no secrets)."""
    hidden = {"LOVENSE_DEVELOPER_TOKEN": "(random)", "LOVENSE_UTOKEN_SECRET": "(random)",
              "LOVENSE_METRICS_PORT": "(a free port)", "LOVENSE_API_BASE": "(simulator)"}
    out = {}
    for key, value in env.items():
        if not key.startswith("LOVENSE_"):
            continue
        if key == "LOVENSE_AMQP_URL":
            value = re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", value)
        out[key] = hidden.get(key, value)
    return out


async def check_delay(server_url: str, delay_ms: int) -> None:
    """Make sure the simulator really answers after ``delay_ms`` (its state says so)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server_url}/_sim/state") as response:
            state = await response.json()
    actual = state.get("faults", {}).get("delay_ms")
    if actual != delay_ms:
        raise BenchError(f"simulator: asked for --delay-ms {delay_ms}, its state says {actual}")


# ---------------------------------------------------------------------- /metrics


async def scrape(proc: Proc) -> str:
    """Return the worker's /metrics text ("" when it does not answer)."""
    url = f"http://127.0.0.1:{proc.metrics_port}/metrics"
    try:
        async with aiohttp.ClientSession() as session, session.get(
            url, timeout=aiohttp.ClientTimeout(total=10)
        ) as response:
            return await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return ""


def metric(text: str, name: str, **labels: str) -> float | None:
    """Return the sum of a metric's samples whose labels include ``labels`` (None: absent)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
            seen = True
    return total if seen else None


def histogram(text: str, name: str) -> dict[str, Any]:
    """Return a histogram's cumulative buckets {le: count}, count and sum (all label sets)."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = re.search(r'le="([^"]+)"', line)
            if le:
                bound = float("inf") if le[1] == "+Inf" else float(le[1])
                buckets[bound] = buckets.get(bound, 0.0) + float(line.rpartition(" ")[2])
    count = metric(text, f"{name}_count") or 0.0
    total = metric(text, f"{name}_sum") or 0.0
    return {"buckets": {("+Inf" if k == float("inf") else k): int(v)
                        for k, v in sorted(buckets.items())},
            "count": int(count), "sum_s": round(total, 3)}


def histogram_share_within(hist: dict[str, Any], bound_s: float) -> float | None:
    """Return the share of a histogram's observations at or below ``bound_s`` (a bucket bound)."""
    count = hist["count"]
    within = hist["buckets"].get(bound_s)
    return None if not count or within is None else round(within / count, 4)


# ---------------------------------------------------------------------- simulator log


class SimRequest(msgspec.Struct):
    """One request the simulator recorded (headers are not decoded)."""

    side: str
    path: str
    body: Any
    received_ms: int
    status: int


_requests_decoder: Final = msgspec.json.Decoder(list[SimRequest])


async def sim_requests(server_url: str) -> list[SimRequest]:
    """Return every request the simulator recorded, in the order it handled them."""
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(f"{server_url}/_sim/requests") as response:
            raw = await response.read()
    return _requests_decoder.decode(raw)


async def sim_clear(server_url: str) -> None:
    """Make the simulator forget the requests it recorded."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server_url}/_sim/clear", data=b"") as response:
            response.raise_for_status()


def server_calls(requests: Iterable[SimRequest]) -> list[tuple[int, SimRequest, list[str]]]:
    """Return (position in the log, request, its uids) of every server-API command call."""
    calls = []
    for index, request in enumerate(requests):
        if request.side == "server" and request.path == COMMAND_PATH and isinstance(
            request.body, dict
        ):
            uid = request.body.get("uid")
            calls.append((index, request, uid.split(",") if isinstance(uid, str) else []))
    return calls


# ---------------------------------------------------------------------- broker


async def prepare_stop_lane(url: str) -> None:
    """Purge the Stop lane's queue (if declared yet), refusing when someone consumes it."""
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench-prep"})
    async with connection:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(topology.STOP_QUEUE, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return  # not declared yet: the worker declares it
        consumers = queue.declaration_result.consumer_count
        if consumers:
            raise BenchError(f"{topology.STOP_QUEUE} already has {consumers} consumer(s): "
                             "another worker runs on this vhost; stop it and run again")
        await queue.purge()


# ---------------------------------------------------------------------- waiting, figures


async def wait_until(done: Callable[[], bool], timeout: float,
                     watch: Callable[[], str | None], poll_s: float = 0.2) -> str | None:
    """Poll ``done`` until true; return why not (timeout, or ``watch``'s reason) or None."""
    deadline = time.monotonic() + timeout
    while not done():
        problem = watch()
        if problem is not None:
            return problem
        if time.monotonic() >= deadline:
            return "timed out"
        await asyncio.sleep(poll_s)
    return None


def watcher(*procs: Proc) -> Callable[[], str | None]:
    """Return a watch function that reports the first of ``procs`` that exited."""
    def watch() -> str | None:
        for proc in procs:
            if not proc.alive:
                return f"{proc.name} exited with code {proc.process.returncode}"
        return None
    return watch


def quantiles(values: Iterable[float]) -> dict[str, float | None]:
    """Return p50, p99 and max (nearest rank) of ``values``, rounded to 0.1."""
    ordered = sorted(values)

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {"p50": r(percentile(ordered, 0.5)), "p99": r(percentile(ordered, 0.99)),
            "max": r(ordered[-1] if ordered else None), "n": len(ordered)}


def fmt(value: Any, spec: str = "") -> str:
    """Format a figure, '-' when it is missing."""
    return "-" if value is None else format(value, spec)


def verdict(met: bool | None) -> str:
    """Return MET / NOT MET / NOT MEASURED."""
    return "NOT MEASURED" if met is None else ("MET" if met else "NOT MET")
