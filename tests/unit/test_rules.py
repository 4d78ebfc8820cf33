"""Tests for worker.core.rules: the documented Lovense rules and route limits."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.contract.errors import InvalidCommand
from worker.contract.messages import (
    Command,
    Function,
    GetQrCode,
    GetToys,
    LanTarget,
    Pattern,
    PatternAction,
    PatternV2,
    Position,
    Preset,
    Stop,
    command_decoder,
)
from worker.core.rules import (
    PatternRule,
    check_route,
    needs_lan,
    parse_action,
    parse_rule,
    parse_strength,
    position_value,
    validate,
)

TOKEN = "FE1TxWpTciAl4E2QfYEfPLvo2jf8V6WJWkLJtzLqv/nB2AMos9XuWzgQNrbXSi6n"
SERVER_ACTIONS = (
    "action: {} needs the LAN route; Lovense's server API takes "
    "Vibrate, Rotate, Pump, Thrusting, Fingering, Suction and Stop"
)
LAN_ONLY = (
    "command: {} needs the LAN route; Lovense's server API does not carry it "
    '(use mode "lan" or "auto")'
)
SERVER_ONLY = (
    "command: GetQrCode needs the server route; the Lovense Remote app does not carry it "
    '(use mode "server" or "auto")'
)
TIME_SEC = "timeSec: must be 0 (run until stopped) or more than 1 second, got {}"
TIME_SEC_REQUIRED = "timeSec: required; give 0 to run until stopped or more than 1 second"

# The request examples of Lovense's Standard API docs, as printed (Position from its newer
# pages); docs/lovense-api.md summarises the rules they show.
DOC_EXAMPLES: dict[str, dict[str, Any]] = {
    "lan-function-1": {
        "command": "Function",
        "action": "Vibrate:16",
        "timeSec": 20,
        "loopRunningSec": 9,
        "loopPauseSec": 4,
        "toy": "ff922f7fd345",
        "apiVer": 1,
    },
    "lan-function-2": {
        "command": "Function",
        "action": "Vibrate:2,Rotate:3,Pump:3",
        "timeSec": 20,
        "loopRunningSec": 9,
        "loopPauseSec": 4,
        "apiVer": 1,
    },
    "lan-function-3": {
        "command": "Function",
        "action": "Vibrate:2,All:10",
        "timeSec": 20,
        "loopRunningSec": 9,
        "loopPauseSec": 4,
        "apiVer": 1,
    },
    "lan-function-4": {
        "command": "Function",
        "action": "Stroke:0-20,Thrusting:10",
        "timeSec": 20,
        "apiVer": 1,
    },
    "lan-function-5": {"command": "Function", "action": "Stop", "timeSec": 0, "apiVer": 1},
    "lan-pattern-1": {
        "command": "Pattern",
        "rule": "V:1;F:v;S:1000#",
        "strength": "20;20;5;20;10",
        "timeSec": 9,
        "toy": "ff922f7fd345",
        "apiVer": 2,
    },
    "lan-pattern-2": {
        "command": "Pattern",
        "rule": "V:1;F:v,r,p;S:100#",
        "strength": "20;20;5;20;10",
        "timeSec": 9,
        "apiVer": 2,
    },
    "lan-patternv2-setup": {
        "command": "PatternV2",
        "type": "Setup",
        "actions": [
            {"ts": 0, "pos": 10},
            {"ts": 100, "pos": 100},
            {"ts": 200, "pos": 10},
            {"ts": 400, "pos": 15},
            {"ts": 800, "pos": 88},
        ],
        "apiVer": 1,
    },
    "lan-patternv2-play": {
        "command": "PatternV2",
        "type": "Play",
        "toy": "ff922f7fd345",
        "startTime": 100,
        "offsetTime": 300,
        "apiVer": 1,
    },
    "lan-patternv2-stop": {
        "command": "PatternV2",
        "type": "Stop",
        "toy": "ff922f7fd345",
        "apiVer": 1,
    },
    "lan-preset": {
        "command": "Preset",
        "name": "pulse",
        "timeSec": 9,
        "toy": "ff922f7fd345",
        "apiVer": 1,
    },
    "lan-position": {"command": "Position", "value": "50", "toy": "ff922f7fd345", "apiVer": 1},
    "lan-gettoys": {"command": "GetToys"},
    "lan-gettoyname": {"command": "GetToyName"},
    "server-function-1": {
        "token": TOKEN,
        "uid": "1132fsdfsd",
        "command": "Function",
        "action": "Vibrate:16",
        "timeSec": 20,
        "loopRunningSec": 9,
        "loopPauseSec": 4,
        "apiVer": 1,
    },
    "server-function-2": {
        "token": TOKEN,
        "uid": "1132fsdfsd",
        "command": "Function",
        "action": "Vibrate:2,Rotate:3,Pump:3",
        "timeSec": 20,
        "loopRunningSec": 9,
        "loopPauseSec": 4,
        "apiVer": 1,
    },
    "server-pattern-1": {
        "token": TOKEN,
        "uid": "1ads22adsf",
        "command": "Pattern",
        "rule": "V:1;F:v;S:1000#",
        "strength": "20;20;5;20;10",
        "timeSec": 9,
        "apiVer": 2,
    },
    "server-pattern-2": {
        "token": TOKEN,
        "uid": "1ads22adsf",
        "command": "Pattern",
        "rule": "V:1;F:v,r,p;S:100#",
        "strength": "20;20;5;20;10",
        "timeSec": 9,
        "apiVer": 2,
    },
    "server-preset": {
        "token": TOKEN,
        "uid": "1adsf2323",
        "command": "Preset",
        "name": "pulse",
        "timeSec": 9,
        "apiVer": 1,
    },
}
QR_EXAMPLE: dict[str, Any] = {
    "token": "your developer token",
    "uid": "11111",
    "uname": "user name",
    "utoken": "0123456789abcdef0123456789abcdef",
    "v": 2,
}

# Why Lovense's server API cannot carry an example, or None when it can.
SERVER_REFUSALS: dict[str, str | None] = {
    "lan-function-1": None,
    "lan-function-2": None,
    "lan-function-3": SERVER_ACTIONS.format("All"),
    "lan-function-4": SERVER_ACTIONS.format("Stroke"),
    "lan-function-5": None,
    "lan-pattern-1": None,
    "lan-pattern-2": None,
    "lan-patternv2-setup": LAN_ONLY.format("PatternV2"),
    "lan-patternv2-play": LAN_ONLY.format("PatternV2"),
    "lan-patternv2-stop": LAN_ONLY.format("PatternV2"),
    "lan-preset": None,
    "lan-position": LAN_ONLY.format("Position"),
    "lan-gettoys": LAN_ONLY.format("GetToys"),
    "lan-gettoyname": LAN_ONLY.format("GetToyName"),
    "server-function-1": None,
    "server-function-2": None,
    "server-pattern-1": None,
    "server-pattern-2": None,
    "server-preset": None,
}


def decode(payload: dict[str, Any]) -> Command:
    """Decode payload through the worker's own JSON decoder, as a consumed message would be."""
    cmd: Command = command_decoder.decode(msgspec.json.encode(payload))
    return cmd


