"""Intake: raw message bytes → a validated command, or an error a producer can act on.

Decoding is done once by the typed decoder in :mod:`worker.messages`; msgspec's
own error texts are rewritten here into ``"<field>: <what is wrong>"`` so every
``invalid`` result names what to fix.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from worker import rules
from worker.errors import InvalidCommand
from worker.messages import COMMAND_NAMES, Command, command_decoder

MAX_MESSAGE_BYTES: Final = 1024 * 1024
_COMMANDS_LISTED: Final = ", ".join(sorted(COMMAND_NAMES))
_AT: Final = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN_FIELD: Final = re.compile(r"Object contains unknown field `(?P<field>[^`]*)`")
_MISSING_FIELD: Final = re.compile(r"Object missing required field `(?P<field>[^`]*)`")
_SECRETS: Final = frozenset({"token", "utoken"})
_peek_decoder: Final = msgspec.json.Decoder()


def _field_path(path: str, extra: str | None = None) -> str:
    path = path.lstrip(".")
    if extra:
        path = f"{path}.{extra}" if path else extra
    return path or "message"


def _explain(exc: msgspec.ValidationError) -> str:
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any text
    what, path = match["what"], match["path"] or ""
    if unknown := _UNKNOWN_FIELD.fullmatch(what):
        field = unknown["field"]
        if field in _SECRETS and not path:
            return (
                f"{field}: secrets never travel in commands; "
                "the worker adds the developer token and utoken itself"
            )
        return (
            f"{_field_path(path, field)}: unknown field (names are case-sensitive, "
            "as in the Lovense docs)"
        )
    if missing := _MISSING_FIELD.fullmatch(what):
        field = missing["field"]
        if field == "command" and not path:
            return f"command: required, one of {_COMMANDS_LISTED}"
        return f"{_field_path(path, field)}: required"
    if path == ".command":
        return f"command: unknown command, expected one of {_COMMANDS_LISTED}"
    if what.startswith("Invalid enum value"):
        return f"{_field_path(path)}: {what[len('Invalid enum value') :].strip()} is not allowed"
    return f"{_field_path(path)}: {what[0].lower()}{what[1:]}"


def decode(body: bytes) -> Command:
    """Decode and validate one command message, raising InvalidCommand on any problem."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise InvalidCommand(f"message: larger than {MAX_MESSAGE_BYTES} bytes ({len(body)})")
    try:
        command = command_decoder.decode(body)
    except msgspec.ValidationError as exc:
        if body.lstrip()[:1] != b"{":
            raise InvalidCommand("message: must be a JSON object") from None
        raise InvalidCommand(_explain(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidCommand(f"message: not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise InvalidCommand("message: a string is not valid UTF-8") from None
    rules.validate(command)
    return command


def peek(body: bytes) -> tuple[str, list[str], str | None]:
    """Return the command name, users and id of a message that failed intake, as far as known.

    Used only to label an ``invalid`` result; anything not recognisable is
    reported as command ``unknown`` (it becomes a routing key, so producers'
    strings are not echoed into it).
    """
    try:
        raw = _peek_decoder.decode(body) if len(body) <= MAX_MESSAGE_BYTES else None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raw = None
    if not isinstance(raw, dict):
        return "unknown", [], None
    name = raw.get("command")
    command = name if isinstance(name, str) and name in COMMAND_NAMES else "unknown"
    uids: list[str] = []
    if isinstance(raw.get("uid"), str):
        uids = [raw["uid"]]
    elif isinstance(raw.get("uids"), list):
        uids = [u for u in raw["uids"] if isinstance(u, str)]
    ident = raw.get("id")
    return command, uids, ident if isinstance(ident, str) and ident else None
