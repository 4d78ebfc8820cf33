"""Generate the contract's machine-readable files from the code (``make schemas``).

The Structs in :mod:`worker.contract.messages`, :mod:`worker.contract.users` and
:mod:`worker.core.callbacks` and the names in :mod:`worker.contract.topology` are the
contract; the files in ``schemas/`` are derived from them and never edited by hand:

* one JSON Schema per message kind (command, result, callback, event) and for
  GetUser's answer; the command's also states the worker's structural rules
  (:mod:`worker.command_schema`);
* ``asyncapi.json``, an AsyncAPI 3.0 document that ties every exchange, queue,
  stream, routing key and header to those schemas, with example messages. It
  describes the worker: its operations are the worker's, and producers do the
  opposite of those tagged ``contract``. Its
  ``components.schemas`` are the same msgspec schemas; the examples are checked
  by the worker's own decoders when generated, so a stale example cannot be
  written.

A test fails when the committed files drift from what this module generates.
"""

from __future__ import annotations

import importlib.metadata
import sys
import typing
from pathlib import Path
from typing import Any, Final

import msgspec

from worker.command_schema import command_schema
from worker.command_schema import description as command_description
from worker.config import Settings
from worker.contract import topology
from worker.contract.errors import InvalidCommand
from worker.contract.messages import COMMAND_NAMES, Command, Result, Status, result_decoder
from worker.contract.users import (
    EVENT_TYPES,
    ToyChange,
    ToysReport,
    UserEvent,
    UserExpired,
    UserForgotten,
    UserInfo,
    UserPaired,
    UserReachable,
    UserToy,
    UserToys,
    UserUnreachable,
    event_decoder,
)
from worker.core import callbacks, intake
from worker.core.bodies import utoken_for
from worker.core.callbacks import Callback
from worker.core.rules import DEFAULT_CAPS

SCHEMAS: dict[str, tuple[Any, str, str]] = {
    "command.schema.json": (
        Command, "Lovense command",
        "A command message published to exchange lovense.commands (routing key: the uid; "
        "for several users, the message id), or a Stop to lovense.stop.",
    ),
    "result.schema.json": (
        Result, "Lovense command result",
        "The one terminal result per command identity, published to exchange lovense.results "
        "(routing key <status>.<command>) and to the command's reply_to.",
    ),
    "callback.schema.json": (
        Callback, "Lovense Remote callback",
        "The body the Lovense Remote app POSTs to the platform's callback URL, which the "
        "platform forwards unchanged to exchange lovense.callbacks.",
    ),
    "event.schema.json": (
        UserEvent, "User lifecycle event",
        "An event published to exchange lovense.events, routing key = its type: user.paired, "
        "user.toys, user.expired, user.forgotten, user.unreachable or user.reachable.",
    ),
    "user-info.schema.json": (
        UserInfo, "GetUser answer",
        "The data of a GetUser result: what the worker knows of a user (only paired: false "
        "when it knows nothing). GetUser is a worker command: nothing is sent to Lovense.",
    ),
}
ASYNCAPI_FILE: Final = "asyncapi.json"

_REF = "#/components/schemas/{name}"
_AMQP_EXCHANGE_TYPES: Final = frozenset({"topic", "direct", "fanout", "default", "headers"})
_BINDING_VERSION: Final = "0.3.0"
#: 2025-11-26T15:38:54.456Z, the publish time every example shares.
_PUBLISHED_MS: Final = 1_764_171_534_456
_EXAMPLE_SECRET: Final = "example-utoken-secret"

# ---------------------------------------------------------------------------- examples

_COMMANDS: Final[list[tuple[str, str, dict[str, Any]]]] = [
    ("vibrate", "Vibrate one user's toys at level 16 for 20 s",
     {"command": "Function", "uid": "user-42", "action": "Vibrate:16", "timeSec": 20}),
    ("stroke-on-lan", "Thrust and stroke one toy through the user's Remote app",
     {"command": "Function", "uid": "user-42", "toy": "ff922f7fd345", "mode": "lan",
      "action": "Stroke:0-20,Thrusting:10", "timeSec": 0}),
    ("tip-for-many", "One tip, three users, a 5 s deadline and the producer's own id",
     {"command": "Function", "uids": ["user-1", "user-2", "user-3"], "action": "Vibrate:5",
      "timeSec": 3, "ttlMs": 5000, "id": "tip-9f1c"}),
    ("pattern", "Play a pattern of three strengths, vibrate and rotate",
     {"command": "Pattern", "uid": "user-42", "rule": "V:1;F:v,r;S:1000#",
      "strength": "20;5;10", "timeSec": 10}),
    ("preset", "Play the Remote app's wave preset",
     {"command": "Preset", "uid": "user-42", "name": "wave", "timeSec": 10}),
    ("position", "Move a Solace Pro to position 50",
     {"command": "Position", "uid": "user-42", "toy": "a0e2f1c4d5b6", "value": "50"}),
    ("pattern-v2-setup", "Set up a position pattern",
     {"command": "PatternV2", "uid": "user-42", "type": "Setup",
      "actions": [{"ts": 0, "pos": 10}, {"ts": 500, "pos": 90}, {"ts": 1000, "pos": 10}]}),
    ("get-toys", "List the user's toys", {"command": "GetToys", "uid": "user-42"}),
    ("pair", "Ask for the QR code that pairs the user's Remote app",
     {"command": "GetQrCode", "uid": "user-42", "uname": "Pat"}),
    ("forget", "Erase the user's LAN endpoint everywhere", {"command": "Forget", "uid": "user-42"}),
    ("get-user", "Ask the worker what it knows of a user (Lovense is not called)",
     {"command": "GetUser", "uid": "user-42"}),
]
_STOPS: Final[list[tuple[str, str, dict[str, Any]]]] = [
    ("stop-all-toys", "Stop every toy of one user", {"command": "Stop", "uid": "user-42"}),
    ("stop-one-toy", "Stop one toy, as the Lovense docs spell it",
     {"command": "Function", "uid": "user-42", "toy": "ff922f7fd345", "action": "Stop",
      "timeSec": 0}),
]
_INVALID: Final[dict[str, Any]] = {"command": "Function", "uid": "user-42", "action": "Vibrate:25"}


