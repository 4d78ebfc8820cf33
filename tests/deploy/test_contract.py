"""schemas/: the generated JSON Schemas and AsyncAPI document, checked against the code.

The AsyncAPI document is validated against the official AsyncAPI 3.0.0 JSON
Schema from the npm package @asyncapi/specs (installed by `make deploy-tools`).
"""

from __future__ import annotations

import copy
import re
from typing import Any, get_args

import jsonschema
import msgspec
import pytest
import referencing
import referencing.jsonschema

from tests.deploy.support import SCHEMAS, load_json, npm_file
from tests.deploy.test_rabbitmq_definitions import declared
from worker.contract import topology
from worker.contract.messages import COMMAND_NAMES, Status, command_decoder, result_decoder
from worker.contract.users import EVENT_TYPES, event_decoder
from worker.core import callbacks, intake
from worker.schemas import ASYNCAPI_FILE, render

DOC_URI = "urn:lovense-worker:asyncapi"
#: Which standalone schema file each AsyncAPI payload component is.
PAYLOAD_FILES = {
    "Command": "command.schema.json",
    "Result": "result.schema.json",
    "Callback": "callback.schema.json",
    "UserEvent": "event.schema.json",
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_json(SCHEMAS / ASYNCAPI_FILE)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def official() -> jsonschema.protocols.Validator:
    spec = load_json(npm_file("@asyncapi/specs/schemas/3.0.0.json"))
    resource = referencing.jsonschema.DRAFT7.create_resource(spec)
    registry = referencing.Registry().with_resource(spec["$id"], resource).crawl()
    return jsonschema.Draft7Validator(spec, registry=registry)


def _payload_component(message: dict[str, Any]) -> str | None:
    ref = message.get("payload", {}).get("$ref", "")
    return ref.removeprefix("#/components/schemas/") if ref else None


def _examples(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(name, message, example)
            for name, message in doc["components"]["messages"].items()
            for example in message.get("examples", [])]


def _in_doc(doc: dict[str, Any], pointer: str) -> jsonschema.protocols.Validator:
    """Return a validator for the schema at a JSON pointer of the AsyncAPI document."""
    registry = referencing.Registry().with_resource(
        DOC_URI, referencing.jsonschema.DRAFT7.create_resource(doc))
    return jsonschema.Draft7Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=registry)


@pytest.mark.parametrize("name", ["callback.schema.json", ASYNCAPI_FILE])
def test_committed_contract_files_match_the_code(name: str) -> None:
    """schemas/callback.schema.json and schemas/asyncapi.json are what `make schemas` writes."""
    assert (SCHEMAS / name).read_bytes() == render()[name], f"schemas/{name} is stale: make schemas"


def test_asyncapi_document_is_valid_asyncapi_3(doc: dict[str, Any],
                                               official: jsonschema.protocols.Validator) -> None:
    """The AsyncAPI document passes the official AsyncAPI 3.0.0 JSON Schema."""
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in official.iter_errors(doc)]
    assert errors == []


def test_official_schema_rejects_a_broken_document(
        doc: dict[str, Any], official: jsonschema.protocols.Validator) -> None:
    """The official schema is really applied: an operation with a made-up action fails it."""
    broken = copy.deepcopy(doc)
    broken["operations"]["consumeCommands"]["action"] = "consume"
    assert not official.is_valid(broken)


def test_every_example_validates_against_its_schemas(doc: dict[str, Any]) -> None:
    """Each example's payload passes its generated JSON Schema file and the document's own."""
    checked = set()
    for name, message, example in _examples(doc):
        at = f"/components/messages/{name}"
        if "headers" in example:
            _in_doc(doc, f"{at}/headers").validate(example["headers"])
        component = _payload_component(message)
        if component is None:
            continue
        standalone = load_json(SCHEMAS / PAYLOAD_FILES[component])
        jsonschema.Draft202012Validator(standalone).validate(example["payload"])
        _in_doc(doc, f"{at}/payload").validate(example["payload"])
        checked.add(name)
    assert checked == {"command", "stop", "result", "callback", "event"}


def test_both_schemas_refuse_what_the_worker_refuses(doc: dict[str, Any]) -> None:
    """A command with a misspelt field fails the JSON Schema file and the document's schema."""
    good: dict[str, Any] = {"command": "Function", "uid": "user-42", "action": "Vibrate:5",
                            "timeSec": 3}
    misspelt: dict[str, Any] = {"command": "Function", "uid": "user-42", "action": "Vibrate:5",
                                "timesec": 3}
    standalone = jsonschema.Draft202012Validator(load_json(SCHEMAS / "command.schema.json"))
    in_doc = _in_doc(doc, "/components/messages/command/payload")
    assert (standalone.is_valid(good), standalone.is_valid(misspelt)) == (True, False)
    assert (in_doc.is_valid(good), in_doc.is_valid(misspelt)) == (True, False)


def test_every_example_decodes_with_the_workers_decoders(doc: dict[str, Any]) -> None:
    """Command examples pass intake (types and Lovense rules); results and callbacks decode."""
    kinds = []
    for _name, message, example in _examples(doc):
        component = _payload_component(message)
        if component is None:
            continue
        body = msgspec.json.encode(example["payload"])
        if component == "Command":
            assert command_decoder.decode(body).kind == example["payload"]["command"]
            intake.decode(body)
        elif component == "Result":
            assert msgspec.to_builtins(result_decoder.decode(body)) == example["payload"]
        elif component == "UserEvent":
            assert msgspec.to_builtins(event_decoder.decode(body)) == example["payload"]
        else:
            assert callbacks.decode(body).uid == example["payload"]["uid"]
        kinds.append(component)
    assert sorted(set(kinds)) == ["Callback", "Command", "Result", "UserEvent"]


