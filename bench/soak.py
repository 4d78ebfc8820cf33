"""Scenario ``soak``: steady mixed traffic at half the measured capacity for 30 minutes (6 with
``--quick``), the worker's AMQP connections closed by the broker every 5 minutes (every
minute); RSS, descriptors, asyncio tasks, metric series and p99 sampled every 10 s, and their
least-squares slopes (bench/README.md). Not run by default: ``--scenario soak``."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import os
import random
import secrets
import sys
import time
from array import array
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import msgspec

from bench import load
from bench.callbacks import callbacks_queue
from bench.fastpub import FastConsumer, FastPublisher, Message
from bench.figures import (
    check_lines,
    fmt,
    metric,
    percentile,
    quantiles,
    recorded_env,
    render,
    rounded,
)
from bench.harness import Harness, Outcome, Simulator
from bench.procs import BenchError, Proc, wait_until, watcher
from bench.registry import callback_body, reset_streams
from worker.config import Settings
from worker.contract import topology


@dataclass(frozen=True)
class Plan:
    """How long the soak runs, how often the broker closes the worker's connections, from
    when slopes are fitted, and how many commands measure the capacity."""

    duration_s: float
    close_every_s: float
    slope_from_s: float
    probe: int


FULL: Final = Plan(1800, 300, 300, 6_000)
QUICK: Final = Plan(360, 60, 120, 2_000)
SAMPLE_S: Final = 10.0
DELAY_MS: Final = 50
APPS: Final = 8  # simulated Remote apps (sim-user-1..8), paired through callbacks
SERVER_USERS: Final = 20_000
LAN_USERS: Final = 5_000
GROUP: Final = 20  # users per multi-user Function
HEARTBEAT_USERS: Final = 1_000  # LAN users re-posting their callback once a minute
APP_HEARTBEAT_S: Final = 10.0
TTL_MS: Final = 60_000
TARGET_GROWTH_PCT: Final = 5.0
#: The memory of finished ids is a bounded cache (default 100,000 ids, ~60 MB full): at
#: half capacity it would still be filling when the slopes start. The soak looks for creep,
#: not for a cache filling, so it keeps 20,000 (full within ~4 minutes at >= 85 cmd/s);
#: the samples show it full (`recent_ids`).
RECENT_IDS: Final = 20_000
SEED: Final = 20260514
#: The mix: kind -> weight (of 100). Callbacks come on top, at their own rate.
MIX: Final = {"server": 55, "multi": 5, "lan": 15, "paired": 5, "toys": 5, "qr": 5, "stop": 10}
#: The capacity probe leaves out what depends on earlier traffic (Stops of commanded users,
#: the 8 paired apps' own uids: their per-uid LAN budget would pace the burst).
PROBE_KINDS: Final = ("server", "multi", "lan", "toys", "qr")
FIGURES: Final = ("rss_mb", "fds", "tasks", "series", "p99_ms", "recent_ids", "stop_marks")
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class SoakCollector(load.Collector):
    """Results matched by id, with each first result's arrival and latency kept in arrays
    (the collector of a long run: no per-result dict beyond the id sets)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals = array("d")  # epoch ms
        self.latencies = array("d")  # ms from x-lovense-published-ms to arrival
        self.redelivered = 0  # duplicates marked ``redelivered``: the documented repeat
        #: (command, via) -> latencies (ms) of its first results
        self.by_kind: dict[str, array[float]] = {}

    def on_body(self, body: bytes, message_id: str | None = None) -> None:
        now = time.time() * 1000
        try:
            result = _decode(body)
            ident, status = result.get("id"), str(result.get("status"))
        except (msgspec.DecodeError, AttributeError):
            self.strays += 1
            return
        if ident not in self.expected:
            self.strays += 1
        elif ident in self.received:
            if result.get("redelivered") is True:
                self.redelivered += 1
            else:
                self.duplicates += 1
        else:
            self.received[ident] = now
            self.status[status] += 1
            latency = now - self.stamps.pop(ident, now)
            self.arrivals.append(now)
            self.latencies.append(latency)
            kind = f"{result.get('command')} via {result.get('via')}"
            self.by_kind.setdefault(kind, array("d")).append(latency)
            if len(self.received) == len(self.expected):
                self.done.set()


