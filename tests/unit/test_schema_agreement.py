"""schemas/command.schema.json and the worker's intake agree on what is a valid command.

Commands come from the schema itself (each field drawn from its own schema with
hypothesis-jsonschema, then combined into commands that may break the rules across
fields) and from a corpus of near-misses. Intake and the schema must agree on every
one, except a refusal whose rule is in the schema's own list of code-only rules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from tests.unit import near_misses
from worker.command_schema import CODE_ONLY
from worker.contract.errors import InvalidCommand
from worker.contract.messages import COMMAND_NAMES
from worker.core import intake

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_FILES = {p.name for p in SCHEMAS.glob("*.schema.json")}
SCHEMA: dict[str, Any] = json.loads((SCHEMAS / "command.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
EXCUSES = [re.compile(pattern) for _, pattern in CODE_ONLY if pattern is not None]
COMMON_OPTIONAL = ("toy", "mode", "lan", "id", "ttlMs")


def _worker(body: dict[str, Any]) -> str | None:
    """Return intake's refusal of body, or None when the worker takes it."""
    try:
        intake.decode(msgspec.json.encode(body))
    except InvalidCommand as exc:
        return str(exc)
    return None


def _disagreement(body: dict[str, Any]) -> str | None:
    """Return how the schema and intake disagree on body, or None when they agree."""
    refusal = _worker(body)
    errors = [f"{e.json_path}: {e.message[:120]}" for e in VALIDATOR.iter_errors(body)]
    if refusal is None and errors:
        return f"the worker takes it, the schema refuses it: {errors}"
    if refusal is not None and not errors and not any(e.match(refusal) for e in EXCUSES):
        return f"the schema takes it, the worker refuses it for a rule not listed: {refusal}"
    return None


def _inline(node: Any) -> Any:
    """Return node with every local $ref replaced by the definition it names."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(SCHEMA["$defs"][node["$ref"].removeprefix("#/$defs/")])
        return {k: _inline(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v) for v in node]
    return node


def _values(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Return a strategy for the values one field's schema allows."""
    # Objects are built here: hypothesis-jsonschema 0.23's object strategy relies on
    # Hypothesis internals that current Hypothesis no longer has.
    if "anyOf" in node and node.get("type") is None:
        return st.one_of([_values(option) for option in node["anyOf"]])
    if node.get("type") == "object":
        return st.fixed_dictionaries({f: _values(node["properties"][f])
                                      for f in node["required"]})
    if node.get("type") == "array" and node["items"].get("type") == "object":
        return st.lists(_values(node["items"]), min_size=node.get("minItems", 0), max_size=4)
    return from_schema(node)


def _field(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    return _values(_inline(node))


def _command(name: str) -> st.SearchStrategy[dict[str, Any]]:
    definition = SCHEMA["$defs"][name]
    own = {f: _field(p) for f, p in definition["properties"].items() if p is not False}
    required = definition.get("required", [])
    optional = {f: _field(SCHEMA["properties"][f]) for f in COMMON_OPTIONAL}
    optional |= {f: s for f, s in own.items() if f not in required}
    return st.fixed_dictionaries(
        {"command": st.just(name), **{f: own[f] for f in required}}, optional=optional)


COMMANDS = st.one_of([_command(n) for n in sorted(COMMAND_NAMES)])
UID = _field(SCHEMA["properties"]["uid"])
UIDS = _field(SCHEMA["properties"]["uids"])


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    """Draw a command of any kind: valid fields, combined with or without the cross rules."""
    body = draw(COMMANDS)
    targets = draw(st.sampled_from(["uid", "uids", "uid", "uids", "both", "neither"]))
    if targets in ("uid", "both"):
        body["uid"] = draw(UID)
    if targets in ("uids", "both"):
        body["uids"] = draw(UIDS)
    return body


@pytest.mark.parametrize(("label", "body", "taken"), near_misses.ALL,
                         ids=[label for label, _, _ in near_misses.ALL])
def test_near_misses(label: str, body: dict[str, Any], taken: bool) -> None:
    """Each near-miss is taken or refused by intake as labelled, and the schema agrees."""
    assert (_worker(body) is None) == taken
    assert _disagreement(body) is None


@pytest.mark.parametrize(("label", "body", "taken"), near_misses.ISSUE_13,
                         ids=[label for label, _, _ in near_misses.ISSUE_13])
def test_the_schema_states_the_refusals_of_issue_13(label: str, body: dict[str, Any],
                                                    taken: bool) -> None:
    """Each refusal issue 13 found missing is now the schema's own, not a code-only excuse."""
    assert (taken, VALIDATOR.is_valid(body)) == (False, False)


def test_a_misspelt_field_is_named_first() -> None:
    """jsonschema's best match for a misspelt timeSec names the misspelt field."""
    body = {"command": "Function", "uid": "user-42", "action": "Vibrate:5", "timesec": 3}
    best = jsonschema.exceptions.best_match(VALIDATOR.iter_errors(body))
    assert best is not None
    assert best.message == "Additional properties are not allowed ('timesec' was unexpected)"


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_every_schema_is_valid_draft_2020_12(name: str) -> None:
    """Each schemas/*.schema.json passes the draft 2020-12 metaschema (patterns included)."""
    jsonschema.Draft202012Validator.check_schema(json.loads((SCHEMAS / name).read_text()))


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(commands())
def test_generated_commands(body: dict[str, Any]) -> None:
    """On commands drawn from the schema's own fields, the schema and intake agree."""
    assert _disagreement(body) is None
