"""The RabbitMQ contract: every exchange, queue, stream and header name, and their arguments.

Names only, no I/O: the adapters (:mod:`worker.adapters.amqp`) declare and use
them, :mod:`worker.schemas` documents them, and producers rely on them. Queue
arguments are part of the contract too: RabbitMQ refuses to redeclare a queue
with different arguments, so they change only with a migration note in the
CHANGELOG.
"""

from __future__ import annotations

from typing import Any, Final

COMMANDS_EXCHANGE: Final = "lovense.commands"
COMMANDS_QUEUE_PREFIX: Final = "lovense.commands."
RESULTS_EXCHANGE: Final = "lovense.results"
DEAD_EXCHANGE: Final = "lovense.dead"
DEAD_QUEUE: Final = "lovense.dead"
CALLBACKS_EXCHANGE: Final = "lovense.callbacks"
#: The Stop lane: producers publish Stops here (fanout) ...
STOP_EXCHANGE: Final = "lovense.stop"
#: ... one replica consumes this queue and sends each Stop at once ...
STOP_QUEUE: Final = "lovense.stop"
#: ... and every replica follows this stream to keep per-key Stop watermarks.
STOP_LOG: Final = "lovense.stop.log"
#: How far back the Stop log reaches: the longest a command may wait (ttlMs ≤ 1 h).
STOP_LOG_MAX_AGE: Final = "1h"
STOP_LOG_REPLAY_S: Final = 3600
#: Worker processes announce themselves here (heartbeats), and so share the shards.
PRESENCE_EXCHANGE: Final = "lovense.presence"
#: Header of the marker a worker appends to the Stop log to know its replay has caught up.
MARKER_HEADER: Final = "x-lovense-marker"
#: The headers of a heartbeat: the member announcing itself (a process's own id), the shards
#: it holds (subscribed, or releasing while their deliveries settle), and, on its last one
#: after a clean shutdown, that it leaves.
MEMBER_HEADER: Final = "x-lovense-member"
HOLDING_HEADER: Final = "x-lovense-holding"
LEAVING_HEADER: Final = "x-lovense-leaving"
#: How often a member announces itself, and how long an announcement counts.
PRESENCE_INTERVAL_S: Final = 1.0
PRESENCE_TTL_S: Final = 3.0
#: A starting member listens this long before taking a shard (the others answer its first
#: heartbeat at once), and no member takes one while its live set changed this recently.
PRESENCE_LISTEN_S: Final = 1.0
PRESENCE_STABLE_S: Final = 0.5

#: Callbacks arrive on ``lovense.callbacks`` (fanout) and queue here, for one replica to check.
CALLBACKS_QUEUE: Final = "lovense.callbacks"
#: Every callback that passed the check, for every replica to follow (a stream).
CALLBACKS_LOG: Final = "lovense.callbacks.log"
#: On a callback-log entry: the uid the entry forgets (a tombstone, empty body).
FORGET_HEADER: Final = "x-lovense-forget"
#: Registry snapshots (a stream), so a starting replica need not replay the whole log.
SNAPSHOTS: Final = "lovense.registry.snapshots"
#: The headers of a snapshot chunk: which snapshot, which chunk of how many, the log
#: offset it covers up to, and when it was taken (ms since the epoch).
SNAPSHOT_HEADER: Final = "x-lovense-snapshot"
SNAPSHOT_CHUNK_HEADER: Final = "x-lovense-chunk"
SNAPSHOT_CHUNKS_HEADER: Final = "x-lovense-chunks"
SNAPSHOT_LOG_OFFSET_HEADER: Final = "x-lovense-log-offset"
SNAPSHOT_AT_HEADER: Final = "x-lovense-snapshot-ms"

#: User lifecycle events (topic), routing key = the event's type (``user.paired``, ...).
EVENTS_EXCHANGE: Final = "lovense.events"
#: On a callback-log entry: the uid whose toys a GetToys answer reported (battery, functions).
TOYS_HEADER: Final = "x-lovense-toys"
#: On a message sent straight to the ``lovense.callbacks`` queue: time to look for expired
#: users. Whichever replica holds the queue's single active consumer gets it.
SWEEP_HEADER: Final = "x-lovense-sweep"

#: Integer milliseconds since the epoch when the producer published the command.
PUBLISHED_MS_HEADER: Final = "x-lovense-published-ms"
#: Why the worker gave up on a message, on every message in ``lovense.dead``.
ERROR_HEADER: Final = "x-lovense-error"
#: Where a dead letter was first published (``requeue-dead`` sends it back there).
ORIGIN_EXCHANGE_HEADER: Final = "x-lovense-origin-exchange"
ORIGIN_ROUTING_KEY_HEADER: Final = "x-lovense-origin-routing-key"
#: W3C trace context, on commands (the producer's), results, dead letters and Stop-log
#: entries (the worker's spans): see the README's Tracing.
TRACEPARENT_HEADER: Final = "traceparent"
TRACESTATE_HEADER: Final = "tracestate"

#: The broker's own backstop against a message that keeps failing deliveries.
#: Kept well above the worker's own give-up count (closed channels count as
#: deliveries too, so a low limit dead-letters messages nobody ever handled).
DELIVERY_LIMIT: Final = 20
#: lovense.dead keeps at most this many messages; beyond it the oldest go.
DEAD_MAX_LENGTH: Final = 1_000_000


def shard_queue(index: int) -> str:
    """Return the name of command shard queue ``index``."""
    return f"{COMMANDS_QUEUE_PREFIX}{index}"


def shard_arguments() -> dict[str, Any]:
    """Return the arguments every command shard queue is declared with."""
    return {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
    }


def stop_log_arguments() -> dict[str, Any]:
    """Return the arguments of the Stop log stream."""
    return {"x-queue-type": "stream", "x-max-age": STOP_LOG_MAX_AGE}


def dead_arguments() -> dict[str, Any]:
    """Return the arguments the dead-letter queue is declared with."""
    return {
        "x-queue-type": "quorum",
        "x-max-length": DEAD_MAX_LENGTH,
        "x-overflow": "drop-head",
    }


def callbacks_log_arguments(ttl_s: int) -> dict[str, Any]:
    """Return the callback log's arguments: it keeps callbacks as long as an endpoint lives."""
    return {"x-queue-type": "stream", "x-max-age": f"{ttl_s}s"}


def snapshot_arguments() -> dict[str, Any]:
    """Return the snapshot stream's arguments (a few snapshots' worth, a day at most)."""
    return {"x-queue-type": "stream", "x-max-age": "1D",
            "x-max-length-bytes": 2_000_000_000,
            "x-stream-max-segment-size-bytes": 100_000_000}