@dataclass
class Traffic:
    """Makes the soak's messages: command n of a seeded mix, and the callbacks."""

    apps: list[dict[str, Any]]
    secret: bytes
    collector: SoakCollector
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    recent_uids: list[str] = field(default_factory=list)
    idents: list[str] = field(default_factory=list)  # of the commands made, until taken

    def take(self) -> list[str]:
        """Return the ids of the commands made since the last call."""
        idents, self.idents = self.idents, []
        return idents

    def command(self, n: int, kinds: tuple[str, ...], tag: str = "soak") -> tuple[str, Message]:
        """Return (exchange, message) of command ``n``, of a kind drawn from ``kinds``."""
        rng, ident = self.rng, f"{tag}-{n}"
        self.idents.append(ident)
        kind = rng.choices(kinds, [MIX[k] for k in kinds])[0]
        level, app = rng.randint(1, 20), self.apps[n % len(self.apps)]
        lan = {"domain": app["domain"], "httpsPort": app["httpsPort"]}
        body: dict[str, Any]
        if kind == "stop" and self.recent_uids:
            uid = rng.choice(self.recent_uids)
            return topology.STOP_EXCHANGE, ("", _encode({"command": "Stop", "uid": uid}),
                                            self.collector.stamp(ident))
        if kind == "multi":
            first = rng.randrange(SERVER_USERS - GROUP)
            body = {"command": "Function", "uids": [f"soak-s{first + k}" for k in range(GROUP)],
                    "action": f"Vibrate:{level}", "timeSec": 3, "mode": "server"}
            return topology.COMMANDS_EXCHANGE, (ident, _encode(body), self.collector.stamp(ident))
        if kind == "lan":
            body = {"command": "Function", "uid": f"soak-l{n % LAN_USERS}", "lan": lan,
                    "action": f"Vibrate:{level}", "timeSec": 3, "mode": "lan"}
        elif kind == "paired":
            body = {"command": "Function", "uid": app["uid"], "action": f"Vibrate:{level}",
                    "timeSec": 3}
        elif kind == "toys":
            body = {"command": "GetToys", "uid": f"soak-l{n % LAN_USERS}", "lan": lan,
                    "mode": "lan"}
        elif kind == "qr":
            uid = f"soak-q{n % SERVER_USERS}"
            body = {"command": "GetQrCode", "uid": uid, "uname": uid}
        else:  # server, or a Stop before any user was commanded
            uid = f"soak-s{rng.randrange(SERVER_USERS)}"
            self.recent_uids = [*self.recent_uids[-999:], uid]
            body = {"command": "Function", "uid": uid, "action": f"Vibrate:{level}",
                    "timeSec": rng.choice((2, 3, 5)), "mode": "server"}
        return topology.COMMANDS_EXCHANGE, (body["uid"], _encode(body),
                                            self.collector.stamp(ident))

    def callbacks(self, start_s: float, end_s: float) -> Iterator[Message]:
        """Yield the callbacks due in [start_s, end_s): one a minute per heartbeat user, one
        every APP_HEARTBEAT_S per simulated app (it keeps them paired)."""
        per_s = HEARTBEAT_USERS / 60
        for i in range(math.ceil(start_s * per_s), math.ceil(end_s * per_s)):
            yield "", callback_body(i % HEARTBEAT_USERS, self.secret), None
        beats = math.ceil(end_s / APP_HEARTBEAT_S) - math.ceil(start_s / APP_HEARTBEAT_S)
        for _ in range(beats):
            yield from (("", app["callback"], None) for app in self.apps)


async def _simulator(h: Harness) -> tuple[Simulator, dict[str, Any]]:
    """Start a simulator of APPS Remote apps (no record); return it and its ready event."""
    child = await h.start(f"simulator-{DELAY_MS}ms", [
        sys.executable, "-m", "worker", "simulate", "--host", "127.0.0.1", "--server-port", "0",
        "--apps", str(APPS), "--delay-ms", str(DELAY_MS), "--token", h.token, "--no-record",
        "--quiet"])
    event = await child.ready_line("simulator_ready")
    await load.prepare(h.opts.amqp_url, 4)
    return Simulator(child, event["serverUrl"], event["token"]), event