def doc_example(name: str) -> Command:
    """Decode a docs example for user u1, leaving out the developer token."""
    payload = {k: v for k, v in DOC_EXAMPLES[name].items() if k != "token"}
    return decode({**payload, "uid": "u1"})


def qr_example() -> Command:
    """Decode the getQrCode example, keeping uid, uname and v."""
    payload = {k: v for k, v in QR_EXAMPLE.items() if k not in ("token", "utoken")}
    return decode({"command": "GetQrCode", **payload})


def rejection(cmd: Command) -> str:
    """Return the message validate raises for cmd."""
    with pytest.raises(InvalidCommand) as caught:
        validate(cmd)
    return str(caught.value)


# --- The docs' own examples ------------------------------------------------------------------


def test_examples_cover_every_documented_request() -> None:
    """The example table holds all 19 command examples of the docs and pins each server verdict."""
    assert len(DOC_EXAMPLES) == 19
    assert SERVER_REFUSALS.keys() == DOC_EXAMPLES.keys()


@pytest.mark.parametrize("name", DOC_EXAMPLES)
def test_doc_example_passes_validate(name: str) -> None:
    """Every command example in the docs decodes and passes validate in mode auto."""
    cmd = doc_example(name)
    assert cmd.mode == "auto"
    validate(cmd)


@pytest.mark.parametrize("name", DOC_EXAMPLES)
def test_doc_example_is_carried_by_the_lan(name: str) -> None:
    """Every command example in the docs can go to the Lovense Remote app on the LAN."""
    cmd = doc_example(name)
    check_route(cmd, "lan")
    validate(msgspec.structs.replace(cmd, mode="lan"))


@pytest.mark.parametrize(("name", "refusal"), SERVER_REFUSALS.items())
def test_doc_example_server_route_verdict(name: str, refusal: str | None) -> None:
    """Examples using only server commands and actions pass the server route; the rest fail."""
    cmd = doc_example(name)
    server_cmd = msgspec.structs.replace(cmd, mode="server")
    assert needs_lan(cmd) is (refusal is not None)
    if refusal is None:
        check_route(cmd, "server")
        validate(server_cmd)
        return
    with pytest.raises(InvalidCommand) as caught:
        check_route(cmd, "server")
    assert str(caught.value) == refusal
    assert rejection(server_cmd) == refusal


def test_qr_code_example_passes_on_the_server_route_only() -> None:
    """The getQrCode example validates, is carried by the server and is refused by the LAN."""
    cmd = qr_example()
    assert cmd == GetQrCode(uid="11111", uname="user name", v=2)
    validate(cmd)
    validate(msgspec.structs.replace(cmd, mode="server"))
    check_route(cmd, "server")
    assert needs_lan(cmd) is False
    with pytest.raises(InvalidCommand) as caught:
        check_route(cmd, "lan")
    assert str(caught.value) == SERVER_ONLY


