"""Intake: decoding errors rewritten so a producer knows which field to fix."""

from __future__ import annotations

import pytest

from worker.contract.errors import InvalidCommand
from worker.contract.messages import Function
from worker.core import intake

COMMANDS = (
    "Forget, Function, GetQrCode, GetToyName, GetToys, GetUser, Pattern, PatternV2, Position, "
    "Preset, Stop"
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "message: not valid JSON (JSON is malformed: object keys must be strings "
                       "(byte 1))"),
        (b"\xff\xfe{}", "message: not valid JSON (JSON is malformed: invalid character (byte 0))"),
        (b"[1, 2]", "message: must be a JSON object"),
        (b'"Function"', "message: must be a JSON object"),
        (b'{"uid":"u"}', f"command: required, one of {COMMANDS}"),
        (b'{"command":"Vibrate","uid":"u"}',
         f"command: unknown command, expected one of {COMMANDS}"),
        (b'{"command":1,"uid":"u"}', f"command: unknown command, expected one of {COMMANDS}"),
        (b'{"command":"Function","uid":"u","action":"Vibrate:1","timesec":2}',
         "timesec: unknown field (names are case-sensitive, as in the Lovense docs)"),
        (b'{"command":"Function","uid":"u","action":"Vibrate:1","timeSec":2,"token":"x"}',
         "token: secrets never travel in commands; the worker adds the developer token and "
         "utoken itself"),
        (b'{"command":"GetQrCode","uid":"u","utoken":"x"}',
         "utoken: secrets never travel in commands; the worker adds the developer token and "
         "utoken itself"),
        (b'{"command":"Function","uid":"u","action":"Vibrate:1","timeSec":"2"}',
         "timeSec: expected `float | null`, got `str`"),
        (b'{"command":"Function","uid":"u","action":"Vibrate:1","timeSec":2,"apiVer":2}',
         "apiVer: 2 is not allowed"),
        (b'{"command":"Pattern","uid":"u","rule":"V:1;F:v;S:1000#","strength":"1","timeSec":2,'
         b'"apiVer":1}', "apiVer: 1 is not allowed"),
        (b'{"command":"Function","uid":"u","timeSec":2}', "action: required"),
        (b'{"command":"Function","uid":"u","action":"Vibrate:1","timeSec":2,"lan":{"domain":"x"}}',
         "lan.httpsPort: required"),
        (b'{"command":"PatternV2","uid":"u","type":"Setup","actions":[{"ts":0,"pos":"1"}]}',
         "actions[0].pos: expected `int`, got `str`"),
        (b'{"command":"PatternV2","uid":"u","type":"InitPlay","actions":[{"ts":0,"pos":1}],'
         b'"stopPrevious":2}', "stopPrevious: 2 is not allowed"),
        (b'{"command":"Function","uid":"","action":"Vibrate:1","timeSec":2}',
         "uid: expected `str` of length >= 1"),
        (b'{"command":"Function","uid":"u","action":"Vibrate:1","timeSec":2,"mode":"cloud"}',
         "mode: 'cloud' is not allowed"),
    ],
)
def test_decoding_errors_name_the_field(body: bytes, message: str) -> None:
    """Each malformed message is refused with the field and what is wrong."""
    with pytest.raises(InvalidCommand) as caught:
        intake.decode(body)
    assert str(caught.value) == message


def test_oversized_message_is_refused_before_decoding() -> None:
    """A message over 1 MiB is refused by size."""
    body = b" " * (intake.MAX_MESSAGE_BYTES + 1)
    with pytest.raises(InvalidCommand) as caught:
        intake.decode(body)
    assert str(caught.value) == f"message: larger than 1048576 bytes ({len(body)})"


def test_deeply_nested_message_is_refused_without_crashing() -> None:
    """A deeply nested body is an invalid message, not a crash."""
    body = b'{"command":"Function","uid":"u","lan":' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(InvalidCommand) as caught:
        intake.decode(body)
    assert str(caught.value) == "lan: expected `object | null`, got `array`"
    assert intake.peek(body) == ("unknown", [], None)


def test_valid_message_decodes_to_its_struct() -> None:
    """A valid Function decodes to the Function struct with its fields."""
    cmd = intake.decode(b'{"command":"Function","uid":"u","action":"Vibrate:16","timeSec":20}')
    assert cmd == Function(uid="u", action="Vibrate:16", timeSec=20.0)


@pytest.mark.parametrize(
    ("body", "peeked"),
    [
        (b'{"command":"Preset","uids":["a",1,"b"],"id":"x1"}', ("Preset", ["a", "b"], "x1")),
        (b'{"command":"No.Such.#","uid":"u"}', ("unknown", ["u"], None)),
        (b"[]", ("unknown", [], None)),
        (b"\xff", ("unknown", [], None)),
    ],
)
def test_peek_labels_invalid_messages_safely(
    body: bytes, peeked: tuple[str, list[str], str]
) -> None:
    """Invalid results name known commands only, so producer strings never become routing keys."""
    assert intake.peek(body) == peeked


def test_invalid_utf8_inside_a_string_is_invalid_not_a_crash() -> None:
    """Bytes that are not UTF-8 inside a JSON string are refused with a clear reason."""
    body = b'{"command":"Function","uid":"\xff\xfe","action":"Vibrate:1","timeSec":2}'
    with pytest.raises(InvalidCommand) as caught:
        intake.decode(body)
    assert str(caught.value) == "message: a string is not valid UTF-8"
    assert intake.peek(body) == ("unknown", [], None)