async def _apps(sim: Simulator, event: dict[str, Any], secret: bytes) -> list[dict[str, Any]]:
    """Return each simulated app's address and the callback that pairs it (utoken signed)."""
    apps = []
    for app in event["apps"]:
        body = json.loads(await sim.call("GET", f"/_sim/callback?uid={app['uid']}"))
        body["utoken"] = hmac.new(secret, app["uid"].encode(), hashlib.sha256).hexdigest()
        apps.append({**app, "callback": _encode(body)})
    return apps


def _local_ports(pid: int) -> set[int]:
    """Return the local TCP ports of ``pid``'s sockets (its fds' inodes in /proc/PID/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            if (link := os.readlink(fd)).startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


async def _rabbitmqctl(*argv: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl", *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise BenchError(f"soak closes connections with rabbitmqctl: {exc}") from None
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode:
        raise BenchError(f"rabbitmqctl {' '.join(argv)}: {err.decode(errors='replace')[:300]}")
    return out.decode()


async def close_connections(vhost: str, pid: int) -> int:
    """Close, from the broker, every connection of process ``pid`` in ``vhost`` (matched by
    its client port); never another vhost's. Return how many were closed."""
    listed = await _rabbitmqctl("list_connections", "vhost", "peer_port", "pid", "--quiet",
                                "--no-table-headers")
    ports = {str(port) for port in _local_ports(pid)}
    rows = [line.rsplit("\t", 2) for line in listed.splitlines()]
    mine = [row[2] for row in rows if len(row) == 3 and row[0] == vhost and row[1] in ports]
    for conn in mine:
        await _rabbitmqctl("close_connection", conn, "bench soak: scheduled connection close")
    return len(mine)


def vhost_of(url: str) -> str:
    """Return the vhost an AMQP URL names ("/" when its path is empty)."""
    return unquote(urlsplit(url).path[1:]) or "/"


def fit(points: list[tuple[float, float]]) -> dict[str, float | None]:
    """Return the least-squares line through (seconds, value) points: its slope per minute,
    its values at the first and last point, and the growth between them in % of the first."""
    if len(points) < 2:
        return {"per_min": None, "start": None, "end": None, "growth_pct": None}
    n = len(points)
    mx, my = sum(t for t, _ in points) / n, sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    slope = sum((t - mx) * (v - my) for t, v in points) / sxx if sxx else 0.0
    start = my + slope * (points[0][0] - mx)
    end = my + slope * (points[-1][0] - mx)
    return {"per_min": round(slope * 60, 4), "start": round(start, 2), "end": round(end, 2),
            "growth_pct": round((end - start) * 100 / start, 2) if start else None}


async def _sample(worker: Proc, t: float, got: SoakCollector, since: int) -> dict[str, Any]:
    """Read the worker's RSS, descriptors, tasks gauge and metric series; p99 of the results
    that arrived since index ``since``."""
    text, fds = await worker.metrics(), None
    with suppress(OSError):
        fds = len(os.listdir(f"/proc/{worker.pid}/fd"))
    upto = len(got.latencies)
    window = sorted(got.latencies[since:upto])
    tasks = metric(text, "lovense_worker_asyncio_tasks")
    recent = metric(text, "lovense_worker_recent_ids")
    marks = metric(text, "lovense_worker_stop_watermarks")
    return {"t_s": round(t, 1), "rss_mb": rounded(worker.memory_kb().get("VmRSS", 0) / 1024, 1),
            "fds": fds, "tasks": None if tasks is None else int(tasks),
            "recent_ids": None if recent is None else int(recent),
            "stop_marks": None if marks is None else int(marks),
            "series": sum(1 for line in text.splitlines() if line and line[0] != "#") or None,
            "p99_ms": rounded(percentile(window, 0.99), 1), "results": len(window),
            "upto": upto}


async def _probe(h: Harness, traffic: Traffic, got: SoakCollector, worker: Proc,
                 count: int) -> dict[str, Any]:
    """Publish ``count`` commands of the probe mix at once; capacity = count / (last result -
    first publish)."""
    messages: dict[str, list[Message]] = {}
    for n in range(count):
        exchange, message = traffic.command(n, PROBE_KINDS, "soak-probe")
        messages.setdefault(exchange, []).append(message)
    idents = traffic.take()
    got.expect(idents)
    began = time.time() * 1000
    async with FastPublisher(h.opts.amqp_url, name="bench-soak-probe") as publisher:
        for exchange, batch in messages.items():
            await publisher.publish(batch, exchange)
        await publisher.wait_confirmed()
    reason = await wait_until(got.done.is_set, 300, watcher(worker), poll_s=0.05)
    if reason is not None:
        raise BenchError(f"soak: capacity probe: {reason} ({len(got.received)} of {count})")
    span_s = (max(got.received[i] for i in idents) - began) / 1000
    return {"commands": count, "span_s": round(span_s, 2),
            "commands_per_s": round(count / span_s, 1), "by_status": dict(got.status)}


