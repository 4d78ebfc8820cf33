"""schemas/*.schema.json in ajv 8, as a Node producer uses them before publishing.

ajv's draft 2020-12 build with its default options (strict mode, ``allErrors: false``)
compiles every schema with no warning, takes every example of the AsyncAPI document,
and agrees with Python's jsonschema on the near-misses of tests/unit/near_misses.py.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tests.deploy.support import NODE_MODULES, ROOT, SCHEMAS, load_json, node, npm_file, run
from tests.unit import near_misses
from worker.schemas import ASYNCAPI_FILE

AJV_VALIDATE = ROOT / "tests" / "deploy" / "tools" / "ajv-validate.mjs"
#: Which schema file each AsyncAPI message's examples are payloads of.
MESSAGE_SCHEMAS = {"command": "command.schema.json", "stop": "command.schema.json",
                   "result": "result.schema.json", "callback": "callback.schema.json",
                   "event": "event.schema.json"}
TYPO = {"command": "Function", "uid": "user-42", "action": "Vibrate:5", "timesec": 3}


def _examples() -> list[tuple[str, Any]]:
    messages = load_json(SCHEMAS / ASYNCAPI_FILE)["components"]["messages"]
    return [(schema, example["payload"]) for name, schema in MESSAGE_SCHEMAS.items()
            for example in messages[name]["examples"]]


@pytest.fixture(scope="module")
def ajv() -> dict[str, Any]:
    """Return what ajv says: compilation, warnings, and a verdict per case (see CASES)."""
    npm_file("ajv/dist/2020.js")
    cases = [{"schema": s, "data": d} for s, d in _examples()]
    cases += [{"schema": "command.schema.json", "data": body}
              for _, body, _ in near_misses.ALL]
    cases.append({"schema": "command.schema.json", "data": TYPO})
    out: dict[str, Any] = json.loads(run([node(), AJV_VALIDATE, NODE_MODULES, SCHEMAS],
                                         stdin=json.dumps(cases)))
    return out


def test_ajv_compiles_every_schema_strictly(ajv: dict[str, Any]) -> None:
    """ajv 8 (2020-12, default strict options) compiles each schema, with no warning."""
    files = sorted(p.name for p in SCHEMAS.glob("*.schema.json"))
    assert (ajv["compiled"], ajv["warnings"]) == (dict.fromkeys(files), [])


def test_ajv_takes_every_example(ajv: dict[str, Any]) -> None:
    """Every AsyncAPI example payload passes its schema in ajv."""
    examples = _examples()
    verdicts = ajv["results"][: len(examples)]
    assert [r["errors"] for r in verdicts if not r["valid"]] == []
    assert {schema for schema, _ in examples} == set(MESSAGE_SCHEMAS.values())


def test_ajv_and_jsonschema_agree_on_near_misses(ajv: dict[str, Any]) -> None:
    """On every near-miss, ajv's verdict is jsonschema's, and the issue-13 ones fail both."""
    schema = load_json(SCHEMAS / "command.schema.json")
    python = jsonschema.Draft202012Validator(schema)
    start = len(_examples())
    verdicts = ajv["results"][start : start + len(near_misses.ALL)]
    disagreements = [label for (label, body, _), r in zip(near_misses.ALL, verdicts, strict=True)
                     if r["valid"] != python.is_valid(body)]
    assert disagreements == []
    issue = verdicts[: len(near_misses.ISSUE_13)]
    assert [r["valid"] for r in issue] == [False] * len(near_misses.ISSUE_13)


def test_a_typo_is_one_ajv_error_naming_it(ajv: dict[str, Any]) -> None:
    """With ajv's default allErrors: false, timesec for timeSec is one error naming timesec."""
    assert ajv["results"][-1] == {"valid": False, "errors": [{
        "instancePath": "", "schemaPath": "#/allOf/0/additionalProperties",
        "keyword": "additionalProperties", "params": {"additionalProperty": "timesec"},
        "message": "must NOT have additional properties"}]}