def _refusal(body: dict[str, Any]) -> str:
    """Return what the worker says about an invalid command (the example's own words)."""
    try:
        intake.decode(msgspec.json.encode(body))
    except InvalidCommand as exc:
        return str(exc)
    raise ValueError(f"example {body} was meant to be invalid, but the worker accepts it")


def _results() -> list[tuple[str, str, dict[str, Any]]]:
    def result(name: str, summary: str, **fields: Any) -> tuple[str, str, dict[str, Any]]:
        done = Result(receivedAt="2025-11-26T15:38:54.461Z",
                      completedAt="2025-11-26T15:38:54.474Z", **fields)
        return name, summary, msgspec.to_builtins(done)

    return [
        result("ok", "The vibrate example, carried by the server route",
               id="403ea3547da1448a9c521765b81bc9df", command="Function", uids=["user-42"],
               status="ok", via="server", code=200, message="Success", attempts=1),
        result("partly-failed", "The tip for three users; one user's app was offline",
               id="tip-9f1c", command="Function", uids=["user-1", "user-2", "user-3"],
               status="failed", via="server", code=507, message="Lovense app is offline",
               attempts=1, failedUids=["user-3"]),
        result("superseded", "A slider value replaced by a newer one before it was sent",
               id="5b0c1f0e9a1d4c3f8e2a7d6b4c3a2f10", command="Function", uids=["user-42"],
               status="superseded", message="superseded by 7d2e4f6a8b0c4d1e9f3a5b7c9d1e3f50",
               supersededBy="7d2e4f6a8b0c4d1e9f3a5b7c9d1e3f50"),
        result("invalid", "The invalid command of the dead-letter example: what to fix",
               id="e1f2a3b4c5d64e7f8a9b0c1d2e3f4a5b", command="Function", uids=["user-42"],
               status="invalid", message=_refusal(_INVALID)),
        result("qr-code", "The pairing QR code (GetQrCode)",
               id="9c8b7a6f5e4d4c3b2a1f0e9d8c7b6a59", command="GetQrCode", uids=["user-42"],
               status="ok", via="server", code=0, message="Success", attempts=1,
               data={"qr": "https://test2.lovense.com/UploadFiles/qr/20251126/example.jpg",
                     "code": "ABC123", "expiresAt": "2025-11-26T19:38:54.470Z"}),
        result("get-user", "GetUser: the worker's answer, data a UserInfo (attempts 0)",
               id="2f4e6a8c0b1d4e3f9a7c5b3d1f0e2a4c", command="GetUser", uids=["user-42"],
               status="ok",
               message="what this replica knows; neither the app nor Lovense was contacted",
               data=msgspec.to_builtins(UserInfo(
                   paired=True, route="lan", toys=[_EXAMPLE_TOY],
                   lastSeenAt="2025-11-26T15:38:40.112Z", circuit="closed"))),
        result("get-user-unknown", "GetUser for a user the worker does not know",
               id="6b8d0f2a4c6e4a1b8d3f5a7c9e1b3d5f", command="GetUser", uids=["user-7"],
               status="ok",
               message="what this replica knows; neither the app nor Lovense was contacted",
               data=msgspec.to_builtins(UserInfo(paired=False))),
    ]


_EXAMPLE_TOY: Final = UserToy(id="ff922f7fd345", name="max", status="connected", battery=18)
_EVENT_AT: Final = "2025-11-26T15:38:54.470Z"