# --- Invalid commands, each with its exact message --------------------------------------------


def function(**fields: Any) -> dict[str, Any]:
    """Return a valid Function payload changed by fields (None removes a field)."""
    payload = {"command": "Function", "uid": "u1", "action": "Vibrate:10", "timeSec": 10, **fields}
    return {k: v for k, v in payload.items() if v is not None}


def pattern(**fields: Any) -> dict[str, Any]:
    """Return a valid Pattern payload changed by fields (None removes a field)."""
    payload = {
        "command": "Pattern",
        "uid": "u1",
        "rule": "V:1;F:v;S:1000#",
        "strength": "20;5",
        "timeSec": 9,
        "apiVer": 2,
        **fields,
    }
    return {k: v for k, v in payload.items() if v is not None}


def pattern_v2(kind: str, **fields: Any) -> dict[str, Any]:
    """Return a PatternV2 payload of the given type with fields."""
    return {"command": "PatternV2", "uid": "u1", "type": kind, **fields}


def preset(**fields: Any) -> dict[str, Any]:
    """Return a valid Preset payload changed by fields (None removes a field)."""
    payload = {"command": "Preset", "uid": "u1", "name": "wave", "timeSec": 9, **fields}
    return {k: v for k, v in payload.items() if v is not None}


def other(command: str, **fields: Any) -> dict[str, Any]:
    """Return a payload for command for user u1 with fields (None removes a field)."""
    payload = {"command": command, "uid": "u1", **fields}
    return {k: v for k, v in payload.items() if v is not None}


ACTIONS = [{"ts": 0, "pos": 10}, {"ts": 200, "pos": 50}]
LAN = {"domain": "192-168-1-44.lovense.club", "httpsPort": 34568}
ALL_ACTIONS = (
    "Vibrate, Rotate, Pump, Thrusting, Fingering, Suction, Oscillate, Depth, All, Stroke and Stop"
)