async def _steady(h: Harness, traffic: Traffic, worker: Proc, plan: Plan, rate: float,
                  samples: list[dict[str, Any]], closes: list[dict[str, Any]]) -> int:
    """Publish the mix at ``rate`` for the plan's duration while :func:`_observe` samples and
    closes connections; return how many commands were published."""
    got, sent, tick = traffic.collector, 0, 0.01
    async with FastPublisher(h.opts.amqp_url, name="bench-soak") as publisher:
        start = last = time.monotonic()
        observer = asyncio.create_task(_observe(h, worker, plan, got, start, samples, closes))
        try:
            while (now := time.monotonic()) - start < plan.duration_s and worker.alive:
                due = int((now - start) * rate) + 1
                batches: dict[str, list[Message]] = {}
                for n in range(sent, due):
                    exchange, message = traffic.command(n, tuple(MIX))
                    batches.setdefault(exchange, []).append(message)
                got.expect(traffic.take())
                for exchange, batch in batches.items():
                    await publisher.publish(batch, exchange)
                await publisher.publish(traffic.callbacks(last - start, now - start),
                                        topology.CALLBACKS_EXCHANGE)
                sent, last = due, now
                await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic(), tick))
            await publisher.wait_confirmed()
        finally:
            observer.cancel()
            with suppress(asyncio.CancelledError):
                await observer
    return sent


def _since(samples: list[dict[str, Any]]) -> int:
    return int(samples[-1]["upto"]) if samples else 0


