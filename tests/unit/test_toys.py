"""Toy awareness: refuse what a named toy cannot do, saying what it can."""

from __future__ import annotations

from worker.contract.messages import command_decoder
from worker.core.toys import functions_of, unsupported


def cmd(raw: str):  # type: ignore[no-untyped-def]
    return command_decoder.decode(raw.encode())


def test_rotate_to_a_lush_is_refused_with_what_it_can_do() -> None:
    """Rotate to a Lush is refused naming the toy and its functions."""
    lush = ("t1", "lush", functions_of("lush", ""))
    assert unsupported(cmd('{"command":"Function","uid":"u","toy":"t1","action":"Rotate:5",'
                           '"timeSec":2}'), [lush]) == "toy: Lush t1 cannot Rotate; it can Vibrate"


def test_reported_functions_win_over_the_table() -> None:
    """fullFunctionNames from GetToys override the name table."""
    assert functions_of("lush", "Vibrate,Rotate") == frozenset({"Vibrate", "Rotate"})
    assert functions_of("mystery", "") is None


def test_supported_and_universal_actions_pass() -> None:
    """Supported actions, All, Stop and Stroke with a thrusting toy pass; unknown toys pass."""
    nora = ("n", "nora", functions_of("nora", ""))
    solace = ("s", "solace pro", functions_of("solace pro", ""))
    unknown = ("x", "mystery", None)
    assert unsupported(cmd('{"command":"Function","uid":"u","toy":"n","action":"Vibrate:2,'
                           'Rotate:3","timeSec":2}'), [nora]) is None
    assert unsupported(cmd('{"command":"Function","uid":"u","toy":"n","action":"All:3",'
                           '"timeSec":2}'), [nora]) is None
    assert unsupported(cmd('{"command":"Function","uid":"u","toy":"s","action":"Stroke:0-40,'
                           'Thrusting:3","timeSec":2}'), [solace]) is None
    assert unsupported(cmd('{"command":"Function","uid":"u","toy":"x","action":"Pump:2",'
                           '"timeSec":2}'), [unknown]) is None


def test_position_needs_a_positioning_toy() -> None:
    """Position to a Nora is refused."""
    nora = ("n", "nora", functions_of("nora", ""))
    assert unsupported(cmd('{"command":"Position","uid":"u","toy":"n","value":5}'), [nora]) == (
        "toy: Nora n cannot Position; it can Rotate, Vibrate")