INVALID: list[tuple[str, dict[str, Any], str]] = [
    # Who the command is for.
    ("no-uid", other("Stop", uid=None), "uid: give exactly one of uid or uids"),
    ("uid-and-uids", other("Stop", uids=["u2"]), "uid: give exactly one of uid or uids"),
    ("empty-uids", other("Stop", uid=None, uids=[]), "uids: must list at least one user id"),
    (
        "too-many-uids",
        other("GetToys", uid=None, uids=[f"u{n}" for n in range(10_001)]),
        "uids: at most 10,000 user ids (LOVENSE_MAX_UIDS), got 10,001",
    ),
    (
        "duplicate-uid",
        other("Stop", uid=None, uids=["a", "b", "a"]),
        "uids[2]: 'a' is listed more than once",
    ),
    (
        "uid-comma",
        other("Stop", uid="a,b"),
        "uid: must not contain a comma (the server route joins user ids with commas), got 'a,b'",
    ),
    (
        "uids-comma",
        other("Stop", uid=None, uids=["a", "b,c"]),
        "uids[1]: must not contain a comma (the server route joins user ids with commas), "
        "got 'b,c'",
    ),
    (
        "uid-newline",
        other("Stop", uid="a\nb"),
        "uid: must not contain control characters, got 'a\\nb'",
    ),
    (
        "uids-delete-char",
        other("Stop", uid=None, uids=["x\x7f"]),
        "uids[0]: must not contain control characters, got 'x\\x7f'",
    ),
    # The LAN app to call.
    (
        "lan-with-server-mode",
        other("Stop", lan=LAN, mode="server"),
        'lan: mode "server" never calls the app on the LAN; remove lan or use mode "lan" or "auto"',
    ),
    (
        "lan-with-uids",
        other("Stop", uid=None, uids=["u1", "u2"], lan=LAN),
        "lan: names one app, so give a single uid instead of uids",
    ),
    (
        "lan-port-zero",
        other("Stop", lan={**LAN, "httpsPort": 0}),
        "lan.httpsPort: must be 1–65535, got 0",
    ),
    (
        "lan-port-too-high",
        other("Stop", lan={**LAN, "httpsPort": 65_536}),
        "lan.httpsPort: must be 1–65535, got 65536",
    ),
    (
        "empty-toy-list",
        other("Stop", toy=[]),
        "toy: give at least one toy id, or leave toy out for all toys",
    ),
    # Routes.
    (
        "server-patternv2",
        pattern_v2("Setup", actions=ACTIONS, mode="server"),
        LAN_ONLY.format("PatternV2"),
    ),
    ("server-position", other("Position", value=5, mode="server"), LAN_ONLY.format("Position")),
    ("server-gettoys", other("GetToys", mode="server"), LAN_ONLY.format("GetToys")),
    ("server-gettoyname", other("GetToyName", mode="server"), LAN_ONLY.format("GetToyName")),
    ("server-depth", function(action="Depth:2", mode="server"), SERVER_ACTIONS.format("Depth")),
    (
        "server-oscillate",
        function(action="Vibrate:3,Oscillate:2", mode="server"),
        SERVER_ACTIONS.format("Oscillate"),
    ),
    ("server-all", function(action="All:5", mode="server"), SERVER_ACTIONS.format("All")),
    (
        "server-stroke",
        function(action="Thrusting:5,Stroke:0-40", mode="server"),
        SERVER_ACTIONS.format("Stroke"),
    ),
    (
        "server-depth-feature",
        pattern(rule="V:1;F:v,d;S:500#", mode="server"),
        "rule: feature d needs the LAN route; "
        "Lovense's server API takes features v, r, p, t, f and s",
    ),
    ("lan-qr-code", other("GetQrCode", mode="lan"), SERVER_ONLY),
    (
        "server-uids-with-toy",
        other("Function", uid=None, uids=["u1", "u2"], toy="ff922f7fd345", mode="server",
              action="Vibrate:5", timeSec=2),
        "toy: Lovense's server ignores toy when a command goes to several users, "
        "so every toy would respond; give a single uid or leave toy out",
    ),
    # Function actions.
    (
        "empty-action",
        function(action=""),
        "action: must not be empty; give e.g. Vibrate:10 or Stop",
    ),
    (
        "empty-action-item",
        function(action="Vibrate:5,"),
        "action: empty item in 'Vibrate:5,'; separate actions with one ','",
    ),
    (
        "unknown-action",
        function(action="Vibe:5"),
        f"action: unknown action 'Vibe'; actions are {ALL_ACTIONS}",
    ),
    (
        "lowercase-action",
        function(action="vibrate:5"),
        f"action: unknown action 'vibrate'; actions are {ALL_ACTIONS}",
    ),
    (
        "missing-level",
        function(action="Vibrate"),
        "action: Vibrate needs a level 0–20, like Vibrate:10",
    ),
    ("missing-pump-level", function(action="Pump"), "action: Pump needs a level 0–3, like Pump:1"),
    (
        "fractional-level",
        function(action="Vibrate:2.5"),
        "action: Vibrate level must be a whole number 0–20, got '2.5'",
    ),
    (
        "spaced-level",
        function(action="Rotate: 5"),
        "action: Rotate level must be a whole number 0–20, got ' 5'",
    ),
    ("vibrate-25", function(action="Vibrate:25"), "action: Vibrate level 25 is out of range 0–20"),
    ("pump-4", function(action="Pump:4"), "action: Pump level 4 is out of range 0–3"),
    ("depth-negative", function(action="Depth:-1"), "action: Depth level -1 is out of range 0–3"),
    (
        "all-21",
        function(action="Vibrate:2,All:21"),
        "action: All level 21 is out of range 0–20",
    ),
    (
        "repeated-action",
        function(action="Vibrate:5,Vibrate:6"),
        "action: Vibrate is given more than once in 'Vibrate:5,Vibrate:6'",
    ),
    ("stop-with-level", function(action="Stop:0"), "action: Stop takes no level, got 'Stop:0'"),
    (
        "stop-with-others",
        function(action="Vibrate:5,Stop"),
        "action: Stop must stand alone, got 'Vibrate:5,Stop'",
    ),
    (
        "stroke-alone",
        function(action="Stroke:0-20"),
        "action: Stroke works only together with Thrusting, e.g. Stroke:0-20,Thrusting:10",
    ),
    (
        "stroke-no-range",
        function(action="Stroke,Thrusting:5"),
        "action: Stroke needs a min-max range, like Stroke:0-20",
    ),
    (
        "stroke-single-number",
        function(action="Stroke:10,Thrusting:5"),
        "action: Stroke needs min-max whole numbers within 0–100, like Stroke:0-20, got '10'",
    ),
    (
        "stroke-above-100",
        function(action="Stroke:50-120,Thrusting:5"),
        "action: Stroke 50-120 is out of range 0–100",
    ),
    (
        "stroke-reversed",
        function(action="Stroke:60-40,Thrusting:5"),
        "action: Stroke minimum 60 must be below the maximum 40",
    ),
    (
        "stroke-narrow",
        function(action="Stroke:10-29,Thrusting:5"),
        "action: Stroke 10-29 spans 19; min and max must be at least 20 apart",
    ),
    # Function times.
    ("function-no-time", function(timeSec=None), TIME_SEC_REQUIRED),
    ("function-half-second", function(timeSec=0.5), TIME_SEC.format("0.5")),
    ("function-one-second", function(timeSec=1), TIME_SEC.format("1")),
    ("function-negative-time", function(timeSec=-3), TIME_SEC.format("-3")),
    ("stop-half-second", function(action="Stop", timeSec=0.5), TIME_SEC.format("0.5")),
    (
        "loop-running-alone",
        function(loopRunningSec=9),
        "loopPauseSec: required with loopRunningSec; give both or neither",
    ),
    (
        "loop-pause-alone",
        function(loopPauseSec=4),
        "loopRunningSec: required with loopPauseSec; give both or neither",
    ),
    (
        "loops-without-time",
        function(action="Stop", timeSec=None, loopRunningSec=9, loopPauseSec=4),
        "loopRunningSec: loops need timeSec, the total running time",
    ),
    (
        "loop-running-one",
        function(loopRunningSec=1, loopPauseSec=4),
        "loopRunningSec: must be more than 1 second, got 1",
    ),
    (
        "loop-pause-short",
        function(loopRunningSec=9, loopPauseSec=0.5),
        "loopPauseSec: must be more than 1 second, got 0.5",
    ),
    # Pattern rule and strength.
    (
        "rule-version-2",
        pattern(rule="V:2;F:v;S:1000#"),
        "rule: must look like V:1;F:v,r;S:1000# (got 'V:2;F:v;S:1000#')",
    ),
    (
        "rule-without-hash",
        pattern(rule="V:1;F:v;S:1000"),
        "rule: must look like V:1;F:v,r;S:1000# (got 'V:1;F:v;S:1000')",
    ),
    (
        "rule-unknown-feature",
        pattern(rule="V:1;F:v,x;S:1000#"),
        "rule: unknown feature 'x'; "
        "features are v, r, p, t, f, s and d (or none, for all functions)",
    ),
    (
        "rule-repeated-feature",
        pattern(rule="V:1;F:v,r,v;S:1000#"),
        "rule: feature v is listed more than once",
    ),
    (
        "rule-empty-feature",
        pattern(rule="V:1;F:v,,r;S:1000#"),
        "rule: features must be letters separated by single commas, got 'v,,r'",
    ),
    (
        "rule-fast-interval",
        pattern(rule="V:1;F:v;S:99#"),
        "rule: interval S must be at least 100 ms, got 99",
    ),
    (
        "strength-empty",
        pattern(strength=""),
        "strength: give 1–50 levels 0–20 separated by ';', like 20;20;5",
    ),
    ("strength-51", pattern(strength=";".join(["5"] * 51)), "strength: at most 50 levels, got 51"),
    (
        "strength-empty-item",
        pattern(strength="20;;5"),
        "strength: level 2 is empty; separate levels with one ';'",
    ),
    (
        "strength-trailing-separator",
        pattern(strength="20;5;"),
        "strength: level 3 is empty; separate levels with one ';'",
    ),
    (
        "strength-word",
        pattern(strength="20;x"),
        "strength: level 2 must be a whole number 0–20, got 'x'",
    ),
    ("strength-21", pattern(strength="20;21"), "strength: level 2 is 21, out of range 0–20"),
    ("pattern-no-time", pattern(timeSec=None), TIME_SEC_REQUIRED),
    ("pattern-one-second", pattern(timeSec=1), TIME_SEC.format("1")),
    # PatternV2 operations.
    (
        "setup-without-actions",
        pattern_v2("Setup"),
        'actions: PatternV2 Setup needs at least one action, like {"ts": 0, "pos": 10}',
    ),
    (
        "setup-empty-actions",
        pattern_v2("Setup", actions=[]),
        'actions: PatternV2 Setup needs at least one action, like {"ts": 0, "pos": 10}',
    ),
    (
        "initplay-without-actions",
        pattern_v2("InitPlay", startTime=0),
        'actions: PatternV2 InitPlay needs at least one action, like {"ts": 0, "pos": 10}',
    ),
    (
        "setup-start-time",
        pattern_v2("Setup", actions=ACTIONS, startTime=0),
        "startTime: PatternV2 Setup takes no startTime (only Play and InitPlay do)",
    ),
    (
        "setup-time-ms",
        pattern_v2("Setup", actions=ACTIONS, timeMs=500),
        "timeMs: PatternV2 Setup takes no timeMs (only Play and InitPlay do)",
    ),
    (
        "play-actions",
        pattern_v2("Play", actions=ACTIONS),
        "actions: PatternV2 Play takes no actions (only Setup and InitPlay do)",
    ),
    (
        "stop-actions",
        pattern_v2("Stop", actions=ACTIONS),
        "actions: PatternV2 Stop takes no actions (only Setup and InitPlay do)",
    ),
    (
        "synctime-offset",
        pattern_v2("SyncTime", offsetTime=20),
        "offsetTime: PatternV2 SyncTime takes no offsetTime (only Play and InitPlay do)",
    ),
    (
        "ts-repeated",
        pattern_v2(
            "Setup",
            actions=[
                {"ts": 0, "pos": 1},
                {"ts": 200, "pos": 2},
                {"ts": 400, "pos": 3},
                {"ts": 400, "pos": 4},
            ],
        ),
        "actions[3].ts: must be greater than the previous ts (400), got 400",
    ),
    (
        "ts-decreasing",
        pattern_v2("InitPlay", actions=[{"ts": 300, "pos": 1}, {"ts": 100, "pos": 2}]),
        "actions[1].ts: must be greater than the previous ts (300), got 100",
    ),
    (
        "ts-too-late",
        pattern_v2("Setup", actions=[{"ts": 7_200_001, "pos": 1}]),
        "actions[0].ts: must be 0–7,200,000 ms, got 7200001",
    ),
    (
        "ts-negative",
        pattern_v2("Setup", actions=[{"ts": -1, "pos": 1}]),
        "actions[0].ts: must be 0–7,200,000 ms, got -1",
    ),
    (
        "pos-101",
        pattern_v2("Setup", actions=[{"ts": 0, "pos": 1}, {"ts": 100, "pos": 101}]),
        "actions[1].pos: must be 0–100, got 101",
    ),
    (
        "pos-negative",
        pattern_v2("Setup", actions=[{"ts": 0, "pos": -1}]),
        "actions[0].pos: must be 0–100, got -1",
    ),
    (
        "play-start-too-late",
        pattern_v2("Play", startTime=7_200_001),
        "startTime: must be 0–7,200,000 ms, got 7200001",
    ),
    (
        "initplay-start-negative",
        pattern_v2("InitPlay", actions=ACTIONS, startTime=-5),
        "startTime: must be 0–7,200,000 ms, got -5",
    ),
    (
        "play-offset-too-large",
        pattern_v2("Play", offsetTime=15_001),
        "offsetTime: must be 0–15,000 ms, got 15001",
    ),
    (
        "play-offset-negative",
        pattern_v2("Play", offsetTime=-1),
        "offsetTime: must be 0–15,000 ms, got -1",
    ),
    (
        "play-time-ms-100",
        pattern_v2("Play", timeMs=100),
        "timeMs: must be more than 100 ms, got 100",
    ),
    (
        "play-stop-previous",
        pattern_v2("Play", stopPrevious=1),
        "stopPrevious: PatternV2 Play takes no stopPrevious (only InitPlay does)",
    ),
    (
        "setup-stop-previous",
        pattern_v2("Setup", actions=ACTIONS, stopPrevious=0),
        "stopPrevious: PatternV2 Setup takes no stopPrevious (only InitPlay does)",
    ),
    # Preset.
    (
        "preset-unknown",
        preset(name="Pulse"),
        "name: unknown preset 'Pulse'; presets are pulse, wave, fireworks and earthquake",
    ),
    ("preset-no-time", preset(timeSec=None), TIME_SEC_REQUIRED),
    ("preset-short-time", preset(timeSec=0.9), TIME_SEC.format("0.9")),
    # Position.
    (
        "position-word",
        other("Position", value="abc"),
        "value: must be a whole number 0–100, got 'abc'",
    ),
    ("position-empty", other("Position", value=""), "value: must be a whole number 0–100, got ''"),
    (
        "position-negative-string",
        other("Position", value="-5"),
        "value: must be a whole number 0–100, got '-5'",
    ),
    ("position-101-string", other("Position", value="101"), "value: 101 is out of range 0–100"),
    ("position-101", other("Position", value=101), "value: 101 is out of range 0–100"),
    ("position-negative", other("Position", value=-1), "value: -1 is out of range 0–100"),
    # GetQrCode.
    (
        "qr-code-uids",
        other("GetQrCode", uid=None, uids=["u1"]),
        "uids: GetQrCode pairs one user; give a single uid",
    ),
    (
        "qr-code-toy",
        other("GetQrCode", toy="ff922f7fd345"),
        "toy: GetQrCode takes no toy; remove it",
    ),
    (
        "qr-code-lan",
        other("GetQrCode", lan=LAN),
        "lan: GetQrCode goes to Lovense's server; remove lan",
    ),
]


