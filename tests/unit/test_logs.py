"""Log redaction: secrets never reach a log line."""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.typing import EventDict

from tests.logging_state import logging_restored
from worker import cli, logs
from worker.config import Secret, Settings
from worker.core.bodies import utoken_for
from worker.logs import Redactor

TOKEN = "tok-abcdef"
UTOKEN_SECRET = "utoken-key-0123"
R = "[redacted]"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


def _redact(event: dict[str, Any], secrets: tuple[str, ...] = (TOKEN,)) -> EventDict:
    return Redactor(secrets)(None, "info", event)


def _json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def _without_timestamp(event: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(event.pop("timestamp"), str)
    return event


def test_secret_keys_and_values_are_redacted() -> None:
    """Secrets are hidden by key anywhere, and by value inside any string or nested field."""
    redact = Redactor(["tok-abcdef"])
    event = redact(None, "info", {
        "event": "command_failed",
        "token": "anything",
        "reason": "upstream echoed tok-abcdef back",
        "body": {"utoken": "u", "uid": "x", "items": ["a tok-abcdef b"]},
    })
    assert event == {
        "event": "command_failed",
        "token": "[redacted]",
        "reason": "upstream echoed [redacted] back",
        "body": {"utoken": "[redacted]", "uid": "x", "items": ["a [redacted] b"]},
    }


# Containers and other values


def test_bytes_values_are_scanned() -> None:
    """A secret's UTF-8 bytes inside bytes, bytearray or memoryview are replaced, giving bytes."""
    event = _redact({
        "event": "e", "body": b"a tok-abcdef b", "raw": bytearray(b"tok-abcdef"),
        "view": memoryview(b"x tok-abcdef"), "accented": "clé-secrète!".encode(),
    }, (TOKEN, "clé-secrète"))
    assert event == {
        "event": "e", "body": b"a [redacted] b", "raw": b"[redacted]",
        "view": b"x [redacted]", "accented": b"[redacted]!",
    }


def test_dict_keys_are_scanned() -> None:
    """A secret inside a key (str, bytes or tuple; top level or nested) is replaced in the key."""
    event = _redact({
        "event": "e", TOKEN: 1,
        "seen": {"tok-abcdef": 1, b"k tok-abcdef": 2, ("a", "tok-abcdef"): 3},
    })
    assert event == {"event": "e", R: 1, "seen": {R: 1, b"k [redacted]": 2, ("a", R): 3}}


def test_sets_are_scanned() -> None:
    """Sets and frozensets are scanned element by element and keep their type."""
    event = _redact({"event": "e", "a": {"x tok-abcdef"}, "b": frozenset({TOKEN, "y"})})
    assert event == {"event": "e", "a": {"x [redacted]"}, "b": frozenset({R, "y"})}
    assert (type(event["a"]), type(event["b"])) == (set, frozenset)


def test_nested_containers_are_scanned() -> None:
    """Nested tuples, lists, sets and dicts are scanned at every level and keep their types."""
    value = ({"k": [b"tok-abcdef", {TOKEN: (frozenset({TOKEN}),)}]}, [[{"Token": 1}]])
    event = _redact({"event": "e", "v": value})
    assert event == {"event": "e", "v": ({"k": [b"[redacted]", {R: (frozenset({R}),)}]},
                                         [[{"Token": R}]])}


def test_deep_containers_are_cut_at_20_levels() -> None:
    """A container nested deeper than 20 levels becomes "[too deep]" instead of being scanned."""
    deep: object = TOKEN
    for _ in range(25):
        deep = [deep]
    expected: object = "[too deep]"
    for _ in range(20):
        expected = [expected]
    assert _redact({"event": "e", "v": deep}) == {"event": "e", "v": expected}


@dataclass
class _Node:
    name: str
    parent: _Node | None = None


def test_cyclic_containers_are_cut_without_raising() -> None:
    """A container that holds itself renders "[too deep]" where it recurs, and a dataclass that
    holds itself its redacted repr; the processor returns."""
    loop: list[object] = [TOKEN]
    loop.append(loop)
    mapping: dict[str, object] = {"k": TOKEN}
    mapping["self"] = mapping
    node = _Node(TOKEN)
    node.parent = node
    event = _redact({"event": "e", "l": loop, "d": mapping, "n": node})
    assert event == {"event": "e", "l": [R, "[too deep]"], "d": {"k": R, "self": "[too deep]"},
                     "n": "_Node(name='[redacted]', parent=...)"}


@dataclass
class _Call:
    uid: str
    token: str = field(repr=False)


class _Unprintable:
    def __repr__(self) -> str:
        raise ValueError("no repr")


def test_other_objects_are_scanned() -> None:
    """A dataclass becomes a dict of its fields (keys checked); another object whose repr holds a
    secret becomes its redacted repr, one whose repr fails becomes "[unrepresentable]"."""
    plain = RuntimeError("nothing here")
    event = _redact({
        "event": "e", "call": _Call("u1", "anything"), "error": RuntimeError(f"said {TOKEN}"),
        "plain": plain, "broken": _Unprintable(),
    })
    assert event == {
        "event": "e", "call": {"uid": "u1", "token": R}, "error": "RuntimeError('said [redacted]')",
        "plain": plain, "broken": "[unrepresentable]",
    }


# Keys


def test_secret_looking_keys_are_redacted_case_insensitively() -> None:
    """A key naming a token, secret, password, authorization, API key or cookie is redacted, in any
    case, with dashes read as underscores."""
    keys = ("Token", "api_token", "developer_token", "AUTHORIZATION", "Authorization", "X-Api-Key",
            "apiKey", "db_password", "passwd", "Set-Cookie", "client_secret", "utoken")
    event = _redact({"event": "e", **dict.fromkeys(keys, "v"),
                     "headers": {"Proxy-Authorization": "Basic eA=="}}, ())
    assert event == {"event": "e", **dict.fromkeys(keys, R), "headers": {"Proxy-Authorization": R}}


_LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical",
                          "bind_contextvars"})