async def _observe(h: Harness, worker: Proc, plan: Plan, got: SoakCollector, start: float,
                   samples: list[dict[str, Any]], closes: list[dict[str, Any]]) -> None:
    """Every SAMPLE_S take a sample; every ``close_every_s`` close the worker's connections."""
    vhost, next_close = vhost_of(h.opts.amqp_url), plan.close_every_s
    samples.append(await _sample(worker, 0.0, got, len(got.latencies)))
    for k in range(1, int(plan.duration_s // SAMPLE_S) + 1):
        await asyncio.sleep(max(0.0, start + k * SAMPLE_S - time.monotonic()))
        elapsed = time.monotonic() - start
        samples.append(await _sample(worker, elapsed, got, _since(samples)))
        _progress(samples[-1], len(got.expected), len(got.received))
        if elapsed >= next_close - 1 and elapsed < plan.duration_s - 1:
            closed = await close_connections(vhost, worker.pid)
            closes.append({"t_s": round(time.monotonic() - start, 1), "closed": closed})
            print(f"  {closes[-1]['t_s']:6.0f} s: closed {closed} worker connection(s)",
                  flush=True)
            next_close += plan.close_every_s


def _progress(s: dict[str, Any], expected: int, received: int) -> None:
    print(f"  {s['t_s']:6.0f} s: RSS {fmt(s['rss_mb'])} MB, fds {fmt(s['fds'])}, tasks "
          f"{fmt(s['tasks'])}, series {fmt(s['series'])}, p99 {fmt(s['p99_ms'])} ms, "
          f"{expected - received} unanswered", flush=True)


def _pauses(got: SoakCollector, closes: list[dict[str, Any]], began_ms: float) -> None:
    """Note, for each close, the longest gap between results in the 60 s after it."""
    arrivals = sorted(got.arrivals)
    for close in closes:
        at = began_ms + close["t_s"] * 1000
        near = [a for a in arrivals if at - 1000 <= a <= at + 60_000]
        gaps = [b - a for a, b in zip(near, near[1:], strict=False)]
        close["longest_gap_s"] = round(max(gaps, default=0.0) / 1000, 2)


async def _paired(worker: Proc, users: int, timeout: float = 60) -> str | None:
    """Wait until the worker's registry holds ``users``; return why not."""
    deadline = time.monotonic() + timeout
    while (metric(await worker.metrics(), "lovense_worker_registry_users") or 0) < users:
        if not worker.alive or time.monotonic() > deadline:
            return f"registry did not reach {users} users ({worker.name} alive: {worker.alive})"
        await asyncio.sleep(0.2)
    return None


async def run(h: Harness) -> Outcome:
    """Measure capacity, then soak at half of it; sample, fit slopes, count what was lost."""
    plan = QUICK if h.opts.quick else FULL
    secret = secrets.token_hex().encode()
    sim, event = await _simulator(h)
    env = h.worker_env(sim, extra={
        "LOVENSE_LAN_ALLOW": "127.0.0.1/32,10.0.0.0/8", "LOVENSE_LAN_CA_FILE": event["caFile"],
        "LOVENSE_UTOKEN_SECRET": secret.decode(), "LOVENSE_SERVER_MAX_RPS": "1000000",
        "LOVENSE_DEFAULT_TTL_MS": str(TTL_MS), "LOVENSE_RECENT_IDS": str(RECENT_IDS)})
    ttl_s = Settings.from_env(env).lan_ttl_s
    await reset_streams(h.opts.amqp_url, redeclare=ttl_s)
    await callbacks_queue(h.opts.amqp_url, ttl_s)
    got = SoakCollector()
    traffic = Traffic(await _apps(sim, event, secret), secret, got)
    samples: list[dict[str, Any]] = []
    closes: list[dict[str, Any]] = []
    async with FastConsumer(h.opts.amqp_url, topology.RESULTS_EXCHANGE, "#", got.on_body,
                            name="bench-soak-results"):
        worker = await h.worker("soak-worker", env)
        async with FastPublisher(h.opts.amqp_url, name="bench-soak-pair") as publisher:
            await publisher.publish((("", a["callback"], None) for a in traffic.apps),
                                    topology.CALLBACKS_EXCHANGE)
            await publisher.wait_confirmed()
        if (reason := await _paired(worker, APPS)) is not None:
            raise BenchError(f"soak: {reason}")
        probe = await _probe(h, traffic, got, worker, h.opts.size(plan.probe, plan.probe))
        rate = h.opts.rate or round(probe["commands_per_s"] / 2, 1)
        print(f"  capacity {probe['commands_per_s']} cmd/s ({probe['commands']} commands in "
              f"{probe['span_s']} s); soak at {rate} cmd/s for {plan.duration_s:.0f} s, "
              f"connections closed every {plan.close_every_s:.0f} s", flush=True)
        began_ms, before = time.time() * 1000, len(got.expected)
        sent = await _steady(h, traffic, worker, plan, rate, samples, closes)
        drained = await wait_until(got.done.is_set, h.opts.timeout_s or 120, watcher(worker))
        await asyncio.sleep(load.LINGER_S)
        alive = worker.alive
    code = await h.stop(worker)
    await callbacks_queue(h.opts.amqp_url, ttl_s)
    await reset_streams(h.opts.amqp_url, redeclare=None)
    _pauses(got, closes, began_ms)
    steady = {"rate_per_s": rate, "published": sent, "commands_total": len(got.expected),
              "probe_commands": before}
    return _outcome(plan, probe, steady, got, samples, closes, recorded_env(env),
                    {"exit_code": code, "alive_to_the_end": alive, "drain": drained})


def _outcome(plan: Plan, probe: dict[str, Any], steady: dict[str, Any], got: SoakCollector,
             samples: list[dict[str, Any]], closes: list[dict[str, Any]],
             env: dict[str, str], end: dict[str, Any]) -> Outcome:
    """Fit the slopes from the plan's start, count what was lost, build the table."""
    fitted = [s for s in samples if s["t_s"] >= plan.slope_from_s]
    slopes = {name: fit([(s["t_s"], s[name]) for s in fitted if s[name] is not None])
              for name in FIGURES}
    lost = len(got.expected) - len(got.received)
    growth = [slopes[k]["growth_pct"] for k in ("rss_mb", "fds")]
    met = all(g is not None and g < TARGET_GROWTH_PCT for g in growth) and lost == 0
    latencies = sorted(got.latencies)
    data: dict[str, Any] = {
        "plan": {"duration_s": plan.duration_s, "close_every_s": plan.close_every_s,
                 "slope_from_s": plan.slope_from_s, "sample_s": SAMPLE_S},
        "simulator": {"delay_ms": DELAY_MS, "apps": APPS, "record": False},
        "mix": {"weights": MIX, "callbacks_per_s": round(
            HEARTBEAT_USERS / 60 + APPS / APP_HEARTBEAT_S, 1), "group": GROUP,
            "server_users": SERVER_USERS, "lan_users": LAN_USERS},
        "capacity": {**probe, "how": "the probe mix (" + ", ".join(PROBE_KINDS) + ") published "
                     "at once; commands / (last result - first publish)"},
        "steady": steady, "worker_env": env, "closes": closes, "samples": samples,
        "slopes": slopes, "lost": lost, "duplicates_redelivered": got.redelivered,
        "duplicates_unexplained": got.duplicates, "strays": got.strays,
        "by_status": dict(sorted(got.status.items())),
        "latency_ms_by_command": {k: quantiles(v) for k, v in sorted(got.by_kind.items())},
        "latency_ms": {"p50": rounded(percentile(latencies, 0.5), 1),
                       "p99": rounded(percentile(latencies, 0.99), 1),
                       "max": rounded(latencies[-1] if latencies else None, 1)},
        **end,
        "checks": {"every command answered": lost == 0,
                   "no duplicate but a marked redelivery": got.duplicates == 0,
                   "every close found the worker's connections": all(c["closed"] for c in closes),
                   "worker alive to the end, exited 0": end["alive_to_the_end"]
                   and end["exit_code"] == 0},
        "target": {"what": f"RSS and descriptors grow < {TARGET_GROWTH_PCT:g} % from minute "
                   f"{plan.slope_from_s / 60:.3g} to the end; 0 lost", "met": met}}
    if end["drain"] is not None:
        data["failure"] = f"results after the last publish: {end['drain']}"
    return Outcome("soak", data, "\n".join(_table(data)), all(data["checks"].values()))


def _table(data: dict[str, Any]) -> list[str]:
    lines = render(data, "capacity {capacity[commands_per_s]} cmd/s ({capacity[commands]} "
                   "commands in {capacity[span_s]} s); soak {steady[rate_per_s]} cmd/s + "
                   "{mix[callbacks_per_s]} callbacks/s for {plan[duration_s]} s, worker "
                   "connections closed every {plan[close_every_s]} s")
    lines.append("   t s  RSS MB   fds  tasks  series  p99 ms  recent ids  Stop marks")
    for s in data["samples"]:
        if round(s["t_s"]) % 60 < SAMPLE_S:  # a row a minute
            lines.append(f"{s['t_s']:6.0f} {fmt(s['rss_mb'], '7.1f')} {fmt(s['fds'], '5d')} "
                         f"{fmt(s['tasks'], '6d')} {fmt(s['series'], '7d')} "
                         f"{fmt(s['p99_ms'], '7.1f')} {fmt(s.get('recent_ids'), '11d')} "
                         f"{fmt(s.get('stop_marks'), '11d')}")
    lines.append(f"slopes from {data['plan']['slope_from_s']:.0f} s: figure, fitted start, "
                 "end, per minute, growth")
    for name in FIGURES:
        f = data["slopes"][name]
        lines.append(f"  {name:<7} {fmt(f['start'], '9.1f')} {fmt(f['end'], '9.1f')} "
                     f"{fmt(f['per_min'], '+9.3f')} {fmt(f['growth_pct'], '+7.2f')} %")
    lines += [f"close at {c['t_s']:.0f} s: {c['closed']} connection(s), longest gap in "
              f"results after it {fmt(c.get('longest_gap_s'))} s" for c in data["closes"]]
    lines += render(data, "commands {steady[commands_total]} (probe {steady[probe_commands]}), "
                    "lost {lost}, duplicates: redelivered {duplicates_redelivered}, unexplained "
                    "{duplicates_unexplained}; results {by_status!c}; latency p50 "
                    "{latency_ms[p50]} p99 {latency_ms[p99]} max {latency_ms[max]} ms",
                    "latency by command: " + "; ".join(
                        f"{k} p50 {v['p50']} p99 {v['p99']} ms ({v['n']})"
                        for k, v in data["latency_ms_by_command"].items()),
                    "target: {target[what]} -> {target[met]!v}")
    return lines + check_lines(data)