def test_invalid_cases_have_distinct_names_and_at_least_40_messages() -> None:
    """The invalid table names each case once and pins at least 40 distinct messages."""
    assert len({name for name, _, _ in INVALID}) == len(INVALID)
    assert len({message for _, _, message in INVALID}) >= 40


@pytest.mark.parametrize(
    ("payload", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_command_is_rejected_with_exact_message(
    payload: dict[str, Any], message: str
) -> None:
    """A command that breaks a documented rule is rejected with a message naming field and rule."""
    assert rejection(decode(payload)) == message


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        (
            Function(uid="u1", action="Vibrate:1", timeSec=math.inf),
            "timeSec: must be a finite number, got inf",
        ),
        (
            Function(uid="u1", action="Vibrate:1", timeSec=math.nan),
            "timeSec: must be a finite number, got nan",
        ),
        (
            Function(
                uid="u1", action="Vibrate:1", timeSec=9, loopRunningSec=math.inf, loopPauseSec=2
            ),
            "loopRunningSec: must be a finite number, got inf",
        ),
        (
            Function(
                uid="u1", action="Vibrate:1", timeSec=9, loopRunningSec=2, loopPauseSec=-math.inf
            ),
            "loopPauseSec: must be a finite number, got -inf",
        ),
        (
            Preset(uid="u1", name="wave", timeSec=math.inf),
            "timeSec: must be a finite number, got inf",
        ),
        (
            PatternV2(uid="u1", type="Play", timeMs=math.nan),
            "timeMs: must be a finite number, got nan",
        ),
    ],
    ids=[
        "time-inf",
        "time-nan",
        "loop-running-inf",
        "loop-pause-minus-inf",
        "preset-inf",
        "time-ms-nan",
    ],
)
def test_non_finite_times_are_rejected(cmd: Command, message: str) -> None:
    """Infinite or NaN times, which JSON cannot carry but Python can, are rejected by name."""
    assert rejection(cmd) == message