def _events() -> list[tuple[str, str, dict[str, Any]]]:
    def event(name: str, summary: str, body: UserEvent) -> tuple[str, str, dict[str, Any]]:
        return name, summary, msgspec.to_builtins(body)

    user = {"uid": "user-42", "at": _EVENT_AT}
    return [
        event("paired", "The user's first verified callback",
              UserPaired(id="c0a8012c9f3e4b7a8d6e5f4a3b2c1d0e", **user, reason="first-callback",
                         domain="192-168-1-44.lovense.club", httpsPort=34568, verified=True,
                         platform="android", appType="remote", version="101",
                         toys=[UserToy(id="ff922f7fd345", name="max", status="connected",
                                       battery=None)])),
        event("battery-low", "A heartbeat reports the Max's battery at 18 %: below 20 %",
              UserToys(id="5d1f3b7e9a2c4e6f8b0d2f4a6c8e0b1d", **user, source="callback",
                       changes=[ToyChange(toy="ff922f7fd345", change="battery", battery=18,
                                          previous=35, crossed=[20])],
                       toys=[_EXAMPLE_TOY])),
        event("toy-off", "The Max was switched off",
              UserToys(id="7e9a1c3e5b7d4f0a2c4e6a8c0e2b4d6f", **user, source="callback",
                       changes=[ToyChange(toy="ff922f7fd345", change="disconnected",
                                          battery=18)],
                       toys=[UserToy(id="ff922f7fd345", name="max", status="disconnected",
                                     battery=18)])),
        event("expired", "No callback within LOVENSE_LAN_TTL_S",
              UserExpired(id="9a0b1c2d3e4f4a5b6c7d8e9f0a1b2c3d", **user,
                          lastSeenAt="2025-11-25T15:38:50.001Z")),
        event("forgotten", "A Forget command erased the user",
              UserForgotten(id="1b2c3d4e5f6a4b7c8d9e0f1a2b3c4d5e", **user, known=True)),
        event("unreachable", "One worker process's circuit for the user's app opened",
              UserUnreachable(id="3d4e5f6a7b8c4d9e0f1a2b3c4d5e6f7a", **user,
                              replica="lovense-worker-7d9c-4f2a8e1b", cooldownS=30)),
        event("reachable", "That process's circuit closed again",
              UserReachable(id="5f6a7b8c9d0e4f1a2b3c4d5e6f7a8b9c", **user,
                            replica="lovense-worker-7d9c-4f2a8e1b")),
    ]


def _callbacks() -> list[tuple[str, str, dict[str, Any]]]:
    utoken = utoken_for("user-42", _EXAMPLE_SECRET)
    toys = {"ff922f7fd345": {"id": "ff922f7fd345", "name": "max", "nickName": "", "status": 1}}
    return [
        ("android", "A Lovense Remote callback with numeric ports",
         {"uid": "user-42", "utoken": utoken, "domain": "192-168-1-44.lovense.club",
          "httpPort": 34567, "wsPort": 34567, "httpsPort": 34568, "wssPort": 34568,
          "platform": "android", "appVersion": "8.2.0", "version": "101", "appType": "remote",
          "toys": toys}),
        ("ios-string-ports", "Some app versions send ports as strings",
         {"uid": "user-42", "utoken": utoken, "domain": "192-168-1-44.lovense.club",
          "httpPort": "34567", "httpsPort": "34568", "platform": "ios", "appType": "remote",
          "toys": toys}),
    ]


