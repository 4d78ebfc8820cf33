"""schemas/asyncapi.json in @asyncapi/parser, the parser AsyncAPI's code generators start from.

``tools/asyncapi-parse.mjs`` parses the document with the @asyncapi/parser that
``tools/package.json`` pins (``make deploy-tools``) and prints its diagnostics and what
its model makes of servers, channels, operations and messages. The document parses with
no error and no warning, every channel has an operation, and the operations tagged
``contract`` are the worker's side of the channels producers use (the document describes
the worker); flipped, they make a producer's document the parser takes too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import NODE_MODULES, ROOT, SCHEMAS, load_json, node, npm_file, run
from tests.deploy.test_rabbitmq_definitions import declared
from worker.contract import topology
from worker.schemas import ASYNCAPI_FILE

TOOL_FILES = ROOT / "tests" / "deploy" / "tools"
ASYNCAPI_PARSE = TOOL_FILES / "asyncapi-parse.mjs"
#: What the worker does on each channel of the contract (a producer does the opposite).
CONTRACT = {
    ("receive", topology.COMMANDS_EXCHANGE), ("receive", topology.STOP_EXCHANGE),
    ("receive", topology.CALLBACKS_EXCHANGE), ("send", topology.RESULTS_EXCHANGE),
    ("send", ""), ("send", topology.EVENTS_EXCHANGE), ("send", topology.DEAD_EXCHANGE),
}
CORRELATION = "$message.header#/correlation_id"


def _parse(document: Path) -> dict[str, Any]:
    npm_file("@asyncapi/parser/package.json")
    out: dict[str, Any] = json.loads(run([node(), ASYNCAPI_PARSE, NODE_MODULES, document]))
    return out


@pytest.fixture(scope="module")
def parsed() -> dict[str, Any]:
    """Return what asyncapi-parse.mjs says of the committed document."""
    return _parse(SCHEMAS / ASYNCAPI_FILE)


def _serious(parsed: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in parsed["diagnostics"] if d["severity"] in ("error", "warning")]


def _channel_of(parsed: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    (channel,) = operation["channels"]
    found: dict[str, Any] = parsed["channels"][channel]
    return found


def test_the_parser_is_the_pinned_one(parsed: dict[str, Any]) -> None:
    """The installed @asyncapi/parser is the exact version tools/package.json pins."""
    pinned = load_json(TOOL_FILES / "package.json")["dependencies"]["@asyncapi/parser"]
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", pinned), "pin an exact version"
    assert parsed["parser"] == pinned


def test_the_document_parses_with_no_error_and_no_warning(parsed: dict[str, Any]) -> None:
    """Parsing gives a document and no diagnostic of severity error or warning."""
    assert parsed["remoteRefs"] == []
    assert _serious(parsed) == []
    assert parsed["channels"] and parsed["operations"], "the parser made no document"


def test_every_channel_the_worker_declares_has_an_operation(parsed: dict[str, Any]) -> None:
    """Each declared exchange and queue (and the default exchange) is a channel with operations."""
    topology_ = declared()
    shard = re.compile(re.escape(topology.COMMANDS_QUEUE_PREFIX) + "[0-9]+")
    queues = {topology.COMMANDS_QUEUE_PREFIX + "{shard}" if shard.fullmatch(q) else q
              for q in topology_.queues}
    operations = {(c["exchange"], c["queue"]): c["operations"]
                  for c in parsed["channels"].values()}
    expected = ({(e, None) for e in [*topology_.exchanges, ""]}
                | {(None, q) for q in queues})
    assert set(operations) == expected
    assert [key for key, ops in operations.items() if not ops] == []


def test_the_contract_operations_are_the_workers_on_the_producers_channels(
        parsed: dict[str, Any]) -> None:
    """Operations tagged contract receive from lovense.commands, lovense.stop, lovense.callbacks
    and send to lovense.results, the reply_to queue, lovense.events and lovense.dead."""
    tagged = {(op["action"], _channel_of(parsed, op)["exchange"])
              for op in parsed["operations"].values() if op["tags"] == ["contract"]}
    assert tagged == CONTRACT
    assert {tuple(op["tags"]) for op in parsed["operations"].values()} == {
        ("contract",), ("internal",)}


def test_commands_and_stops_reply_through_the_amqp_properties(parsed: dict[str, Any]) -> None:
    """A command or Stop asks for its result at its reply_to property; all three messages
    carry the AMQP correlation_id property, which no headers schema lists."""
    for exchange in (topology.COMMANDS_EXCHANGE, topology.STOP_EXCHANGE):
        (reply,) = [op["reply"] for op in parsed["operations"].values()
                    if _channel_of(parsed, op)["exchange"] == exchange
                    and op["action"] == "receive"]
        assert reply is not None, exchange
        assert parsed["channels"][reply["channel"]]["exchange"] == ""
        assert reply["address"] == "$message.header#/reply_to"
    messages = parsed["messages"]
    assert {m for m, fields in messages.items() if fields["correlationId"] is not None} == {
        "command", "stop", "result"}
    assert {messages[m]["correlationId"] for m in ("command", "stop", "result")} == {CORRELATION}
    assert [m for m, fields in messages.items()
            if {"correlation_id", "reply_to"} & set(fields["headers"])] == []


def test_the_server_names_the_vhost_as_a_variable(parsed: dict[str, Any]) -> None:
    """The broker's URL ends in the {vhost} variable, whose default is the vhost / encoded."""
    assert parsed["servers"] == {"local": {"url": "amqp://localhost:5672/{vhost}",
                                           "variables": {"vhost": "%2F"}}}


def test_the_contract_flipped_is_a_producer_document(tmp_path: Path) -> None:
    """Keeping the contract operations with the opposite action (the info.description's
    recipe) gives a document the parser takes, sending commands and Stops."""
    document = load_json(SCHEMAS / ASYNCAPI_FILE)
    flip = {"send": "receive", "receive": "send"}
    document["operations"] = {
        name: {**op, "action": flip[op["action"]]} for name, op in document["operations"].items()
        if op["tags"] == [{"$ref": "#/components/tags/contract"}]}
    (tmp_path / "producer.json").write_text(json.dumps(document), encoding="utf-8")
    producer = _parse(tmp_path / "producer.json")
    assert _serious(producer) == []
    assert {(op["action"], _channel_of(producer, op)["exchange"])
            for op in producer["operations"].values()} == {
        (flip[action], exchange) for action, exchange in CONTRACT}