# --- What valid commands parse to -------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "parsed"),
    [
        ("Stop", [("Stop", 0)]),
        ("Vibrate:16", [("Vibrate", 16)]),
        ("Vibrate:2,Rotate:3,Pump:3", [("Vibrate", 2), ("Rotate", 3), ("Pump", 3)]),
        ("Stroke:0-20,Thrusting:10", [("Stroke", (0, 20)), ("Thrusting", 10)]),
        ("Thrusting:20,Stroke:80-100", [("Thrusting", 20), ("Stroke", (80, 100))]),
        ("Oscillate:0,Depth:3,All:20", [("Oscillate", 0), ("Depth", 3), ("All", 20)]),
        ("Fingering:007", [("Fingering", 7)]),
    ],
)
def test_parse_action_returns_names_and_levels(action: str, parsed: list[object]) -> None:
    """parse_action returns each name with its integer level, Stroke with its (min, max) pair."""
    assert parse_action(action) == parsed


@pytest.mark.parametrize(
    ("rule", "parsed"),
    [
        ("V:1;F:v;S:1000#", PatternRule(features=("v",), interval_ms=1000)),
        ("V:1;F:v,r,p;S:100#", PatternRule(features=("v", "r", "p"), interval_ms=100)),
        ("V:1;F:;S:250#", PatternRule(features=(), interval_ms=250)),
        (
            "V:1;F:d,s,f,t,p,r,v;S:60000#",
            PatternRule(features=("d", "s", "f", "t", "p", "r", "v"), interval_ms=60000),
        ),
    ],
)
def test_parse_rule_returns_features_and_interval(rule: str, parsed: PatternRule) -> None:
    """parse_rule returns the listed features in order (none for all) and the interval in ms."""
    assert parse_rule(rule) == parsed