def _checked(kind: str, examples: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Return AsyncAPI examples, each first accepted by the worker's own decoder."""
    out = []
    for name, summary, payload in examples:
        body = msgspec.json.encode(payload)
        if kind == "command":
            intake.decode(body)
        elif kind == "result":
            result_decoder.decode(body)
        elif kind == "event":
            event_decoder.decode(body)
        else:
            callbacks.decode(body)
        headers = {topology.PUBLISHED_MS_HEADER: _PUBLISHED_MS} if kind == "command" else None
        out.append({"name": name, "summary": summary, "payload": payload}
                   | ({"headers": headers} if headers else {}))
    return out


# ---------------------------------------------------------------------------- channels


def _exchange(name: str, kind: str, address: str | None, description: str,
              messages: list[str], **extra: Any) -> dict[str, Any]:
    # No "vhost": it is the server's {vhost} variable (see _VHOST), not one fixed here.
    exchange: dict[str, Any] = {"name": name, "durable": True, "autoDelete": False}
    binding: dict[str, Any] = {"is": "routingKey", "exchange": exchange,
                               "bindingVersion": _BINDING_VERSION}
    if kind in _AMQP_EXCHANGE_TYPES:
        exchange["type"] = kind
    else:  # The AMQP binding knows the built-in types only.
        binding["x-exchange-type"] = kind
    return {"address": address, "title": f"exchange {name or '(default)'}",
            "description": description, "messages": _refs(messages),
            "bindings": {"amqp": binding}, **extra}


def _queue(name: str, arguments: dict[str, Any], bound: list[tuple[str, str]],
           description: str, messages: list[str], **extra: Any) -> dict[str, Any]:
    kind = "stream" if arguments.get("x-queue-type") == "stream" else "queue"
    binding = {
        "is": "queue",
        "queue": {"name": name, "durable": True, "exclusive": False, "autoDelete": False},
        "bindingVersion": _BINDING_VERSION,
        "x-arguments": arguments,
        "x-bound-to": [{"exchange": e, "routingKey": k} for e, k in bound],
    }
    return {"address": name, "title": f"{kind} {name}", "description": description,
            "messages": _refs(messages), "bindings": {"amqp": binding}, **extra}


def _refs(messages: list[str]) -> dict[str, Any]:
    return {m: {"$ref": f"#/components/messages/{m}"} for m in messages}


def _channels() -> dict[str, Any]:
    defaults = Settings()
    shard = topology.COMMANDS_QUEUE_PREFIX + "{shard}"
    statuses = list(typing.get_args(Status))
    return {
        "commands": _exchange(
            topology.COMMANDS_EXCHANGE, "x-consistent-hash", "{uid}",
            "Producers publish commands here. The routing key is the target uid (any string "
            "for a multi-user message): one uid always hashes to the same shard.",
            ["command"], parameters={"uid": {"description": "the target uid"}}),
        "commandShards": _queue(
            shard, topology.shard_arguments(), [(topology.COMMANDS_EXCHANGE, "1")],
            f"LOVENSE_SHARDS (default {defaults.shards}) quorum queues, each bound with weight "
            "\"1\", each with a single active consumer, so per-uid order holds.",
            ["command"],
            parameters={"shard": {
                "description": "0 to LOVENSE_SHARDS - 1",
                "examples": [str(i) for i in range(defaults.shards)]}}),
        "stop": _exchange(
            topology.STOP_EXCHANGE, "fanout", None,
            "The Stop lane: producers publish Stops here (fanout, the routing key is ignored).",
            ["stop"]),
        "stopQueue": _queue(
            topology.STOP_QUEUE, topology.shard_arguments(), [(topology.STOP_EXCHANGE, "")],
            "One replica at a time consumes this queue and sends each Stop at once.", ["stop"]),
        "stopLog": _queue(
            topology.STOP_LOG, topology.stop_log_arguments(), [(topology.STOP_EXCHANGE, "")],
            "Every replica follows this stream and replays its last hour at start-up to keep "
            "per-key Stop watermarks. A Stop that arrived on lovense.commands is appended "
            "through the default exchange, and so is each replica's replay marker.",
            ["stop", "marker"]),
        "results": _exchange(
            topology.RESULTS_EXCHANGE, "topic", "{status}.{command}",
            "Every result, routing key <status>.<command> (ok.Function, invalid.unknown).",
            ["result"],
            parameters={
                "status": {"enum": statuses, "description": "the result's status"},
                "command": {"enum": [*sorted(COMMAND_NAMES), "unknown"],
                            "description": "the command as sent; unknown when unrecognisable"},
            }),
        "replyTo": _exchange(
            "", "default", None,
            "The command's reply_to queue, through the default exchange, with the command's "
            "correlation_id.", ["result"]),
        "callbacks": _exchange(
            topology.CALLBACKS_EXCHANGE, "fanout", None,
            "The platform forwards each Lovense Remote callback body here, unchanged. Forget "
            "tombstones and GetToys reports go through here too.",
            ["callback", "forget", "toysReport"]),
        "callbacksQueue": _queue(
            topology.CALLBACKS_QUEUE, topology.shard_arguments(),
            [(topology.CALLBACKS_EXCHANGE, "")],
            "One replica at a time validates each callback and dead-letters refused ones "
            "(x-lovense-error: callback refused: ...); it skips tombstones. That replica "
            "publishes the user.paired, user.toys and user.expired events.",
            ["callback", "forget", "toysReport", "sweep"]),
        "callbacksLog": _queue(
            topology.CALLBACKS_LOG, topology.callbacks_log_arguments(defaults.lan_ttl_s),
            [(topology.CALLBACKS_EXCHANGE, "")],
            "Every replica builds its LAN registry from this stream. Its x-max-age is "
            f"LOVENSE_LAN_TTL_S (default {defaults.lan_ttl_s} s).",
            ["callback", "forget", "toysReport", "marker"]),
        "events": _exchange(
            topology.EVENTS_EXCHANGE, "topic", "{type}",
            "User lifecycle events, routing key = the event's type. Paired, toys and expired "
            "come from the replica holding the callbacks queue's active consumer, forgotten "
            "from the replica that ran the Forget, unreachable and reachable from the replica "
            "whose circuit changed (its ordinal in replica): each once per change. Bind a "
            "queue of your own (user.# for all).",
            ["event"], parameters={"type": {"enum": list(EVENT_TYPES),
                                            "description": "the event's type"}}),
        "registrySnapshots": _queue(
            topology.SNAPSHOTS, topology.snapshot_arguments(), [],
            "Registry snapshots in chunks, each tagged with the callback-log offset it covers; "
            "written and read by the worker only, through the default exchange.",
            ["registrySnapshot", "marker"]),
        "presence": _exchange(
            topology.PRESENCE_EXCHANGE, "fanout", None,
            "Every worker process announces itself here each second with the shards it holds "
            "(and hears the others on an exclusive, server-named queue of its own); the live "
            "members share the command shards out among themselves.", ["presence"]),
        "dead": _exchange(
            topology.DEAD_EXCHANGE, "fanout", None,
            "Every message the worker gives up on, unchanged, with x-lovense-error saying why.",
            ["deadLetter"]),
        "deadQueue": _queue(
            topology.DEAD_QUEUE, topology.dead_arguments(), [(topology.DEAD_EXCHANGE, "")],
            f"Dead letters, at most {topology.DEAD_MAX_LENGTH:,} (the oldest are dropped).",
            ["deadLetter"]),
    }


# ---------------------------------------------------------------------------- messages


def _headers(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties} | (
        {"required": required} if required else {})


_PUBLISHED: Final[dict[str, Any]] = {
    "type": "integer", "minimum": 0,
    "description": "Milliseconds since the epoch when the producer published the command. "
                   "Set it on every command: Stops are ordered against commands by it.",
}
#: AsyncAPI 3's runtime expressions reach ``$message.header`` and ``$message.payload`` only;
#: its own AMQP request/reply examples (rpc-server, rpc-client) name AMQP 0-9-1 properties
#: under ``$message.header`` by their property names, so the worker's properties are named so.
_CORRELATION: Final[dict[str, Any]] = {
    "description": "The AMQP 0-9-1 basic property correlation_id (a short string), which the "
                   "worker copies unchanged from a command onto its result (none if the "
                   "command had none). It is a message property, not an entry of the AMQP "
                   "headers table that this message's headers describe: AsyncAPI 3's runtime "
                   "expressions reach only $message.header and $message.payload, and AsyncAPI's "
                   "own AMQP request/reply examples name AMQP properties under $message.header "
                   "by their property names. The AMQP message binding 0.3.0 has no field for "
                   "it. A header named correlation_id is not read.",
    "location": "$message.header#/correlation_id",
}
_REPLY_TO: Final[dict[str, Any]] = {
    "description": "The command's AMQP 0-9-1 basic property reply_to (a message property, like "
                   "correlation_id): the result is also published to the default exchange "
                   "with this routing key.",
    "location": "$message.header#/reply_to",
}
_CORRELATION_REF: Final = {"$ref": "#/components/correlationIds/amqp"}
#: W3C trace context: read on commands, written on results (README: Tracing).
_TRACE_IN: Final[dict[str, Any]] = {
    topology.TRACEPARENT_HEADER: {
        "type": "string", "maxLength": 1024,
        "description": "W3C trace context of the producer's span: the worker's spans continue "
                       "this trace (a value that is not trace context starts a new one)."},
    topology.TRACESTATE_HEADER: {
        "type": "string", "maxLength": 1024, "description": "W3C tracestate, with traceparent."},
}
_TRACE_OUT: Final[dict[str, Any]] = {
    topology.TRACEPARENT_HEADER: {
        "type": "string",
        "description": "W3C trace context: the worker's lovense.publish span when it traces, "
                       "else the command's own traceparent, if it had one."},
    topology.TRACESTATE_HEADER: {"type": "string", "description": "W3C tracestate."},
}


def _messages() -> dict[str, Any]:
    published: dict[str, Any] = {topology.PUBLISHED_MS_HEADER: _PUBLISHED, **_TRACE_IN}
    command_schema = {"$ref": _REF.format(name="Command")}
    return {
        "command": {
            "name": "command", "title": "Command", "contentType": "application/json",
            "summary": "One Lovense command; at most 1 MiB of UTF-8 JSON.",
            "description": "AMQP message_id is the command's identity when it has no id; "
                           "reply_to + correlation_id ask for the result there too.",
            "headers": _headers([], published), "payload": command_schema,
            "correlationId": _CORRELATION_REF, "examples": _checked("command", _COMMANDS),
        },
        "stop": {
            "name": "stop", "title": "Stop", "contentType": "application/json",
            "summary": "A Stop: the Stop shorthand, or Function with action Stop.",
            "description": "Never rate-limited, replaced or expired; it cancels every command "
                           "for an overlapping key published no later than it.",
            "headers": _headers([], published), "payload": command_schema,
            "correlationId": _CORRELATION_REF, "examples": _checked("command", _STOPS),
        },
        "result": {
            "name": "result", "title": "Result", "contentType": "application/json",
            "summary": "The one terminal result per command identity.",
            "description": "AMQP message_id is the result's id; correlation_id is the "
                           "command's.",
            "headers": _headers([], _TRACE_OUT),
            "payload": {"$ref": _REF.format(name="Result")}, "correlationId": _CORRELATION_REF,
            "examples": _checked("result", _results()),
        },
        "callback": {
            "name": "callback", "title": "Lovense Remote callback",
            "contentType": "application/json",
            "summary": "A callback body, forwarded unchanged; at most "
                       f"{callbacks.MAX_CALLBACK_BYTES // 1024} KiB.",
            "payload": {"$ref": _REF.format(name="Callback")},
            "examples": _checked("callback", _callbacks()),
        },
        "event": {
            "name": "event", "title": "User lifecycle event", "contentType": "application/json",
            "summary": "What changed about a user: paired, toys, expired, forgotten, "
                       "unreachable or reachable.",
            "description": "AMQP message_id is the event's id. No event carries a token or "
                           "utoken; only user.paired carries the LAN address.",
            "payload": {"$ref": _REF.format(name="UserEvent")},
            "examples": _checked("event", _events()),
        },
        "toysReport": {
            "name": "toysReport", "title": "GetToys report",
            "contentType": "application/json",
            "summary": "Written by the worker after a GetToys answer: each toy's battery and "
                       "functions, so every replica learns them and battery crossings become "
                       "user.toys events.",
            "headers": _headers([topology.TOYS_HEADER], {topology.TOYS_HEADER: {
                "type": "string", "minLength": 1, "description": "the uid the report is of"}}),
            "payload": {"$ref": _REF.format(name="ToysReport")},
        },
        "sweep": {
            "name": "sweep", "title": "Expiry sweep tick",
            "summary": "Sent by every replica now and then straight to the callbacks queue "
                       "(an empty body): the replica holding its active consumer then "
                       "publishes user.expired for users past LOVENSE_LAN_TTL_S.",
            "headers": _headers([topology.SWEEP_HEADER], {topology.SWEEP_HEADER: {
                "type": "integer", "description": "always 1"}}),
            "examples": [{"name": "sweep", "headers": {topology.SWEEP_HEADER: 1}}],
        },
        "forget": {
            "name": "forget", "title": "Forget tombstone",
            "summary": "Written by the worker for a Forget command: an empty body and the "
                       "uid in a header, so replays and later snapshots drop the user.",
            "headers": _headers([topology.FORGET_HEADER], {topology.FORGET_HEADER: {
                "type": "string", "minLength": 1, "description": "the uid to forget"}}),
            "examples": [{"name": "forget", "headers": {topology.FORGET_HEADER: "user-42"}}],
        },
        "marker": {
            "name": "marker", "title": "Replay marker",
            "summary": "Appended by a replica to a stream it replays, with an empty body; "
                       "seeing it come back means the replay has caught up. Consumers of the "
                       "streams skip it.",
            "headers": _headers([topology.MARKER_HEADER], {topology.MARKER_HEADER: {
                "type": "string", "minLength": 1, "description": "a random id per replay"}}),
            "examples": [{"name": "marker",
                          "headers": {topology.MARKER_HEADER: "0f6c2a9d4b8e4f1a9c3d5e7f9a1b3c5d"}}],
        },
        "registrySnapshot": {
            "name": "registrySnapshot", "title": "Registry snapshot chunk",
            "contentType": "application/octet-stream",
            "summary": "Internal to the worker: one chunk of a registry snapshot (opaque).",
        },
        "presence": {
            "name": "presence", "title": "Member heartbeat",
            "summary": "An empty body naming the member and the shards it holds; it expires "
                       f"after {topology.PRESENCE_TTL_S:g} s.",
            "headers": _headers([topology.MEMBER_HEADER, topology.HOLDING_HEADER], {
                topology.MEMBER_HEADER: {
                    "type": "string", "minLength": 1,
                    "description": "the member: a process's own id (host name and a random "
                                   "suffix)"},
                topology.HOLDING_HEADER: {
                    "type": "array", "items": {"type": "integer", "minimum": 0},
                    "description": "the shards it consumes, or released whose deliveries "
                                   "are still settling; nobody else takes them meanwhile"},
                topology.LEAVING_HEADER: {
                    "type": "boolean",
                    "description": "on its last heartbeat after a clean shutdown: it leaves"}}),
            "examples": [{"name": "member", "headers": {
                topology.MEMBER_HEADER: "lovense-worker-7d9c-4f2a8e1b",
                topology.HOLDING_HEADER: [1, 6]}}],
        },
        "deadLetter": {
            "name": "deadLetter", "title": "Dead letter",
            "summary": "A message the worker gave up on, its body and properties unchanged.",
            "description": "The worker publishes its result (invalid or failed) first, then "
                           "the message with why and where it came from; `lovense-worker "
                           "requeue-dead` sends it back there. Messages the broker itself "
                           "dead-letters (x-delivery-limit) carry RabbitMQ's x-death instead.",
            "headers": _headers([], {**published,
                topology.ERROR_HEADER: {"type": "string", "minLength": 1,
                                        "description": "why the worker gave up"},
                topology.ORIGIN_EXCHANGE_HEADER: {
                    "type": "string", "description": "the exchange it first came through"},
                topology.ORIGIN_ROUTING_KEY_HEADER: {
                    "type": "string", "description": "the routing key it first came with"}}),
            "payload": {"description": "The original message body, unchanged."},
            "examples": [{
                "name": "invalid-command", "summary": "A level beyond the documented range",
                "headers": {topology.PUBLISHED_MS_HEADER: _PUBLISHED_MS,
                            topology.ERROR_HEADER: _refusal(_INVALID),
                            topology.ORIGIN_EXCHANGE_HEADER: topology.COMMANDS_EXCHANGE,
                            topology.ORIGIN_ROUTING_KEY_HEADER: _INVALID["uid"]},
                "payload": _INVALID}],
        },
    }


# ---------------------------------------------------------------------------- operations


class _Operation(typing.NamedTuple):
    """What the worker does on one channel, in AsyncAPI 3's terms: the worker's point of view."""

    action: typing.Literal["send", "receive"]
    channel: str
    messages: tuple[str, ...]
    summary: str
    #: Other programs meet it: a producer does the opposite (tag "contract", else "internal").
    contract: bool = False
    #: AMQP delivery_mode 2 (published persistent, or to be published so by producers).
    persistent: bool = False
    expiration_ms: int | None = None
    #: The result also goes to the message's reply_to.
    reply: bool = False


_OPERATIONS: Final[dict[str, _Operation]] = {
    # The contract, in the order a producer meets it.
    "receiveCommands": _Operation(
        "receive", "commands", ("command",),
        "Take the commands producers publish to lovense.commands, through the shard queues "
        "(consumeCommands): one result each.", contract=True, persistent=True, reply=True),
    "receiveStops": _Operation(
        "receive", "stop", ("stop",),
        "Take the Stops producers publish to the Stop lane, through the Stop queue and log "
        "(consumeStops, followStopLog): one result each.",
        contract=True, persistent=True, reply=True),
    "receiveCallbacks": _Operation(
        "receive", "callbacks", ("callback",),
        "Take the Lovense Remote callbacks the platform forwards, through the callbacks queue "
        "and log (validateCallbacks, followCallbacksLog).", contract=True, persistent=True),
    "publishResults": _Operation(
        "send", "results", ("result",), "Publish every result, with publisher confirms.",
        contract=True, persistent=True),
    "replyResults": _Operation(
        "send", "replyTo", ("result",), "Send the result to the command's reply_to as well.",
        contract=True, persistent=True),
    "publishEvents": _Operation(
        "send", "events", ("event",), "Publish user lifecycle events, with publisher confirms.",
        contract=True, persistent=True),
    "deadLetter": _Operation(
        "send", "dead", ("deadLetter",),
        "Republish what the worker gives up on, with the reason.", contract=True,
        persistent=True),
    # Between the worker's replicas and its own tools.
    "consumeCommands": _Operation(
        "receive", "commandShards", ("command",),
        "Consume every shard; each command gets one result, then its ack.", reply=True),
    "consumeStops": _Operation(
        "receive", "stopQueue", ("stop",),
        "Send each Stop at once, on the Stop lane's own connection.", reply=True),
    "followStopLog": _Operation(
        "receive", "stopLog", ("stop", "marker"),
        "Replay the last hour, then follow, to keep Stop watermarks."),
    "appendStopLog": _Operation(
        "send", "stopLog", ("stop", "marker"),
        "Append Stops that arrived on lovense.commands (persistent); mark replays."),
    "validateCallbacks": _Operation(
        "receive", "callbacksQueue", ("callback", "forget", "toysReport", "sweep"),
        "Validate callbacks; dead-letter refused ones; publish their events; sweep expired "
        "users."),
    "followCallbacksLog": _Operation(
        "receive", "callbacksLog", ("callback", "forget", "toysReport", "marker"),
        "Build the LAN registry from the callback log."),
    "tickSweep": _Operation(
        "send", "callbacksQueue", ("sweep",),
        "Ask the queue's active consumer to look for expired users."),
    "announceToys": _Operation(
        "send", "callbacks", ("toysReport",),
        "Share what a GetToys answer said with every replica.", persistent=True),
    "appendCallbacksLog": _Operation(
        "send", "callbacksLog", ("marker",), "Mark the callback log's replay."),
    "announceForget": _Operation(
        "send", "callbacks", ("forget",), "Write a tombstone for a Forget command.",
        persistent=True),
    "writeSnapshots": _Operation(
        "send", "registrySnapshots", ("registrySnapshot",),
        "Write a registry snapshot now and then.", persistent=True),
    "readSnapshots": _Operation(
        "receive", "registrySnapshots", ("registrySnapshot", "marker"),
        "Load the newest complete snapshot at start-up."),
    "announcePresence": _Operation(
        "send", "presence", ("presence",),
        "Announce this member and the shards it holds every second.",
        expiration_ms=int(topology.PRESENCE_TTL_S * 1000)),
    "hearPresence": _Operation(
        "receive", "presence", ("presence",),
        "Hear the other members, and share the shards out among the live ones."),
    "requeueDead": _Operation(
        "receive", "deadQueue", ("deadLetter",),
        "`lovense-worker requeue-dead`: take dead letters and republish each to the exchange "
        "and routing key it first came through."),
}
_TAGS: Final[dict[str, dict[str, str]]] = {
    "contract": {
        "name": "contract",
        "description": "Other programs meet this operation, and do its opposite: a producer "
                       "sends what the worker receives here, and receives what it sends.",
    },
    "internal": {
        "name": "internal",
        "description": "Between the worker's replicas and its own tools; other programs leave "
                       "these channels alone.",
    },
}
_REPLY: Final[dict[str, Any]] = {
    "address": _REPLY_TO,
    "channel": {"$ref": "#/channels/replyTo"},
    "messages": [{"$ref": "#/channels/replyTo/messages/result"}],
}


def _operations() -> dict[str, Any]:
    operations = {}
    for name, op in _OPERATIONS.items():
        amqp: dict[str, Any] = {"ack": True}
        if op.persistent:
            amqp["deliveryMode"] = 2
        if op.expiration_ms is not None:
            amqp["expiration"] = op.expiration_ms
        operations[name] = {
            "action": op.action, "channel": {"$ref": f"#/channels/{op.channel}"},
            "summary": op.summary,
            "messages": [{"$ref": f"#/channels/{op.channel}/messages/{m}"} for m in op.messages],
            "tags": [{"$ref": "#/components/tags/" + ("contract" if op.contract else "internal")}],
            "bindings": {"amqp": amqp | {"bindingVersion": _BINDING_VERSION}},
        } | ({"reply": {"$ref": "#/components/replies/result"}} if op.reply else {})
    return operations


# ---------------------------------------------------------------------------- documents


def _components() -> dict[str, Any]:
    """Return the JSON Schemas as AsyncAPI components (AsyncAPI's discriminator form)."""
    (_command, _result, _callback, event, _info, _report), schemas = (
        msgspec.json.schema_components(
            [Command, Result, Callback, UserEvent, UserInfo, ToysReport], ref_template=_REF))
    schemas = dict(schemas)
    command = msgspec.json.decode(msgspec.json.encode(command_schema(DEFAULT_CAPS)).replace(
        b'"#/$defs/', b'"' + _REF.format(name="").encode()))
    schemas |= command.pop("$defs")
    # AsyncAPI names the tag property only: its value is the component's name.
    schemas["Command"] = {
        "title": "Command", "description": command_description(SCHEMAS["command.schema.json"][2]),
        **command, "discriminator": "command"}
    # Event types (user.paired) are not component names, which AsyncAPI's discriminator
    # requires: each variant names its type in its own "type" property instead.
    event.pop("discriminator")
    schemas["UserEvent"] = {"title": "UserEvent", "description": SCHEMAS["event.schema.json"][2],
                            **event}
    return dict(sorted(schemas.items()))


_DESCRIPTION: Final = """\
The RabbitMQ contract of lovense-worker: producers publish Lovense commands, the worker \
publishes one result per command. Generated from the code by `make schemas`; the README \
explains every rule.

**Whose point of view.** This document describes the worker: an operation's `action` is what \
the worker does (AsyncAPI 3), on every exchange, queue and stream it declares. Other programs \
meet the operations tagged `contract` and do the opposite of each: they *send* commands \
(lovense.commands), Stops (lovense.stop) and callbacks (lovense.callbacks), and *receive* \
results (lovense.results, and their own reply_to queue through the default exchange), user \
events (lovense.events) and dead letters (lovense.dead). Operations tagged `internal` happen \
between the worker's replicas and its own tools.

The worker is the application described, not a producer, because only the worker uses every \
channel here, so one document keeps one meaning for send and receive; and because a producer \
is this API's client, which is what generators with a client side build from the document of \
the application that provides an API (they flip each action). A generator that builds only \
the application a document describes needs a producer document: this one with only its \
`contract` operations, each with the opposite action, or one of your own that `$ref`s these \
channels and messages, as AsyncAPI's own rpc-server and rpc-client examples pair up.

**Virtual host.** Every exchange and queue lives in the server's `{vhost}`: the AMQP channel \
bindings leave their own `vhost` field out (its default, `/`, is the variable's default too, \
percent-encoded `%2F` in the server's URL)."""
_VHOST: Final[dict[str, Any]] = {
    "default": "%2F",
    "description": "The virtual host the worker declares every exchange and queue in: the one "
                   "LOVENSE_AMQP_URL names, percent-encoded as in an AMQP URI (RabbitMQ's URI "
                   "spec), so %2F is RabbitMQ's default vhost `/`, the worker's default. The "
                   "channels' AMQP bindings name no vhost: theirs is this one.",
    "examples": ["%2F", "lovense"],
}


def asyncapi() -> dict[str, Any]:
    """Return the AsyncAPI 3.0 document of the whole RabbitMQ contract, as the worker sees it."""
    return {
        "asyncapi": "3.0.0",
        "id": "urn:lovense-worker:worker",
        "info": {
            "title": "lovense-worker",
            "version": importlib.metadata.version("lovense-worker"),
            "description": _DESCRIPTION,
            "license": {"name": "MIT"},
        },
        "defaultContentType": "application/json",
        "servers": {"local": {
            "host": "localhost:5672", "pathname": "/{vhost}", "protocol": "amqp",
            "protocolVersion": "0.9.1",
            "description": "LOVENSE_AMQP_URL's default broker (amqp://guest:guest@localhost:5672/, "
                           "the vhost `/`); the worker declares the same topology on any broker, "
                           "in the vhost LOVENSE_AMQP_URL names.",
            "variables": {"vhost": _VHOST}}},
        "channels": _channels(),
        "operations": _operations(),
        "components": {
            "schemas": _components(), "messages": _messages(),
            "correlationIds": {"amqp": _CORRELATION}, "replies": {"result": _REPLY},
            "tags": _TAGS,
        },
    }


def _encode(document: Any) -> bytes:
    return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"


def render() -> dict[str, bytes]:
    """Return every generated file's name and content."""
    files = {}
    for name, (kind, title, description) in SCHEMAS.items():
        if kind is Command:
            schema = command_schema(DEFAULT_CAPS)
            description = command_description(description)
        else:
            schema = msgspec.json.schema(kind)
            # ajv's strict mode knows no "discriminator"; each variant names its tag anyway.
            schema.pop("discriminator", None)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://lovense-worker.invalid/schemas/{name}",
            "title": title,
            "description": description,
            **schema,
        }
        files[name] = _encode(schema)
    files[ASYNCAPI_FILE] = _encode(asyncapi())
    return files


def main(argv: list[str]) -> int:
    """Write the files into the folder named by argv[0] (default ``schemas``)."""
    folder = Path(argv[0] if argv else "schemas")
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in render().items():
        (folder / name).write_bytes(content)
        print(f"wrote {folder / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