def _logged_keys() -> set[str]:
    keys: set[str] = set()
    for path in Path(cli.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _LOG_METHODS):
                keys.update(k.arg for k in node.keywords if k.arg is not None)
    return keys


def test_keys_logged_by_the_worker_are_kept() -> None:
    """No keyword the worker logs today (message_id, uid, reason, error, shards, ...) is taken for
    a secret by its name."""
    keys = _logged_keys() | {"event", "level", "timestamp", "logger", "exception", "stack"}
    assert {"message_id", "uid", "reason", "error", "shards"} <= keys
    event = {key: "v" for key in keys}
    assert _redact(dict(event), ()) == event


# Exceptions and stacks through configure()


def _exception_line(fmt: str, err: str) -> str:
    if fmt == "json":
        [line] = err.splitlines()
        exception: str = json.loads(line)["exception"]
        return exception.splitlines()[-1]
    return err.splitlines()[-1]


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_active_exception_is_redacted(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """log.exception in an except block renders the traceback with its message's secret hidden."""
    logs.configure(fmt, "info", secrets=[TOKEN])
    try:
        raise RuntimeError(f"upstream echoed {TOKEN}")
    except RuntimeError:
        structlog.get_logger().exception("call_crashed")
    err = capsys.readouterr().err
    assert (TOKEN in err, _exception_line(fmt, err)) == (
        False, "RuntimeError: upstream echoed [redacted]")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_exc_info_exception_is_redacted(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An exception passed as exc_info renders with the secret in its message hidden."""
    logs.configure(fmt, "info", secrets=[TOKEN])
    structlog.get_logger().error("call_crashed", exc_info=ValueError(f"bad {TOKEN}"))
    err = capsys.readouterr().err
    assert (TOKEN in err, _exception_line(fmt, err)) == (False, "ValueError: bad [redacted]")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_stack_info_is_rendered_and_redacted(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """stack_info=True renders the calling stack, whose source lines have their secrets hidden."""
    logs.configure(fmt, "info", secrets=["stack-secret-42"])
    log = structlog.get_logger()
    log.info("stack_dumped", stack_info=True, note="stack-secret-42")
    err = capsys.readouterr().err
    stack = json.loads(err)["stack"] if fmt == "json" else err
    assert ("stack-secret-42" in err, stack.splitlines()[-1].strip()) == (
        False, 'log.info("stack_dumped", stack_info=True, note="[redacted]")')


# Standard library logging


def test_stdlib_records_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """A library's stdlib record goes through the redactor and renders as one JSON line."""
    logs.configure("json", "info", secrets=["supersecret-token"])
    logging.getLogger("aiormq.connection").warning("url amqp://guest:supersecret-token@h/")
    assert [_without_timestamp(e) for e in _json_lines(capsys)] == [{
        "event": "url amqp://guest:[redacted]@h/", "level": "warning",
        "logger": "aiormq.connection",
    }]


def test_stdlib_records_are_redacted_on_the_console(capsys: pytest.CaptureFixture[str]) -> None:
    """A stdlib record with %-args renders as one console line with the secret hidden."""
    logs.configure("console", "info", secrets=[TOKEN])
    logging.getLogger("aiohttp.client").error("GET /api?token=%s failed", TOKEN)
    [line] = capsys.readouterr().err.splitlines()
    assert line.split(" ", 1)[1] == (
        "[error    ] GET /api?token=[redacted] failed [aiohttp.client]")


def test_stdlib_exceptions_and_stacks_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """A stdlib record's exception and stack are rendered into the JSON line, secrets hidden."""
    logs.configure("json", "info", secrets=[TOKEN])
    library = logging.getLogger("aio_pika.robust_connection")
    try:
        raise ConnectionError(f"refused {TOKEN}")
    except ConnectionError:
        library.exception("reconnect failed")
    library.warning("where tok-abcdef", stack_info=True)
    crashed, where = _json_lines(capsys)
    assert (crashed["exception"].splitlines()[-1], where["event"],
            where["stack"].splitlines()[-1].strip()) == (
        "ConnectionError: refused [redacted]", "where [redacted]",
        'library.warning("where [redacted]", stack_info=True)')


def test_configure_again_keeps_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    """Calling configure again replaces its root handler, so a stdlib record is written once."""
    for _ in range(3):
        logs.configure("json", "info", secrets=[TOKEN])
    logging.getLogger("worker.own").warning("once")
    assert [e["event"] for e in _json_lines(capsys)] == ["once"]


def test_library_loggers_stay_at_warning_unless_debug(capsys: pytest.CaptureFixture[str]) -> None:
    """At info, aio-pika, aiormq and aiohttp info records are dropped and the worker's own kept; at
    debug every debug record passes."""
    names = ("aio_pika.channel", "aiormq.connection", "aiohttp.client", "worker.own")
    logs.configure("json", "info")
    for name in names:
        logging.getLogger(name).info("from %s", name)
        logging.getLogger(name).debug("debug from %s", name)
    assert [e["event"] for e in _json_lines(capsys)] == ["from worker.own"]
    logs.configure("json", "debug")
    for name in names:
        logging.getLogger(name).debug("debug from %s", name)
    assert [e["event"] for e in _json_lines(capsys)] == [f"debug from {name}" for name in names]


# The AMQP password and utokens


def test_configure_logs_hides_the_amqp_password(capsys: pytest.CaptureFixture[str]) -> None:
    """cli._configure_logs hides the AMQP URL's password, percent-encoded and decoded."""
    settings = Settings(amqp_url="amqp://worker:p%40ss-w0rd@rabbit:5672/", log_format="json")
    cli._configure_logs(settings)
    structlog.get_logger().warning("connect_failed", url=settings.amqp_url, said="no p@ss-w0rd")
    assert [_without_timestamp(e) for e in _json_lines(capsys)] == [{
        "event": "connect_failed", "level": "warning",
        "url": "amqp://worker:[redacted]@rabbit:5672/", "said": "no [redacted]",
    }]


def test_utokens_are_redacted_as_64_hex_runs() -> None:
    """With utoken_hex, a real utoken is hidden in a message, a dict value and bytes, while a
    65-character or uppercase hex run, or any hex without utoken_hex, is kept."""
    utoken = utoken_for("user-1", UTOKEN_SECRET)
    longer, upper = "0" + utoken, utoken.upper()
    event = {"event": f"callback utoken={utoken}, bad", "body": {"u": utoken},
             "raw": f"[{utoken}]".encode(), "kept": [longer, upper]}
    redacted = Redactor([UTOKEN_SECRET], utoken_hex=True)(None, "info", dict(event))
    assert redacted == {"event": "callback utoken=[redacted], bad", "body": {"u": R},
                        "raw": b"[[redacted]]", "kept": [longer, upper]}
    assert Redactor([UTOKEN_SECRET])(None, "info", dict(event)) == event


def test_utoken_in_an_exception_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """A utoken inside a logged exception's message is hidden when a utoken secret is configured."""
    settings = Settings(utoken_secret=Secret(UTOKEN_SECRET), log_format="json")
    cli._configure_logs(settings)
    utoken = utoken_for("user-1", UTOKEN_SECRET)
    structlog.get_logger().error("callback_refused", exc_info=ValueError(f"utoken {utoken}"))
    err = capsys.readouterr().err
    assert (utoken in err, _exception_line("json", err)) == (False, "ValueError: utoken [redacted]")