def test_parse_strength_accepts_fifty_levels_within_range() -> None:
    """parse_strength returns every level, accepting exactly 50 and the bounds 0 and 20."""
    assert parse_strength("20;20;5;20;10") == [20, 20, 5, 20, 10]
    assert parse_strength("0") == [0]
    assert parse_strength(";".join(["20"] * 50)) == [20] * 50


@pytest.mark.parametrize(
    ("value", "text"), [(0, "0"), (100, "100"), ("0", "0"), ("100", "100"), ("042", "42"), (7, "7")]
)
def test_position_value_returns_the_docs_string(value: int | str, text: str) -> None:
    """position_value gives the docs' string form of a value from 0 to 100."""
    assert position_value(Position(uid="u1", value=value)) == text


@pytest.mark.parametrize(
    "cmd",
    [
        Function(uid="u1", action="Stop"),
        Function(uid="u1", action="Vibrate:0", timeSec=0),
        Function(uid="u1", action="Vibrate:20", timeSec=1.01, loopRunningSec=1.5, loopPauseSec=1.5),
        Stop(uids=["u1", "u2"], toy="ff922f7fd345"),
        Pattern(uid="u1", rule="V:1;F:;S:100#", strength="0", timeSec=0),
        PatternV2(uid="u1", type="Play"),
        PatternV2(uid="u1", type="Play", startTime=7_200_000, offsetTime=15_000, timeMs=100.5),
        PatternV2(
            uid="u1", type="InitPlay", actions=[PatternAction(ts=7_200_000, pos=100)], startTime=0
        ),
        PatternV2(uid="u1", type="InitPlay", actions=[PatternAction(ts=0, pos=0)], stopPrevious=0),
        PatternV2(uid="u1", type="InitPlay", actions=[PatternAction(ts=0, pos=0)], stopPrevious=1),
        PatternV2(uid="u1", type="SyncTime"),
        Preset(uids=["u1"], name="earthquake", timeSec=0, toy=["a", "b"]),
        GetToys(uid="u1", lan=LanTarget(domain="127-0-0-1.lovense.club", httpsPort=30010)),
        GetQrCode(uid="u1", mode="server"),
    ],
    ids=repr,
)
def test_boundary_commands_pass_validate(cmd: Command) -> None:
    """Commands at the documented bounds, and without optional fields, pass validate."""
    validate(cmd)


