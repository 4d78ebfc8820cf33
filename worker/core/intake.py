"""Intake: raw message bytes → a validated command, or an error a producer can act on.

Decoding is done once by the typed decoder in :mod:`worker.contract.messages`; msgspec's
own error texts are rewritten here into ``"<field>: <what is wrong>"`` so every
``invalid`` result names what to fix. Whatever the bytes (nesting bombs, invalid
UTF-8, a megabyte of padding), the only exception that leaves :func:`admit` is
:class:`~worker.contract.errors.InvalidCommand`.

A Stop is never refused for a size cap or for its id: :func:`admit` carries it
out for every toy of its users, under an id of the worker's, and says so in
:attr:`Admitted.notes`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

import msgspec

from worker.contract.errors import InvalidCommand
from worker.contract.messages import COMMAND_NAMES, Command, command_decoder, encoder
from worker.core import rules
from worker.core.rules import DEFAULT_CAPS, MAX_ID_BYTES, Caps

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


#: What an id longer than an AMQP short string is told.
ID_TOO_LONG: Final = f"id: longer than {MAX_ID_BYTES} bytes"


@dataclass(frozen=True, slots=True)
class Admitted:
    """A command the worker takes, with what it had to change to take it (Stops only)."""

    cmd: Command
    #: The producer's id, when it is too long to travel as the worker's own (Stops only).
    long_id: str | None = None
    #: Sentences for the result's message: what was carried out differently, and why.
    notes: tuple[str, ...] = ()


def _decode(body: bytes) -> Command:
    if len(body) > MAX_MESSAGE_BYTES:
        raise InvalidCommand(f"message: larger than {MAX_MESSAGE_BYTES} bytes ({len(body)})")
    try:
        return command_decoder.decode(body)
    except msgspec.ValidationError as exc:
        if body.lstrip()[:1] != b"{":
            raise InvalidCommand("message: must be a JSON object") from None
        raise InvalidCommand(_explain(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidCommand(f"message: not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise InvalidCommand("message: a string is not valid UTF-8") from None
    except RecursionError:
        raise InvalidCommand("message: nested too deeply to be a command") from None


def admit(body: bytes, caps: Caps = DEFAULT_CAPS) -> Admitted:
    """Decode and validate one command message, raising InvalidCommand on any problem."""
    command = _decode(body)
    notes: list[str] = []
    long_id = None
    if rules.is_stop(command):
        command, notes = rules.stop_relief(command, caps)
        if command.id is not None and not rules.id_fits(command.id):
            long_id = command.id
            command = msgspec.structs.replace(command, id=stop_ident(body))
            notes.append(f"{ID_TOO_LONG}: carried out as {command.id}")
    elif command.id is not None and not rules.id_fits(command.id):
        raise InvalidCommand(ID_TOO_LONG)
    rules.validate(command, caps)
    return Admitted(command, long_id, tuple(notes))


def decode(body: bytes, caps: Caps = DEFAULT_CAPS) -> Command:
    """Decode and validate one command message (see :func:`admit`), returning the command."""
    return admit(body, caps).cmd


def stop_ident(body: bytes) -> str:
    """Return the id a Stop without a usable one goes by: the same on every replica."""
    return "stop-" + hashlib.blake2b(body, digest_size=12).hexdigest()


def digest(cmd: Command) -> bytes:
    """Return a digest of a decoded command: the same for a retry serialised differently."""
    return hashlib.blake2b(encoder.encode(cmd), digest_size=16).digest()


def peek(body: bytes) -> tuple[str, list[str], str | None]:
    """Return the command name, users and id of a message that failed intake, as far as known.

    Used only to label an ``invalid`` result; anything not recognisable is
    reported as command ``unknown`` (it becomes a routing key, so producers'
    strings are not echoed into it).
    """
    try:
        raw = _peek_decoder.decode(body) if len(body) <= MAX_MESSAGE_BYTES else None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError):
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
