"""Driving the local 3-node cluster (``scripts/rabbitmq-cluster.sh``) from the tests.

Every call goes through the script, so the tests use the same PIDs, ports, cookie and
private epmd a developer does; nothing here talks to the system node on 5672.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from worker.contract import topology

ROOT: Final = Path(__file__).resolve().parents[2]
SCRIPT: Final = ROOT / "scripts" / "rabbitmq-cluster.sh"
DEFINITIONS: Final = ROOT / "deploy" / "k8s" / "rabbitmq" / "definitions.json"
DECLARE: Final = ROOT / "scripts" / "declare_topology.py"
NODES: Final = (1, 2, 3)
#: The shard count the script declares the topology with (its LOVENSE_SHARDS default).
SHARDS: Final = 4


def node_name(n: int) -> str:
    """Return node ``n``'s Erlang name."""
    return f"lovense-c{n}@localhost"


def rabbitmq_server() -> str | None:
    """Return where rabbitmq-server is installed, or None."""
    found = shutil.which("rabbitmq-server")
    if found:
        return found
    packaged = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    return str(packaged) if packaged.exists() else None


def script_env() -> dict[str, str]:
    """Return this environment without the worker's LOVENSE_* settings, shards at SHARDS.

    The topology the tests expect must not follow whatever LOVENSE_SHARDS or
    LOVENSE_LAN_TTL_S the shell running them holds; the cluster's own variables stay.
    """
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("LOVENSE_") or key.startswith("LOVENSE_CLUSTER_")}
    return {**env, "LOVENSE_SHARDS": str(SHARDS)}


def run(*args: str, timeout: float = 120.0) -> str:
    """Run the cluster script with ``args``; return its stdout, failing with its stderr.

    The script's own output goes to pipes that end with it: every node it starts has its
    output sent to its log file, so no node keeps the pipes open.
    """
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=script_env())
    if done.returncode != 0:
        raise AssertionError(f"rabbitmq-cluster.sh {' '.join(args)} exited "
                             f"{done.returncode}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class Cluster:
    """The running cluster, as the script reports it."""

    urls: tuple[str, ...]
    #: What `start` printed: its `check`, one line per quorum queue and stream.
    started: str

    def url(self, n: int) -> str:
        """Return node ``n``'s AMQP URL."""
        return self.urls[n - 1]

    def pid(self, n: int) -> int:
        """Return node ``n``'s beam PID."""
        return int(run("pid", str(n)))

    def ctl(self, n: int, *args: str) -> str:
        """Run rabbitmqctl against node ``n``."""
        return run("ctl", str(n), *args)

    def running(self) -> set[str]:
        """Return the nodes the cluster counts as running (asked of any live node)."""
        live = [n for n in NODES if self.alive(n)]
        status = json.loads(self.ctl(live[0], "cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def alive(self, n: int) -> bool:
        """Return whether the script finds node ``n``'s process running."""
        line = run("status").splitlines()[n - 1]
        return line.split()[1] == "running"

    def queues(self, n: int, vhost: str = "/") -> list[dict[str, Any]]:
        """Return every queue of ``vhost`` with its type, members and leader."""
        listed = self.ctl(n, "list_queues", "-q", "-p", vhost, "name", "type", "members",
                          "leader", "arguments", "--formatter", "json")
        rows: list[dict[str, Any]] = json.loads(listed)
        return rows


def start() -> Cluster:
    """Start a fresh cluster (the script stops any it left running first)."""
    started = run("start", timeout=240)
    return Cluster(tuple(run("urls").strip().split(",")), started)


def stop() -> None:
    """Stop every node and the private epmd, each by its PID."""
    run("stop", timeout=120)


async def listen_to_results(connection: AbstractConnection,
                            on_result: Callable[[AbstractIncomingMessage], Awaitable[None]],
                            ) -> None:
    """Consume every result (``lovense.results``, ``#``) on ``connection`` into ``on_result``."""
    channel = await connection.channel()
    results = await channel.get_exchange(topology.RESULTS_EXCHANGE)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(results, routing_key="#")
    await queue.consume(on_result, no_ack=True)
