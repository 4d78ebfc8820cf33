"""Scenarios ``callbacks`` (POSTs/s through ``lovense-worker callbacks`` against a bare aiohttp
handler, ``python -m bench.callbacks URL PORT``) and ``heartbeats`` (the paired users' callbacks
through two workers: the CPU share it costs them); bench/README.md."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import time
from collections import Counter
from typing import Any, Final

import aio_pika
import aiohttp
from aiohttp import web

from bench import load
from bench.fastpub import FastPublisher
from bench.figures import check_lines, fmt, mb, metric, per_unit, quantiles, recorded_env, render
from bench.harness import Harness, Outcome
from bench.procs import BenchError, Proc, broker_pid, cpu_meter, free_port
from bench.registry import LAN_ALLOW, callback_body, reset_streams
from worker.config import Settings
from worker.contract import topology

POSTS: Final = (20_000, 2_000)  # full size, --quick
CONCURRENCY: Final = 64
ROUNDS: Final = 5
TARGET_RATIO: Final = 0.8
SUBJECTS: Final = ("baseline", "endpoint")
PATH: Final = "/lovense/callback"
_CPU: Final = ("cpu", "broker_cpu", "bench_cpu", "others_cpu")
_HEAD: Final = "round  subject  POST/s  p50 ms  p99 ms  max ms  non-200  queued | CPU ms/POST: " \
               "self rabbit bench other busy"
USERS: Final = (100_000, 10_000)
PERIOD_S: Final = 60.0  # each user's app posts once a minute
IDLE_S: Final = (15.0, 5.0)  # the measured windows: idle, then heartbeats
WINDOW_S: Final = (60.0, 20.0)


async def callbacks_queue(url: str, ttl_s: int) -> int:
    """Declare ``lovense.callbacks`` (exchange, queue, log bound) as a worker does, refusing a
    consumed queue; return how many messages the queue held, and purge it."""
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench-prep"})
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            topology.CALLBACKS_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
        for name, arguments in ((topology.CALLBACKS_LOG, topology.callbacks_log_arguments(ttl_s)),
                                (topology.CALLBACKS_QUEUE, topology.shard_arguments())):
            queue = await channel.declare_queue(name, durable=True, arguments=arguments)
            await queue.bind(exchange)
        if consumers := queue.declaration_result.consumer_count:
            raise BenchError(f"{queue.name} has {consumers} consumer(s): a worker runs on this "
                             "vhost; stop it and run again")
        await queue.purge()
        return queue.declaration_result.message_count or 0


async def _post_all(url: str, bodies: list[bytes]) -> dict[str, Any]:
    """POST every body over CONCURRENCY keep-alive connections, each from its own address (as
    an ingress forwards them); return the run's rate, latencies and statuses."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    todo = iter(range(len(bodies)))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def client() -> None:
            for i in todo:
                headers = {"Content-Type": "application/json",
                           "X-Forwarded-For": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"}
                began = time.perf_counter()
                try:
                    async with session.post(url, data=bodies[i], headers=headers) as response:
                        await response.read()
                        statuses[response.status] += 1
                except (aiohttp.ClientError, TimeoutError):
                    statuses[0] += 1
                latencies.append((time.perf_counter() - began) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        seconds = time.perf_counter() - began
    return {"posts": len(bodies), "seconds": round(seconds, 3),
            "posts_per_s": round(len(bodies) / seconds, 1), "latency_ms": quantiles(latencies),
            "by_status": {str(k): v for k, v in sorted(statuses.items())},
            "non_200": sum(v for k, v in statuses.items() if k != 200)}


async def _one(h: Harness, child: Proc, url: str, bodies: list[bytes], ttl_s: int
               ) -> dict[str, Any]:
    await callbacks_queue(h.opts.amqp_url, ttl_s)
    stop = cpu_meter({"": child.pid, "broker": broker_pid()})
    row = await _post_all(url, bodies)
    cpu = stop()
    row["queued"] = await callbacks_queue(h.opts.amqp_url, ttl_s)
    row["machine_busy_share"] = round(cpu.pop("machine_busy_share") or 0.0, 3)
    row |= {f"{k}{'_' if k else ''}cpu_ms_per_post": per_unit(v, len(bodies))
            for k, v in cpu.items()}
    row["ok"] = row["non_200"] == 0 and row["queued"] == len(bodies) and child.alive
    return row


def _ratio(base: dict[str, Any], work: dict[str, Any]) -> float | None:
    ok = base["ok"] and work["ok"]
    return round(work["posts_per_s"] / base["posts_per_s"], 3) if ok else None


def _line(label: str, subject: str, row: dict[str, Any]) -> str:
    lat, cpus = row["latency_ms"], " ".join(fmt(row[f"{k}_ms_per_post"], ".3f") for k in _CPU)
    return (f"{label:>5}  {subject:<8} {row['posts_per_s']:>6.0f} {fmt(lat['p50'], '.1f'):>7} "
            f"{fmt(lat['p99'], '.1f'):>7} {fmt(lat['max'], '.1f'):>7} {row['non_200']:>8} "
            f"{row['queued']:>7} | {cpus} {row['machine_busy_share']:.0%}")


async def run(h: Harness) -> Outcome:
    """Start the endpoint and the baseline once; POST the same callbacks to each in turn."""
    posts, repeat, secret = h.opts.size(*POSTS), h.opts.rounds_or(ROUNDS), secrets.token_hex()
    port, base_port = free_port(), free_port()
    env = h.worker_env(None, extra={
        "LOVENSE_UTOKEN_SECRET": secret, "LOVENSE_CALLBACK_HOST": "127.0.0.1",
        "LOVENSE_CALLBACK_PORT": str(port), "LOVENSE_CALLBACK_RATE": "1000000",
        "LOVENSE_CALLBACK_TRUSTED_PROXIES": "127.0.0.1/32"})
    ttl_s = Settings.from_env(env).lan_ttl_s
    await reset_streams(h.opts.amqp_url, redeclare=ttl_s)
    await callbacks_queue(h.opts.amqp_url, ttl_s)
    bodies = [callback_body(i, secret.encode()) for i in range(posts)]
    children = {"endpoint": await h.worker("callbacks-endpoint", env, command="callbacks"),
                "baseline": await h.start("callbacks-baseline", [
                    sys.executable, "-m", "bench.callbacks", h.opts.amqp_url, str(base_port)])}
    await children["baseline"].ready_line("baseline_ready")
    urls = {"endpoint": f"http://127.0.0.1:{port}{PATH}",
            "baseline": f"http://127.0.0.1:{base_port}{PATH}"}
    for subject in SUBJECTS:  # warm-up: connections, first allocations
        await _post_all(urls[subject], bodies[: CONCURRENCY * 4])
    print(f"  {posts} POSTs per run, {CONCURRENCY} connections\n{_HEAD}", flush=True)
    rounds: list[dict[str, Any]] = []
    for index in range(repeat):
        pair = {s: await _one(h, children[s], urls[s], bodies, ttl_s) for s in SUBJECTS}
        rounds.append({**pair, "ratio": _ratio(pair["baseline"], pair["endpoint"])})
        print("\n".join(_line(str(index + 1), s, pair[s]) for s in SUBJECTS), flush=True)
    codes = {s: await h.stop(child) for s, child in children.items()}
    await callbacks_queue(h.opts.amqp_url, ttl_s)
    await reset_streams(h.opts.amqp_url, redeclare=None)
    median = {s: sorted((r[s] for r in rounds), key=lambda row: float(row["posts_per_s"]))[
        (repeat - 1) // 2] for s in SUBJECTS}
    ratio = _ratio(median["baseline"], median["endpoint"])
    data: dict[str, Any] = {
        "posts": posts, "concurrency": CONCURRENCY, "repeat": repeat, "order": "both started "
        "once; per round baseline then endpoint, same callbacks (figures: median round)",
        "load": "aiohttp client in the bench process, keep-alive; X-Forwarded-For: a distinct "
        "10.x.y.z per callback (127.0.0.1 trusted as the ingress), so per-source limits stay "
        "default; LOVENSE_CALLBACK_RATE raised to 1,000,000", "worker_env": recorded_env(env),
        "baseline": {**median["baseline"], "what": "aiohttp handler: read body, publish "
                     "persistent to lovense.callbacks with confirm (one channel), 200"},
        "endpoint": median["endpoint"], "ratio": ratio,
        "round_ratios": [r["ratio"] for r in rounds], "rounds": rounds, "exit_codes": codes,
        "checks": {"every POST 200 and queued, every round": all(r[s]["ok"] for r in rounds
                                                                 for s in SUBJECTS),
                   "both exited 0": all(code == 0 for code in codes.values())},
        "target": {"what": f"endpoint/baseline POSTs/s >= {TARGET_RATIO}", "ratio": ratio,
                   "met": ratio is not None and ratio >= TARGET_RATIO}}
    lines = [_HEAD, *(_line("med", s, data[s]) for s in SUBJECTS), *render(
        data, "ratio endpoint/baseline {ratio} (per round: {round_ratios}); target "
        "{target[what]} -> {target[met]!v}")]
    return Outcome("callbacks", data, "\n".join(lines + check_lines(data)),
                   all(data["checks"].values()))


async def _counts(workers: dict[str, Proc]) -> dict[str, tuple[int, int]]:
    """Return each worker's (registry users, callbacks it validated)."""
    texts = {name: await w.metrics() for name, w in workers.items()}
    return {name: (int(metric(t, "lovense_worker_registry_users") or 0),
                   int(metric(t, "lovense_worker_callbacks_total", outcome="accepted") or 0))
            for name, t in texts.items()}


async def run_heartbeats(h: Harness) -> Outcome:
    """Pre-pair the users, start A then B, meter them idle, then under the heartbeats."""
    users, quick = h.opts.size(*USERS), int(h.opts.quick)
    idle_s, window_s, rate = IDLE_S[quick], WINDOW_S[quick], users / PERIOD_S
    secret = secrets.token_hex().encode()
    env = h.worker_env(None, extra={"LOVENSE_LAN_ALLOW": LAN_ALLOW,
                                    "LOVENSE_UTOKEN_SECRET": secret.decode()})
    ttl_s = Settings.from_env(env).lan_ttl_s
    await reset_streams(h.opts.amqp_url, redeclare=ttl_s)
    await callbacks_queue(h.opts.amqp_url, ttl_s)
    bodies = [callback_body(i, secret) for i in range(users)]
    async with FastPublisher(h.opts.amqp_url, name="bench-heartbeats") as publisher:
        await publisher.publish((topology.CALLBACKS_LOG, body, None) for body in bodies)
        await publisher.wait_confirmed(timeout=600)
    # A starts first, so it holds the validating queue's single active consumer.
    workers = {name: await h.worker(f"heartbeats-{name}", {
        **env, "LOVENSE_METRICS_PORT": str(free_port())}, ready_timeout=300) for name in "AB"}
    pids = {name: w.pid for name, w in workers.items()} | {"broker": broker_pid()}
    stop, began = cpu_meter(pids), time.monotonic()
    await asyncio.sleep(idle_s)
    idle, idle_wall, at_start = stop(), time.monotonic() - began, await _counts(workers)
    # One callback a second pairs a new user: once a follower counts them all, it has applied
    # every heartbeat before them (the log is in order).
    count, every = round(rate * window_s), max(1, round(rate))
    routes = [(str(n), "", callback_body(users + n // every, secret) if n % every == every - 1
               else bodies[n % users]) for n in range(count)]
    expected, stop, began = users + count // every, cpu_meter(pids), time.monotonic()
    async with FastPublisher(h.opts.amqp_url, name="bench-heartbeats") as publisher:
        pacing = await load.publish_paced(publisher, topology.CALLBACKS_EXCHANGE, routes, rate,
                                          load.Collector())
    # Metered until both followers applied everything; the validator is waited for after.
    published, caught_up, busy, wall = time.monotonic(), dict[str, float](), None, 0.0
    while len(caught_up) < 3 and time.monotonic() < published + 120:
        counts = await _counts(workers)
        done = {name: registry >= expected for name, (registry, _) in counts.items()}
        done["validator"] = sum(counts[n][1] - at_start[n][1] for n in workers) >= count
        caught_up |= {n: round(time.monotonic() - published, 2) for n, ok in done.items()
                      if ok and n not in caught_up}
        if busy is None and "A" in caught_up and "B" in caught_up:
            busy, wall = stop(), time.monotonic() - began
        await asyncio.sleep(0.1)
    busy, wall = (stop(), time.monotonic() - began) if busy is None else (busy, wall)
    at_end, memory = await _counts(workers), {n: mb(w.memory_kb()) for n, w in workers.items()}
    codes = {name: await h.stop(w) for name, w in workers.items()}
    left = await callbacks_queue(h.opts.amqp_url, ttl_s)  # purged: unvalidated at the end
    await reset_streams(h.opts.amqp_url, redeclare=None)
    per_worker: dict[str, dict[str, Any]] = {}
    for name in workers:  # alive throughout: their CPU readings are never None
        idle_cpu, load_cpu = idle[name] or 0.0, busy[name] or 0.0
        per_worker[name] = {
            "idle_cpu_pct": round(idle_cpu * 100 / idle_wall, 1),
            "load_cpu_pct": round(load_cpu * 100 / wall, 1),
            "cost_pct": round((load_cpu / wall - idle_cpu / idle_wall) * 100, 1),
            "cpu_us_per_callback": round((load_cpu - idle_cpu * wall / idle_wall) * 1e6 / count),
            "validated": at_end[name][1] - at_start[name][1], "users": at_end[name][0],
            "caught_up_s": caught_up.get(name), "rss_mb": memory[name].get("VmRSS"),
            "exit_code": codes[name]}
    validated = sum(row["validated"] for row in per_worker.values())
    data: dict[str, Any] = {
        "users": users, "period_s": PERIOD_S, "window_s": window_s, "idle_s": idle_s,
        "callbacks": count, "new_users": expected - users, "paired": "before the workers "
        "started: every user's callback straight to the log stream (FastPublisher); A and B "
        "replayed it at start-up", "published": "FastPublisher, paced, to the lovense.callbacks "
        "exchange (its queue: A validates; its log: A and B follow), not through HTTP",
        "pacing": pacing, "worker_env": recorded_env(env), "measured_s": round(wall, 1),
        "workers": per_worker, "validated": validated, "left_in_queue": left,
        "validator_caught_up_s": caught_up.get("validator"),
        **{f"{k}_cpu_pct": round((busy[k] or 0.0) * 100 / wall, 1) for k in ("broker", "bench")},
        "machine_busy_share": round(busy["machine_busy_share"] or 0.0, 3),
        "checks": {"both followers applied every callback": "A" in caught_up and "B" in caught_up,
                   "every callback validated once": validated == count,
                   "workers exited 0": all(code == 0 for code in codes.values())},
        "target": {"what": "none (issue 12: state the CPU share)", "met": None}}
    lines = render(data, "{users} paired users, one callback a minute each: {callbacks} "
                   "callbacks at {pacing[rate_per_s]}/s over {pacing[span_s]} s (worst lag "
                   "{pacing[worst_lag_ms]} ms); RabbitMQ {broker_cpu_pct}% of a core, machine "
                   "busy {machine_busy_share:.0%}", "validator: {validated} of {callbacks} "
                   "validated, all {validator_caught_up_s} s after the last publish; "
                   "{left_in_queue} left in lovense.callbacks")
    for name, role in (("A", "validates + follows"), ("B", "follows only")):
        lines += render(per_worker[name], f"worker {name} ({role}): CPU idle {{idle_cpu_pct}}% "
                        "of a core, under heartbeats {load_cpu_pct}% -> costs {cost_pct}% "
                        "({cpu_us_per_callback} µs/callback); every callback applied "
                        "{caught_up_s} s after the last publish; {users} users, RSS {rss_mb} MB")
    return Outcome("heartbeats", data, "\n".join(lines + check_lines(data)),
                   all(data["checks"].values()))


async def _serve_baseline(amqp_url: str, port: int) -> None:
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    connection = await aio_pika.connect(
        amqp_url, client_properties={"connection_name": "bench-callback-baseline"})
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.CALLBACKS_EXCHANGE)

        async def post(request: web.Request) -> web.Response:
            await exchange.publish(aio_pika.Message(
                await request.read(), content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key="")
            return web.Response(body=b'{"status":"ok"}', content_type="application/json")

        app = web.Application()
        app.router.add_post(PATH, post)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print('{"event": "baseline_ready"}', flush=True)
        await stopping.wait()
        await runner.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_baseline(sys.argv[1], int(sys.argv[2])))
