"""Prometheus metrics, in one explicit registry.

Names are ``lovense_worker_<thing>_<unit|total>``; labels are low-cardinality
(command names, routes, statuses, codes), never a uid.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def running_tasks() -> float:
    """Return how many asyncio tasks are alive in this thread's running loop (0: no loop)."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # collected outside the loop (tests, docs): nothing to count
        return 0.0


class NodeInfo:
    """Which broker node a process is on: one ``node`` label at a time, the last one kept."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._node: str | None = None

    def connected(self, node: str) -> None:
        """Show ``node`` (``host:port``) at 1, dropping the label of the node before it."""
        if self._node is not None and self._node != node:
            self._gauge.remove(self._node)
        self._node = node
        self._gauge.labels(node).set(1)

    def lost(self) -> None:
        """Show the node last connected to at 0 (the connection is gone)."""
        if self._node is not None:
            self._gauge.labels(self._node).set(0)


class Metrics:
    """Every metric the worker exports, registered in its own registry."""

    def child(self, metric: Any, *labels: str) -> Any:
        """Return a labelled child, cached: ``labels()`` is costly on the per-message path."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.messages = Counter(
            "lovense_worker_messages", "Commands finished, by command and status.",
            ["command", "status"], registry=r,
        )
        self.upstream_requests = Counter(
            "lovense_worker_upstream_requests",
            "Calls to Lovense, by route, command and Lovense code (or an error kind).",
            ["route", "command", "code"], registry=r,
        )
        self.upstream_seconds = Histogram(
            "lovense_worker_upstream_seconds", "Duration of calls to Lovense.",
            ["route", "command"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inflight = Gauge(
            "lovense_worker_inflight", "Commands received and not yet acknowledged.", registry=r,
        )
        self.config_errors = Counter(
            "lovense_worker_config_errors",
            "Lovense answers that mean the worker is misconfigured (501 invalid token, "
            "502 no permission).", ["code"], registry=r,
        )
        self.dead_letters = Counter(
            "lovense_worker_dead_letters", "Messages republished to lovense.dead, by reason kind.",
            ["reason"], registry=r,
        )
        self.shards_consumed = Gauge(
            "lovense_worker_shards_consumed", "Command shard queues this process consumes.",
            registry=r,
        )
        self.members = Gauge(
            "lovense_worker_members",
            "Live worker processes sharing the shards, this one included (heard on "
            "lovense.presence).", registry=r,
        )
        self.coalesced = Counter(
            "lovense_worker_coalesced", "Commands superseded before they were sent.",
            ["command"], registry=r,
        )
        self.rate_limit_wait = Histogram(
            "lovense_worker_rate_limit_wait_seconds",
            "Time from a command's arrival to its call being released, by route.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_uids = Histogram(
            "lovense_worker_batch_uids", "Users per server call.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=r,
        )
        self.pending = Gauge(
            "lovense_worker_pending", "Commands waiting in the scheduler to be sent.", registry=r,
        )
        self.stop_seconds = Histogram(
            "lovense_worker_stop_seconds", "Stop latency, from publish to Lovense's answer.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.end_to_end = Histogram(
            "lovense_worker_end_to_end_seconds", "From publish to result, by command.",
            ["command"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.circuits_open = Gauge(
            "lovense_worker_circuits_open", "Endpoints whose circuit is open, by route.",
            ["route"], registry=r,
        )
        self.circuit_opened = Counter(
            "lovense_worker_circuit_opened", "Times a circuit opened, by route.", ["route"],
            registry=r,
        )
        self.fallbacks = Counter(
            "lovense_worker_fallbacks", "Commands the server carried after the LAN failed.",
            ["command"], registry=r,
        )
        self.registry_users = Gauge(
            "lovense_worker_registry_users", "Users with a known LAN endpoint.", registry=r,
        )
        self.callbacks = Counter(
            "lovense_worker_callbacks", "Callbacks handled, by outcome (accepted, refused).",
            ["outcome"], registry=r,
        )
        self.duplicates = Counter(
            "lovense_worker_duplicates",
            "Messages whose identity had already run: answered again, not called again.",
            registry=r,
        )
        self.repeats = Counter(
            "lovense_worker_repeats",
            "Retries of a call Lovense may already have received (safe: same state again).",
            ["route"], registry=r,
        )
        self.stream_skipped = Counter(
            "lovense_worker_stream_skipped",
            "Stream entries a follower could not apply and skipped, by stream.",
            ["stream"], registry=r,
        )
        self.settle_fallbacks = Counter(
            "lovense_worker_settle_fallbacks",
            "Deliveries settled the hard way: handling crashed, the result had to be rebuilt "
            "to be publishable, or the broker dead-lettered it (reject).",
            ["kind"], registry=r,
        )
        self.connected = Gauge(
            "lovense_worker_broker_connected", "1 while connected to RabbitMQ.", registry=r,
        )
        self.blocked = Gauge(
            "lovense_worker_broker_blocked",
            "1 while RabbitMQ blocks any of the worker's connections (a memory or disk alarm): "
            "command intake is paused until it unblocks.", registry=r,
        )
        self.node = NodeInfo(Gauge(
            "lovense_worker_broker_node_info",
            "The RabbitMQ node (host:port) connected to: 1 while connected, 0 once lost.",
            ["node"], registry=r,
        ))
        self.events = Counter(
            "lovense_worker_events", "User lifecycle events published to lovense.events, by type.",
            ["type"], registry=r,
        )
        # Counted when /metrics is scraped (in the loop's thread): a leak of tasks shows here.
        self.tasks = Gauge(
            "lovense_worker_asyncio_tasks", "asyncio tasks alive in the process, at scrape time.",
            registry=r,
        )
        self.tasks.set_function(running_tasks)
        # Bounded memories, read at scrape: full is their steady state, not a leak.
        self.recent_ids = Gauge(
            "lovense_worker_recent_ids",
            "Finished command ids remembered to answer a repeat (at most LOVENSE_RECENT_IDS).",
            registry=r,
        )
        self.recent_bytes = Gauge(
            "lovense_worker_recent_bytes",
            "Estimated memory of the remembered finished ids (at most LOVENSE_RECENT_BYTES).",
            registry=r,
        )
        self.stop_marks = Gauge(
            "lovense_worker_stop_watermarks",
            "Stop watermarks kept (each user's latest Stops, for the Stop log's hour).",
            registry=r,
        )


class CallbackMetrics:
    """What the callback endpoint (``lovense-worker callbacks``) exports.

    Names are ``lovense_callback_*``; ``status`` is the HTTP status answered.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lovense_callback_requests", "Callback POSTs answered, by HTTP status.",
            ["status"], registry=r,
        )
        self.seconds = Histogram(
            "lovense_callback_request_seconds",
            "Time to answer a callback POST, the publisher confirm included.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.sources = Gauge(
            "lovense_callback_sources", "Source addresses the per-source rate limit tracks.",
            registry=r,
        )
        self.connected = Gauge(
            "lovense_callback_broker_connected", "1 while connected to RabbitMQ.", registry=r,
        )
        self.node = NodeInfo(Gauge(
            "lovense_callback_broker_node_info",
            "The RabbitMQ node (host:port) connected to: 1 while connected, 0 once lost.",
            ["node"], registry=r,
        ))
        self._statuses: dict[int, Any] = {}

    def answered(self, status: int) -> None:
        """Count one answer with ``status``."""
        child = self._statuses.get(status)
        if child is None:
            child = self._statuses[status] = self.requests.labels(str(status))
        child.inc()
