"""The request bodies sent to Lovense for each command and route."""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from worker.contract.messages import command_decoder
from worker.core import bodies


def _cmd(raw: str):  # type: ignore[no-untyped-def]
    return command_decoder.decode(raw.encode())


def test_lan_body_keeps_docs_fields_and_adds_api_ver() -> None:
    """A Function goes to the app with its own fields, toy and apiVer 1, whole numbers as ints."""
    cmd = _cmd('{"command":"Function","uid":"u","action":"Vibrate:16","timeSec":20.0,'
               '"loopRunningSec":9,"loopPauseSec":4,"toy":"ff922f7fd345","stopPrevious":0}')
    body = bodies.lan_body(cmd)
    assert body == {"command": "Function", "action": "Vibrate:16", "timeSec": 20,
                    "loopRunningSec": 9, "loopPauseSec": 4, "stopPrevious": 0,
                    "toy": "ff922f7fd345", "apiVer": 1}
    assert isinstance(body["timeSec"], int)


def test_fractional_seconds_stay_fractional() -> None:
    """A timeSec of 2.5 goes out as 2.5."""
    cmd = _cmd('{"command":"Function","uid":"u","action":"Vibrate:1","timeSec":2.5}')
    assert bodies.lan_body(cmd)["timeSec"] == 2.5


def test_stop_shorthand_is_a_function_stop() -> None:
    """The Stop shorthand is sent as the docs' Function Stop."""
    cmd = _cmd('{"command":"Stop","uid":"u","toy":"t1"}')
    assert bodies.lan_body(cmd) == {"command": "Function", "action": "Stop", "timeSec": 0,
                                    "toy": "t1", "apiVer": 1}


def test_pattern_uses_api_ver_2() -> None:
    """Pattern requests carry apiVer 2."""
    cmd = _cmd('{"command":"Pattern","uid":"u","rule":"V:1;F:v;S:1000#","strength":"1;2",'
               '"timeSec":9}')
    assert bodies.lan_body(cmd)["apiVer"] == 2


def test_position_value_is_sent_as_a_string() -> None:
    """Position's value goes out as the string the docs show, whatever the producer sent."""
    cmd = _cmd('{"command":"Position","uid":"u","value":42}')
    assert bodies.lan_body(cmd) == {"command": "Position", "value": "42", "apiVer": 1}


def test_init_play_sends_stop_previous_only_when_given() -> None:
    """InitPlay carries stopPrevious as given; without it the app's own default (0) applies."""
    given = _cmd('{"command":"PatternV2","uid":"u","type":"InitPlay","stopPrevious":1,'
                 '"actions":[{"ts":0,"pos":10},{"ts":500,"pos":90}],"startTime":0}')
    left_out = _cmd('{"command":"PatternV2","uid":"u","type":"InitPlay",'
                    '"actions":[{"ts":0,"pos":10}]}')
    # actions stay Structs until the request is encoded: compare what goes on the wire.
    assert msgspec.to_builtins(bodies.lan_body(given)) == {
        "command": "PatternV2", "type": "InitPlay",
        "actions": [{"ts": 0, "pos": 10}, {"ts": 500, "pos": 90}], "startTime": 0,
        "stopPrevious": 1, "apiVer": 1}
    assert msgspec.to_builtins(bodies.lan_body(left_out)) == {
        "command": "PatternV2", "type": "InitPlay", "actions": [{"ts": 0, "pos": 10}],
        "apiVer": 1}


def test_get_toys_has_no_api_ver() -> None:
    """GetToys and GetToyName are sent exactly as the docs' examples, command only."""
    assert bodies.lan_body(_cmd('{"command":"GetToys","uid":"u"}')) == {"command": "GetToys"}
    assert bodies.lan_body(_cmd('{"command":"GetToyName","uid":"u"}')) == {
        "command": "GetToyName"}


def test_server_body_comma_joins_users_and_adds_token() -> None:
    """The server body carries the token and every uid joined by commas."""
    cmd = _cmd('{"command":"Preset","uids":["a","b"],"name":"wave","timeSec":0}')
    assert bodies.server_body(cmd, "tok", ["a", "b"]) == {
        "token": "tok", "uid": "a,b", "command": "Preset", "name": "wave", "timeSec": 0,
        "apiVer": 1}


def test_utoken_is_hmac_sha256_of_uid() -> None:
    """utoken is the hex HMAC-SHA256 of the uid under the secret, empty without a secret."""
    expected = hmac.new(b"s3cret", b"user-1", hashlib.sha256).hexdigest()
    assert bodies.utoken_for("user-1", "s3cret") == expected
    assert bodies.utoken_for("user-1", "") == ""


def test_qr_body_defaults_uname_to_uid() -> None:
    """GetQrCode without uname names the user by uid."""
    cmd = _cmd('{"command":"GetQrCode","uid":"u9"}')
    assert bodies.qr_body(cmd, "tok", "ut") == {"token": "tok", "uid": "u9", "uname": "u9",
                                               "utoken": "ut", "v": 2}


def test_safety_cap_limits_open_ended_and_long_times() -> None:
    """With LOVENSE_MAX_TIME_SEC set, timeSec 0 and longer times are capped; Stop is untouched."""
    forever = _cmd('{"command":"Function","uid":"u","action":"Vibrate:5","timeSec":0}')
    long = _cmd('{"command":"Preset","uid":"u","name":"wave","timeSec":900}')
    short = _cmd('{"command":"Preset","uid":"u","name":"wave","timeSec":30}')
    stop = _cmd('{"command":"Function","uid":"u","action":"Stop","timeSec":0}')
    assert bodies.lan_body(forever, 600)["timeSec"] == 600
    assert bodies.lan_body(long, 600)["timeSec"] == 600
    assert bodies.lan_body(short, 600)["timeSec"] == 30
    assert bodies.lan_body(stop, 600)["timeSec"] == 0
    assert bodies.lan_body(forever, 0)["timeSec"] == 0


def test_stop_bodies_for_some_toys_or_all() -> None:
    """Stops name one toy as a string, several as a list, and all toys by leaving toy out."""
    assert bodies.stop_body(None) == {"command": "Function", "action": "Stop", "timeSec": 0,
                                      "apiVer": 1}
    assert bodies.stop_body(["t1"])["toy"] == "t1"
    assert bodies.pattern_v2_stop_body(["a", "b"]) == {"command": "PatternV2", "type": "Stop",
                                                       "toy": ["a", "b"], "apiVer": 1}
