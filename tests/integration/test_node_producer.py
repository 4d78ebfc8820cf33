"""The Node producer in examples/node, run as CI runs it: against the real RabbitMQ and a worker.

The example validates commands with ajv against ``schemas/command.schema.json``,
publishes them with amqplib on a confirm channel, waits on ``reply_to``, listens
to ``invalid.#`` and sends a Stop through the Stop lane; it prints one JSON line
per event. Node and the example's ``node_modules`` are required: without them
this test fails, it does not skip (``make test`` installs them with ``npm ci``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import AMQP_URL, dead_letters
from worker.app import Worker
from worker.contract import topology
from worker.core.jobs import published_ms
from worker.simulator import Simulator

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
INSTALL_HINT = "run `make node-example` (npm ci in examples/node)"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH: install Node 20+ and npm, then {INSTALL_HINT}")
    for package in ("amqplib", "ajv"):
        if not (EXAMPLE / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"examples/node/node_modules/{package} is missing: {INSTALL_HINT}")
    return node


async def _run_example(uid: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run producer.mjs to its end; return its exit code, its JSON lines and its stderr."""
    process = await asyncio.create_subprocess_exec(
        _node(), str(EXAMPLE / "producer.mjs"), cwd=EXAMPLE,
        env={**os.environ, "LOVENSE_AMQP_URL": AMQP_URL, "LOVENSE_UID": uid,
             "LOVENSE_TIMEOUT_MS": "10000"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 45)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("the Node producer did not finish within 45 s") from None
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    assert process.returncode is not None
    return process.returncode, lines, stderr.decode()


async def test_node_producer_end_to_end(sim: Simulator, worker: Worker) -> None:
    """ok for a valid command, ajv's refusal, invalid on reply_to and invalid.#, ok for a Stop."""
    uid = sim.apps[0].uid
    before_ms = time.time() * 1000
    code, lines, stderr = await _run_example(uid)
    after_ms = time.time() * 1000
    assert code == 0, f"exit {code}\nstdout: {lines}\nstderr: {stderr}"

    events = [(line["event"], line.get("source"), line.get("command"), line.get("status"))
              for line in lines]
    assert events == [
        ("published", None, "Function", None),
        ("result", "reply_to", "Function", "ok"),
        ("refused", None, "Function", None),
        ("published", None, "Function", None),
        ("result", "reply_to", "Function", "invalid"),
        ("result", "invalid.#", "Function", "invalid"),
        ("published", None, "Stop", None),
        ("result", "reply_to", "Stop", "ok"),
        ("summary", None, None, None),
    ], lines
    published, vibrate, refused, bypass, invalid, listened, stop_sent, stopped, summary = lines

    # 1. The valid command (ttlMs 2000) went out on the commands exchange and came back ok.
    assert published["exchange"] == topology.COMMANDS_EXCHANGE
    assert vibrate["correlationId"] == published["id"]
    assert vibrate["via"] == "server"  # the in-process worker has no LAN endpoint for the user
    # 2. ajv refused Vibrate:25 locally with its own error, naming the field; nothing was sent...
    assert any(error["instancePath"] == "/action" and error["keyword"] == "pattern"
               for error in refused["errors"]), refused
    refusal = "refused locally, not published: data/action must match pattern"
    # ...its only line on stderr: ajv logs strict-mode warnings about the schema there too.
    assert [line for line in stderr.splitlines() if not line.startswith(refusal)] == [], stderr
    assert refusal in stderr
    # ...and the same command, published anyway, came back invalid on both paths.
    assert invalid["correlationId"] == listened["correlationId"] == bypass["id"] != refused["id"]
    assert invalid["message"] == "action: Vibrate level 25 is out of range 0–20"
    assert listened["routingKey"] == "invalid.Function"
    # 3. The Stop took the Stop lane and came back ok.
    assert stop_sent["exchange"] == topology.STOP_EXCHANGE
    assert stopped["correlationId"] == stop_sent["id"]
    assert summary == {"event": "summary", "ok": True, "expected": 5, "matched": 5}

    server_actions = [r.body.get("action") for r in sim.requests if r.side == "server"]
    assert "Vibrate:5" in server_actions and "Vibrate:25" not in server_actions

    # amqplib's x-lovense-published-ms arrives as a signed 64-bit integer (pamqp: int), which the
    # worker's own parser reads as the publish time: the dead letter keeps the header unchanged.
    [letter] = await dead_letters(1)
    assert letter.message_id == bypass["id"]
    assert letter.correlation_id == bypass["id"] and letter.reply_to
    assert letter.content_type == "application/json"
    stamp = letter.headers[topology.PUBLISHED_MS_HEADER]
    assert isinstance(stamp, int) and stamp > 2**31, repr(stamp)
    assert before_ms - 1 <= stamp <= after_ms + 1
    assert published_ms(letter.headers) == float(stamp)
