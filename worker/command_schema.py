"""The command's JSON Schema: msgspec's shape plus every structural rule the worker enforces.

The Structs give each command's fields and types; :mod:`worker.core.rules` gives the
ranges, enums, caps and grammars laid on top of them here, so a producer that
validates before publishing is told what intake would say. The form compiles in
ajv 8 with its default (strict) options and in Python's ``jsonschema``:

* no ``discriminator`` keyword; the first schema of the top ``allOf`` lists every
  field any command takes with ``additionalProperties: false`` (a misspelt field is
  ajv's one error, naming it), and ``if``/``then`` on ``command`` applies that
  command's own definition;
* a field a command does not take is ``false`` there (or ``null``-only, when the
  Struct has it and leaves it ``None``);
* patterns are anchored with ``$(?!\\n)``: in Python ``$`` also matches before a
  final newline, which the worker refuses.

What only code can check is :data:`CODE_ONLY`, listed in the schema's description;
the agreement test (tests/unit/test_schema_agreement.py) holds the two together.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import msgspec

from worker.contract.messages import COMMAND_NAMES, Command
from worker.core import rules
from worker.core.intake import MAX_MESSAGE_BYTES
from worker.core.rules import DEFAULT_CAPS, Caps

Schema = dict[str, Any]

#: The fields every command shares (those of the Structs' common base).
COMMON_FIELDS: Final = ("command", "uid", "uids", "toy", "mode", "lan", "id", "ttlMs")

#: What only code can check: (the rule as the schema's description states it, a regular
#: expression matching the start of the worker's refusal, or None when intake never
#: refuses for it). The agreement test excuses a schema-valid refusal only by this list.
CODE_ONLY: Final[tuple[tuple[str, str | None], ...]] = (
    (f"id: at most {rules.MAX_ID_BYTES} UTF-8 bytes; JSON Schema counts characters, so the "
     f"schema says maxLength {rules.MAX_ID_BYTES} (a Stop's longer id is replaced, not refused)",
     r"id: longer than"),
    ("action: each action at most once", r"action: \w+ is given more than once"),
    ("action: Stroke only together with Thrusting",
     r"action: Stroke works only together with Thrusting"),
    (f"action: Stroke min-max within 0–{rules.STROKE_MAX}, min below max and at least "
     f"{rules.STROKE_MIN_SPAN} apart", r"action: Stroke (\d+-\d+ |minimum )"),
    ("rule: each feature at most once", r"rule: feature \w is listed more than once"),
    ("actions: ts strictly increasing", r"actions\[\d+\]\.ts: must be greater than the previous"),
    ("route limits with mode lan or server: GetQrCode needs the server; PatternV2, Position, "
     "GetToys, GetToyName, the actions Oscillate, Depth, All and Stroke and the rule feature d "
     "need the LAN; the server takes no toy for several uids (except in a Stop)",
     r"(\w+: .* needs the (LAN|server) route|toy: Lovense's server ignores toy)"),
    ("whole numbers written with a fraction (5.0): JSON Schema counts them as integers, the "
     "worker's decoder does not", r"[\w.\[\]]+: expected `int( \| null)?`, got `float`"),
    (f"the whole message: at most 1 MiB ({MAX_MESSAGE_BYTES:,} bytes) of UTF-8 JSON",
     r"message: "),
    ("the caps (LOVENSE_MAX_TOYS, LOVENSE_MAX_UIDS, LOVENSE_MAX_*_LENGTH) are settings; the "
     "schema states their defaults", None),
    ("toy capabilities (what each toy can do) and whether the user is paired or reachable: "
     "known only when the command is carried out, and reported in its result", None),
)

_NULL: Final[Schema] = {"type": "null"}
_UID: Final = r"[^,\x00-\x1f\x7f-\x9f]*"


def _whole(regex: str) -> str:
    """Anchor a regular expression for ECMA-262 and Python alike."""
    return f"^(?:{regex})$(?!\\n)"


def _level(high: int) -> str:
    """Return a regex of a level 0..high as the worker reads it (``-?[0-9]+``, then int)."""
    top = {3: "[1-3]", 20: "(?:[1-9]|1[0-9]|20)"}[high]
    return f"(?:-?0+|0*{top})"


def _action_pattern() -> str:
    by_high: dict[int, list[str]] = {}
    for name, high in rules.ACTION_MAX_LEVEL.items():
        by_high.setdefault(high, []).append(name)
    items = [f"(?:{'|'.join(names)}):{_level(high)}" for high, names in by_high.items()]
    item = f"(?:{'|'.join([*items, 'Stroke:[0-9]+-[0-9]+'])})"
    return _whole(f"Stop|{item}(?:,{item})*")


def _rule_pattern() -> str:
    assert rules.PATTERN_MIN_INTERVAL_MS == 100  # the interval's regex says "100 or more"
    feature = f"[{''.join(rules.PATTERN_FEATURES)}]"
    return _whole(f"V:1;F:(?:{feature}(?:,{feature})*)?;S:0*[1-9][0-9]{{2,}}#")


def _strength_pattern() -> str:
    level = _level(rules.PATTERN_MAX_LEVEL)
    return _whole(f"{level}(?:;{level}){{0,{rules.PATTERN_MAX_STEPS - 1}}}")


def _position_pattern() -> str:
    assert rules.POSITION_MAX == 100
    return _whole("0*(?:[0-9]|[1-9][0-9]|100)")


def _given(field: str, kind: str) -> Schema:
    """Return a schema matching objects where field is present and not null."""
    return {"required": [field], "properties": {field: {"type": kind}}}


def _refine(node: Schema, by_type: dict[str, Schema]) -> Schema:
    """Return node (msgspec's schema of a field) with by_type merged into its options."""
    node = copy.deepcopy(node)
    node.pop("default", None)
    for option in node.get("anyOf", [node]):
        option.update(by_type.get(option.get("type", ""), {}))
    return node


def _capped(caps: Caps, fields: set[str]) -> Schema:
    """Return the size caps of a command that is not a Stop."""
    toy_id = {"maxLength": rules.MAX_TOY_ID_LENGTH}
    capped: Schema = {
        "uids": {"anyOf": [{"type": "array", "maxItems": caps.uids}, _NULL]},
        "toy": {"anyOf": [{"type": "string", **toy_id},
                          {"type": "array", "maxItems": caps.toys,
                           "items": {"type": "string", **toy_id}}, _NULL]},
        "id": {"anyOf": [{"type": "string", "maxLength": rules.MAX_ID_BYTES}, _NULL],
               "description": f"at most {rules.MAX_ID_BYTES} UTF-8 bytes (an AMQP short "
                              "string); maxLength counts characters, the worker bytes"},
    }
    for field, cap in {"action": caps.action, "rule": caps.rule,
                       "strength": caps.strength}.items():
        if field in fields:
            capped[field] = {"type": "string", "maxLength": cap}
    return {"properties": capped}


def _stop_relief(caps: Caps) -> Schema:
    """Return what a Stop does instead of being refused for a size or its id."""
    return {"properties": {
        "toy": {"description": f"over {caps.toys} ids or {rules.MAX_TOY_ID_LENGTH} characters "
                               "an id (LOVENSE_MAX_TOYS), the Stop is carried out for every "
                               "toy of its users"},
        "uids": {"description": f"over {caps.uids:,} users (LOVENSE_MAX_UIDS), the Stop is "
                                "carried out for all"},
        "id": {"description": f"over {rules.MAX_ID_BYTES} UTF-8 bytes, the Stop is carried out "
                              "under an id of the worker's, and its result says so"},
    }}


def _time_sec_required() -> Schema:
    return _given("timeSec", "number")


def _function_rules(caps: Caps, fields: set[str]) -> list[Schema]:
    return [
        {"if": {"required": ["action"], "properties": {"action": {"const": "Stop"}}},
         "then": _stop_relief(caps),
         "else": {"allOf": [_capped(caps, fields), _time_sec_required()]}},
        {"if": _given("loopRunningSec", "number"), "then": {
            "required": ["loopPauseSec", "timeSec"],
            "properties": {"loopPauseSec": {"type": "number"}, "timeSec": {"type": "number"}}}},
        {"if": _given("loopPauseSec", "number"), "then": _given("loopRunningSec", "number")},
    ]


def _pattern_v2_rules() -> list[Schema]:
    play: Schema = {"startTime": _NULL, "offsetTime": _NULL, "timeMs": _NULL}
    actions: Schema = {"required": ["actions"],
               "properties": {"actions": {"type": "array", "minItems": 1}}}
    takes = {
        "Setup": {**actions, "properties": {**actions["properties"], **play}},
        "Play": {"properties": {"actions": _NULL}},
        "InitPlay": actions,
        "Stop": {"properties": {"actions": _NULL, **play}},
        "SyncTime": {"properties": {"actions": _NULL, **play}},
    }
    out: list[Schema] = [
        {"if": {"required": ["type"], "properties": {"type": {"const": kind}}}, "then": then}
        for kind, then in takes.items()]
    out.append({"if": {"required": ["type"], "properties": {"type": {"const": "InitPlay"}}},
                "else": {"properties": {"stopPrevious": _NULL}}})
    return out


def _refinements() -> dict[str, dict[str, Schema]]:
    """Return, per field, what the rules add to each of msgspec's options (by JSON type)."""
    time_sec = {"anyOf": [{"const": 0}, {"exclusiveMinimum": 1}],
                "description": "0 runs until stopped; otherwise more than 1 second"}
    ms = {"type": "integer", "minimum": 0}
    return {
        "uid": {"string": {"pattern": _whole(_UID),
                           "description": "no comma, no control character"}},
        "uids": {"array": {"minItems": 1, "uniqueItems": True,
                           "items": {"type": "string", "minLength": 1, "maxLength": 256,
                                     "pattern": _whole(_UID)}}},
        "toy": {"array": {"minItems": 1}},
        "ttlMs": {"integer": {"minimum": 1, "maximum": rules.MAX_TTL_MS}},
        "action": {"string": {"pattern": _action_pattern()}},
        "timeSec": {"number": time_sec},
        "loopRunningSec": {"number": {"exclusiveMinimum": 1}},
        "loopPauseSec": {"number": {"exclusiveMinimum": 1}},
        "rule": {"string": {"pattern": _rule_pattern()}},
        "strength": {"string": {"pattern": _strength_pattern()}},
        "startTime": {"integer": {**ms, "maximum": rules.PATTERN_V2_MAX_TS_MS}},
        "offsetTime": {"integer": {**ms, "maximum": rules.PATTERN_V2_MAX_OFFSET_MS}},
        "timeMs": {"number": {"exclusiveMinimum": rules.PATTERN_V2_MIN_TIME_MS}},
        "name": {"string": {"enum": list(rules.PRESETS)}},
        "value": {"string": {"pattern": _position_pattern()},
                  "integer": {"minimum": 0, "maximum": rules.POSITION_MAX}},
    }


def _extra_rules(name: str, caps: Caps, fields: set[str]) -> list[Schema]:
    """Return the rules of command name beyond its fields' own schemas."""
    if name == "Function":
        return _function_rules(caps, fields)
    rest: list[Schema] = [_stop_relief(caps) if name == "Stop" else _capped(caps, fields)]
    if name in ("Pattern", "Preset"):
        rest.append(_time_sec_required())
    elif name == "PatternV2":
        rest.extend(_pattern_v2_rules())
    elif name in ("GetQrCode", "Forget", "GetUser"):
        rest.append({"properties": {"uids": _NULL, "toy": _NULL, "lan": _NULL}})
        if name == "GetUser":
            rest.append({"properties": {"mode": {"const": "auto"}}})
    return rest


def _definition(name: str, definition: Schema, specific: set[str], caps: Caps) -> Schema:
    own = {f: p for f, p in definition["properties"].items() if f not in COMMON_FIELDS}
    refinements = _refinements()
    properties: Schema = {f: _refine(p, refinements.get(f, {})) for f, p in own.items()}
    properties |= {f: False for f in sorted(specific - set(own))}
    out: Schema = {"title": name, "description": definition.get("description", ""),
                   "type": "object", "properties": properties}
    required = [f for f in definition.get("required", []) if f != "command"]
    if required:
        out["required"] = required
    if extra := _extra_rules(name, caps, set(own)):
        out["allOf"] = extra
    return out


def _targets() -> list[Schema]:
    return [
        {"description": "exactly one of uid or uids",
         "if": _given("uid", "string"),
         "then": {"properties": {"uids": _NULL}},
         "else": _given("uids", "array")},
        {"description": "lan names one app: a single uid, and a mode that calls the app",
         "if": _given("lan", "object"),
         "then": {"properties": {"uids": _NULL, "mode": {"enum": ["auto", "lan"]}}}},
    ]


def _lan_target(definition: Schema) -> Schema:
    definition = copy.deepcopy(definition)
    definition["properties"]["httpsPort"] |= {"minimum": 1, "maximum": rules.MAX_PORT}
    return definition


def _pattern_action(definition: Schema) -> Schema:
    definition = copy.deepcopy(definition)
    definition["properties"]["ts"] |= {"minimum": 0, "maximum": rules.PATTERN_V2_MAX_TS_MS}
    definition["properties"]["pos"] |= {"minimum": 0, "maximum": rules.POSITION_MAX}
    return definition


def description(summary: str) -> str:
    """Return the schema's description: summary, then the list of code-only rules."""
    listed = "\n".join(f"- {text}" for text, _ in CODE_ONLY)
    return (f"{summary}\n\nThe schema states every structural rule the worker enforces. "
            f"Only code checks these:\n{listed}")


def command_schema(caps: Caps = DEFAULT_CAPS) -> Schema:
    """Return the JSON Schema (draft 2020-12 body, without $schema/$id) of a command."""
    generated = msgspec.json.schema(Command)
    defs: Schema = generated["$defs"]
    names = sorted(COMMAND_NAMES)
    common = defs["Stop"]["properties"]
    specific = {f for n in names for f in defs[n]["properties"] if f not in COMMON_FIELDS}
    refinements = _refinements()
    properties: Schema = {"command": {"enum": names, "description": "the command's name"}}
    properties |= {f: _refine(common[f], refinements.get(f, {}))
                   for f in COMMON_FIELDS if f != "command"}
    properties |= {f: True for f in sorted(specific)}
    out_defs: Schema = {n: _definition(n, defs[n], specific, caps) for n in names}
    out_defs["LanTarget"] = _lan_target(defs["LanTarget"])
    out_defs["PatternAction"] = _pattern_action(defs["PatternAction"])
    dispatch = [{"if": {"required": ["command"], "properties": {"command": {"const": n}}},
                 "then": {"$ref": f"#/$defs/{n}"}} for n in names]
    # ajv (allErrors: false) stops at the first failing keyword and runs allOf before
    # additionalProperties: closing the object in allOf's first schema makes a misspelt
    # field the one error, whatever else the misspelling leaves missing.
    closed = {"description": "the fields any command takes",
              "properties": dict.fromkeys(properties, True), "additionalProperties": False}
    return {
        "type": "object",
        "required": ["command"],
        "properties": properties,
        "allOf": [closed, *_targets(), *dispatch],
        "$defs": out_defs,
    }