def test_the_dead_letter_example_says_what_the_worker_says(doc: dict[str, Any]) -> None:
    """The dead-letter example's x-lovense-error is intake's own refusal of its body."""
    (example,) = doc["components"]["messages"]["deadLetter"]["examples"]
    with pytest.raises(Exception) as refused:
        intake.decode(msgspec.json.encode(example["payload"]))
    assert example["headers"][topology.ERROR_HEADER] == str(refused.value)


def test_components_are_the_generated_json_schemas(doc: dict[str, Any]) -> None:
    """components.schemas carry the JSON Schema files' definitions, refs moved to components."""
    components = doc["components"]["schemas"]
    for component, name in PAYLOAD_FILES.items():
        standalone = load_json(SCHEMAS / name)
        moved = msgspec.json.decode(msgspec.json.encode(standalone).replace(
            b"#/$defs/", b"#/components/schemas/"))
        for key, schema in moved.pop("$defs").items():
            assert components[key] == schema, key
        if component == "Command":  # the same schema; AsyncAPI names the tag property only
            ours = {k: v for k, v in components[component].items() if k != "title"}
            theirs = {k: v for k, v in moved.items() if k not in ("$schema", "$id", "title")}
            assert ours == {**theirs, "discriminator": "command"}
        elif component == "UserEvent":  # event types are not component names: no discriminator
            assert "discriminator" not in components[component]
            assert components[component]["anyOf"] == moved["anyOf"]
        elif "discriminator" in moved:  # AsyncAPI names the tag property only.
            assert components[component]["discriminator"] == moved["discriminator"][
                "propertyName"]
            assert components[component]["anyOf"] == moved["anyOf"]
        else:
            assert moved["$ref"] == f"#/components/schemas/{component}"


def _bindings(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c["bindings"]["amqp"] for c in doc["channels"].values()]


def test_asyncapi_names_every_exchange_the_worker_declares(doc: dict[str, Any]) -> None:
    """Every declared exchange (and the default one, for reply_to) has a channel."""
    named = {b["exchange"]["name"] for b in _bindings(doc) if b["is"] == "routingKey"}
    assert named == set(declared().exchanges) | {""}


def test_asyncapi_describes_every_queue_and_stream_with_its_arguments(
        doc: dict[str, Any]) -> None:
    """Every declared queue and stream has a channel with exactly the declared arguments."""
    described = {b["queue"]["name"]: b["x-arguments"] for b in _bindings(doc) if b["is"] == "queue"}
    expected = {}
    for name, queue in declared().queues.items():
        expected[re.sub(r"\.[0-9]+$", ".{shard}", name)
                 if name.startswith(topology.COMMANDS_QUEUE_PREFIX) else name] = queue["arguments"]
    assert described == expected


def test_asyncapi_describes_every_header_of_the_contract(doc: dict[str, Any]) -> None:
    """The published-ms, error, forget and marker headers each belong to a message."""
    headers = {h for m in doc["components"]["messages"].values()
               for h in m.get("headers", {}).get("properties", {})}
    assert {topology.PUBLISHED_MS_HEADER, topology.ERROR_HEADER, topology.FORGET_HEADER,
            topology.MARKER_HEADER, topology.ORIGIN_EXCHANGE_HEADER,
            topology.ORIGIN_ROUTING_KEY_HEADER} <= headers


def test_result_routing_keys_cover_every_status_and_command(doc: dict[str, Any]) -> None:
    """lovense.results' <status>.<command> parameters list every status and command name."""
    results = doc["channels"]["results"]
    assert results["address"] == "{status}.{command}"
    assert results["parameters"]["status"]["enum"] == list(get_args(Status))
    assert set(results["parameters"]["command"]["enum"]) == set(COMMAND_NAMES) | {"unknown"}


def test_events_channel_names_every_event_type_and_an_example_of_each(
        doc: dict[str, Any]) -> None:
    """lovense.events' routing keys are the event types, and each type has an example."""
    events = doc["channels"]["events"]
    assert (events["address"], events["parameters"]["type"]["enum"]) == (
        "{type}", list(EVENT_TYPES))
    examples = doc["components"]["messages"]["event"]["examples"]
    assert {e["payload"]["type"] for e in examples} == set(EVENT_TYPES)


def test_operations_reference_messages_of_their_channel(doc: dict[str, Any]) -> None:
    """Every operation's messages are messages of the channel it names."""
    for name, operation in doc["operations"].items():
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        for ref in operation["messages"]:
            channel_of, _, message = ref["$ref"].removeprefix("#/channels/").partition(
                "/messages/")
            assert channel_of == channel and message in doc["channels"][channel]["messages"], name


def test_channel_bindings_leave_the_vhost_to_the_server(doc: dict[str, Any]) -> None:
    """No AMQP channel binding pins a vhost; the server's URL has {vhost}, its only variable."""
    pinned = [name for name, channel in doc["channels"].items()
              if "vhost" in channel["bindings"]["amqp"].get("exchange", {})
              or "vhost" in channel["bindings"]["amqp"].get("queue", {})]
    assert pinned == []
    (server,) = doc["servers"].values()
    placeholders = re.findall(r"\{([^{}]+)\}", server["host"] + server["pathname"])
    assert (server["pathname"], placeholders, list(server["variables"])) == (
        "/{vhost}", ["vhost"], ["vhost"])