def test_server_mode_accepts_uids_without_toy_and_uid_with_toy() -> None:
    """On the server route a toy is fine for one uid, and several uids are fine without a toy."""
    validate(Stop(uids=["u1", "u2"], mode="server"))
    validate(Stop(uid="u1", toy="ff922f7fd345", mode="server"))


def test_lan_route_carries_every_command_but_get_qr_code() -> None:
    """check_route(cmd, "lan") accepts every command, including LAN-only actions and features."""
    for cmd in (
        Function(uid="u1", action="Depth:2,Oscillate:3,All:1", timeSec=0),
        Pattern(uid="u1", rule="V:1;F:d;S:100#", strength="1", timeSec=0),
        PatternV2(uid="u1", type="SyncTime"),
        Position(uid="u1", value=3),
        Stop(uid="u1"),
    ):
        check_route(cmd, "lan")


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        (
            Function(
                uid="u1", action="Vibrate:2,Rotate:3,Pump:1,Thrusting:4,Fingering:5,Suction:6"
            ),
            False,
        ),
        (Function(uid="u1", action="Vibrate:2,Depth:1"), True),
        (Pattern(uid="u1", rule="V:1;F:v,r,p,t,f,s;S:100#", strength="1"), False),
        (Pattern(uid="u1", rule="V:1;F:;S:100#", strength="1"), False),
        (Pattern(uid="u1", rule="V:1;F:d;S:100#", strength="1"), True),
        (Stop(uid="u1"), False),
        (Preset(uid="u1", name="pulse"), False),
        (GetQrCode(uid="u1"), False),
        (PatternV2(uid="u1", type="Stop"), True),
        (Position(uid="u1", value=1), True),
        (GetToys(uid="u1"), True),
    ],
    ids=repr,
)
def test_needs_lan(cmd: Command, expected: bool) -> None:
    """needs_lan is true exactly for LAN-only commands, actions and pattern features."""
    assert needs_lan(cmd) is expected


# --- Properties of the action grammar ---------------------------------------------------------

# The documented ranges, written out again so the tests pin the docs and not the module.
LEVEL_MAX = {
    "Vibrate": 20,
    "Rotate": 20,
    "Pump": 3,
    "Thrusting": 20,
    "Fingering": 20,
    "Suction": 20,
    "Oscillate": 20,
    "Depth": 3,
    "All": 20,
}
Part = tuple[str, int | tuple[int, int]]


def render(parts: list[Part]) -> str:
    """Write parts as a Function action string."""
    return ",".join(
        f"{name}:{level[0]}-{level[1]}" if isinstance(level, tuple) else f"{name}:{level}"
        for name, level in parts
    )


@st.composite
def valid_parts(draw: st.DrawFn) -> list[Part]:
    """Draw distinct actions with in-range levels, sometimes a Stroke beside Thrusting."""
    names = draw(st.lists(st.sampled_from(sorted(LEVEL_MAX)), min_size=1, unique=True))
    parts: list[Part] = [(name, draw(st.integers(0, LEVEL_MAX[name]))) for name in names]
    if "Thrusting" in names and draw(st.booleans()):
        low = draw(st.integers(0, 80))
        high = draw(st.integers(low + 20, 100))
        parts.insert(draw(st.integers(0, len(parts))), ("Stroke", (low, high)))
    return parts


@settings(database=None)
@given(valid_parts(), st.sampled_from([0.0, 1.5, 20.0, 3600.0]))
def test_valid_actions_parse_and_validate(parts: list[Part], time_sec: float) -> None:
    """Any action built from distinct valid names and in-range levels parses back and validates."""
    action = render(parts)
    assert parse_action(action) == parts
    validate(Function(uid="u1", action=action, timeSec=time_sec))
    check_route(Function(uid="u1", action=action), "lan")


@settings(database=None)
@given(valid_parts(), st.data())
def test_out_of_range_level_is_rejected_naming_its_action(
    parts: list[Part], data: st.DataObject
) -> None:
    """Any level outside its action's range is rejected with a message naming that action."""
    index = data.draw(st.sampled_from([i for i, (name, _) in enumerate(parts) if name != "Stroke"]))
    name = parts[index][0]
    high = LEVEL_MAX[name]
    level = data.draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=high + 1)))
    parts[index] = (name, level)
    with pytest.raises(InvalidCommand) as caught:
        validate(Function(uid="u1", action=render(parts), timeSec=10))
    assert str(caught.value) == f"action: {name} level {level} is out of range 0–{high}"


@settings(database=None)
@given(valid_parts())
def test_server_route_refuses_exactly_the_lan_only_actions(parts: list[Part]) -> None:
    """needs_lan is true exactly when the action uses a name the server API does not document."""
    server_names = {"Vibrate", "Rotate", "Pump", "Thrusting", "Fingering", "Suction"}
    cmd = Function(uid="u1", action=render(parts), timeSec=10)
    assert needs_lan(cmd) is any(name not in server_names for name, _ in parts)
