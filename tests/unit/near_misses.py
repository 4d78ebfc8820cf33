"""Commands one step from valid: what a producer's schema check and intake must agree on.

Shared by the agreement test (Python ``jsonschema``) and tests/deploy's ajv test.
Each is (label, body, whether the worker takes it).
"""

from __future__ import annotations

from typing import Any, Final

_F: Final[dict[str, Any]] = {"command": "Function", "uid": "user-42", "action": "Vibrate:5",
                             "timeSec": 3}


def _f(**fields: Any) -> dict[str, Any]:
    return {**_F, **fields}


#: The eleven refusals of issue 13 that the schema did not state, and a misspelt field.
ISSUE_13: Final[list[tuple[str, dict[str, Any], bool]]] = [
    ("no uid nor uids", {"command": "GetToys"}, False),
    ("both uid and uids", {"command": "GetToys", "uid": "a", "uids": ["b"]}, False),
    ("uids empty", {"command": "GetToys", "uids": []}, False),
    ("uids repeated", {"command": "GetToys", "uids": ["a", "a"]}, False),
    ("comma inside a uid", {"command": "GetToys", "uids": ["a,b"]}, False),
    ("ttlMs 0", _f(ttlMs=0), False),
    ("timeSec 1", _f(timeSec=1), False),
    ("Preset bogus", {"command": "Preset", "uid": "user-42", "name": "bogus", "timeSec": 10},
     False),
    ("Position 500", {"command": "Position", "uid": "user-42", "value": "500"}, False),
    ("lan.httpsPort 0", _f(lan={"domain": "192-168-1-44.lovense.club", "httpsPort": 0}), False),
    ("Forget with a toy", {"command": "Forget", "uid": "user-42", "toy": "ff922f7fd345"}, False),
    ("timesec misspelt", {"command": "Function", "uid": "user-42", "action": "Vibrate:5",
                          "timesec": 3}, False),
]

#: Edges on both sides of the rules the schema states.
EDGES: Final[list[tuple[str, dict[str, Any], bool]]] = [
    ("timeSec 0", _f(timeSec=0), True),
    ("timeSec 1.5", _f(timeSec=1.5), True),
    ("timeSec missing", {"command": "Function", "uid": "user-42", "action": "Vibrate:5"}, False),
    ("Stop without timeSec", {"command": "Function", "uid": "user-42", "action": "Stop"}, True),
    ("uid null beside uids", {"command": "GetToys", "uid": None, "uids": ["a"]}, True),
    ("uid with a newline", {"command": "GetToys", "uid": "a\n"}, False),
    ("ttlMs 3600000", _f(ttlMs=3_600_000), True),
    ("ttlMs 3600001", _f(ttlMs=3_600_001), False),
    ("level -0", _f(action="Vibrate:-0"), True),
    ("level 21", _f(action="Vibrate:21"), False),
    ("level with a final newline", _f(action="Vibrate:5\n"), False),
    ("Pump 4", _f(action="Pump:4"), False),
    ("Stroke with Thrusting", _f(action="Stroke:0-20,Thrusting:10", mode="lan"), True),
    ("Position 100", {"command": "Position", "uid": "user-42", "value": 100}, True),
    ("Position 0100", {"command": "Position", "uid": "user-42", "value": "0100"}, True),
    ("Position 101", {"command": "Position", "uid": "user-42", "value": 101}, False),
    ("rule interval 99", {"command": "Pattern", "uid": "u", "rule": "V:1;F:v;S:99#",
                          "strength": "5", "timeSec": 0}, False),
    ("51 strengths", {"command": "Pattern", "uid": "u", "rule": "V:1;F:v;S:100#",
                      "strength": ";".join(["5"] * 51), "timeSec": 0}, False),
    ("50 strengths", {"command": "Pattern", "uid": "u", "rule": "V:1;F:v;S:100#",
                      "strength": ";".join(["5"] * 50), "timeSec": 0}, True),
    ("33 toys", _f(toy=[f"t{i}" for i in range(33)]), False),
    ("33 toys in a Stop", {"command": "Stop", "uid": "u", "toy": [f"t{i}" for i in range(33)]},
     True),
    ("65-character toy in a Function Stop",
     {"command": "Function", "uid": "u", "action": "Stop", "toy": "t" * 65}, True),
    ("256-character id", _f(id="i" * 256), False),
    ("256-character id in a Stop", {"command": "Stop", "uid": "u", "id": "i" * 256}, True),
    ("lan with uids", {"command": "GetToys", "uids": ["a"],
                       "lan": {"domain": "d.lovense.club", "httpsPort": 1}}, False),
    ("lan with mode server", _f(mode="server", lan={"domain": "d", "httpsPort": 65535}), False),
    ("loops without timeSec", {"command": "Function", "uid": "u", "action": "Stop",
                               "loopRunningSec": 2, "loopPauseSec": 2}, False),
    ("loopPauseSec alone", _f(loopPauseSec=2), False),
    ("PatternV2 Play with actions", {"command": "PatternV2", "uid": "u", "type": "Play",
                                     "actions": [{"ts": 0, "pos": 1}]}, False),
    ("PatternV2 Play with actions null", {"command": "PatternV2", "uid": "u", "type": "Play",
                                          "actions": None}, True),
    ("PatternV2 Setup without actions", {"command": "PatternV2", "uid": "u", "type": "Setup"},
     False),
    ("PatternV2 Stop with stopPrevious", {"command": "PatternV2", "uid": "u", "type": "Stop",
                                          "stopPrevious": 1}, False),
    ("PatternV2 pos 101", {"command": "PatternV2", "uid": "u", "type": "Setup",
                           "actions": [{"ts": 0, "pos": 101}]}, False),
    ("GetUser with mode lan", {"command": "GetUser", "uid": "u", "mode": "lan"}, False),
    ("Forget with toy null", {"command": "Forget", "uid": "u", "toy": None}, True),
]

#: Refusals only code can state (each under a rule of the schema's code-only list).
CODE_ONLY: Final[list[tuple[str, dict[str, Any], bool]]] = [
    ("Stroke without Thrusting", _f(action="Stroke:0-20", mode="lan"), False),
    ("Vibrate twice", _f(action="Vibrate:1,Vibrate:2"), False),
    ("Stroke span 10", _f(action="Stroke:0-10,Thrusting:5", mode="lan"), False),
    ("rule feature twice", {"command": "Pattern", "uid": "u", "rule": "V:1;F:v,v;S:100#",
                            "strength": "5", "timeSec": 0}, False),
    ("ts not increasing", {"command": "PatternV2", "uid": "u", "type": "Setup",
                           "actions": [{"ts": 5, "pos": 1}, {"ts": 5, "pos": 2}]}, False),
    ("id of 128 two-byte characters", _f(id="é" * 128), False),
    ("Position on the server route", {"command": "Position", "uid": "u", "value": 5,
                                      "mode": "server"}, False),
    ("ttlMs 5.0", _f(ttlMs=5.0), False),
]

ALL: Final = ISSUE_13 + EDGES + CODE_ONLY
