"""The simulator's pure core: Lovense parameter rules, toy state and LAN answers (no sockets)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from worker.simulator import RecordedRequest, Simulator
from worker.simulator.lan_app import (
    DEFAULT_TOYS,
    AppSpec,
    Faults,
    SimApp,
    Stage,
    check_setup,
    lan_command,
)
from worker.simulator.toys import (
    ActionPlan,
    FunctionCall,
    Rejected,
    ToySpec,
    ToyState,
    check_call,
    check_pattern,
    parse_action,
)

NORA, MAX, SOLACE = "f082c00246fa", "ff922f7fd345", "c1a7e0501234"


def toys(*specs: ToySpec) -> dict[str, ToyState]:
    """Return fresh toy states for ``specs`` (the default three when none are given)."""
    return {spec.id: ToyState.from_spec(spec) for spec in specs or DEFAULT_TOYS}


def code_of(body: dict[str, Any], *, lan: bool = True) -> int:
    """Return the Lovense code a Function/Pattern/Preset body is refused with (0: accepted)."""
    try:
        check_call(body, lan=lan)
    except Rejected as exc:
        return exc.code
    return 0


def function(action: str, **extra: Any) -> dict[str, Any]:
    """Return a Function body with the docs' required fields."""
    return {"command": "Function", "action": action, "timeSec": 20, "apiVer": 1, **extra}


def run(app_toys: dict[str, ToyState], body: dict[str, Any], version: str = "7.76.0") -> Any:
    """Run a LAN command and return its decoded answer, or the refusing code."""
    try:
        answer, _ = lan_command(AppSpec(uid="u", app_version=version), app_toys, body, 0)
    except Rejected as exc:
        return exc.code
    return msgspec.json.decode(answer)


def test_catalog_gives_each_default_toy_its_functions() -> None:
    """Nora vibrates and rotates, Max vibrates and pumps, Solace Pro thrusts and positions."""
    state = toys()
    assert state[NORA].functions == ("Vibrate", "Rotate")
    assert state[MAX].functions == ("Vibrate", "Pump")
    assert state[SOLACE].functions == ("Thrusting", "Position")
    assert state[SOLACE].levels == {"Thrusting": 0}


def test_action_grammar_parses_levels_in_order() -> None:
    """A comma-separated action becomes one level per named function."""
    plan = parse_action("Vibrate:2,Rotate:3,Pump:3", lan=False)
    assert plan == ActionPlan(levels={"Vibrate": 2, "Rotate": 3, "Pump": 3})


@pytest.mark.parametrize(
    ("action", "lan", "code"),
    [
        ("Vibrate:20", False, 0),
        ("Vibrate:21", False, 404),
        ("Pump:3", False, 0),
        ("Pump:4", False, 404),
        ("Depth:3", True, 0),
        ("Depth:4", True, 404),
        ("Depth:1", False, 404),
        ("All:10", True, 0),
        ("All:10", False, 404),
        ("Oscillate:5", True, 0),
        ("Stop", False, 0),
        ("Stop,Vibrate:1", True, 404),
        ("Vibrate:1,Vibrate:2", True, 404),
        ("Vibrate:1.5", True, 404),
        ("vibrate:1", True, 404),
        ("Vibrate:-1", True, 404),
        ("Vibrate:1, Rotate:2", True, 404),
        ("Stroke:0-20,Thrusting:10", False, 404),
        ("", True, 404),
    ],
)
def test_action_grammar_enforces_route_vocabulary_and_ranges(
    action: str, lan: bool, code: int
) -> None:
    """Levels beyond a function's range, unknown or LAN-only names on the server are 404."""
    assert code_of(function(action), lan=lan) == code


@pytest.mark.parametrize(
    ("action", "stroke"),
    [
        ("Stroke:0-20,Thrusting:10", (0, 20)),
        ("Stroke:0-19,Thrusting:10", None),
        ("Stroke:30-100,Vibrate:5", None),
    ],
)
def test_stroke_below_span_20_or_without_thrusting_is_ignored(
    action: str, stroke: tuple[int, int] | None
) -> None:
    """The docs say such a Stroke "will be ignored", so it is dropped rather than refused."""
    assert parse_action(action, lan=True).stroke == stroke


@pytest.mark.parametrize(
    "action",
    [
        "Stroke:50-20,Thrusting:1",
        "Stroke:0-101,Thrusting:1",
        "Stroke:0-50",
        "Stroke:a-b,Thrusting:1",
    ],
)
def test_malformed_stroke_is_invalid_parameter(action: str) -> None:
    """A Stroke outside 0–100, reversed, unreadable or alone is 404."""
    assert code_of(function(action)) == 404


@pytest.mark.parametrize(
    ("time_sec", "code"),
    [(0, 0), (1.5, 0), ("20", 0), (1, 404), (0.5, 404), (-2, 404), (True, 404), (None, 404)],
)
def test_time_sec_is_zero_or_more_than_one(time_sec: object, code: int) -> None:
    """timeSec is required and must be 0 or greater than 1; form strings count as numbers."""
    assert code_of(function("Vibrate:1", timeSec=time_sec)) == code


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"loopRunningSec": 9, "loopPauseSec": 4}, 0),
        ({"loopRunningSec": 1}, 404),
        ({"stopPrevious": 0}, 0),
        ({"stopPrevious": 2}, 404),
        ({"apiVer": 2}, 404),
        ({"apiVer": None}, 404),
    ],
)
def test_function_optional_fields_follow_the_docs(extra: dict[str, Any], code: int) -> None:
    """Loop times exceed 1 s, stopPrevious is 0 or 1, apiVer is 1."""
    assert code_of(function("Vibrate:1", **extra)) == code


@pytest.mark.parametrize(
    ("rule", "strength", "lan", "code"),
    [
        ("V:1;F:v;S:1000#", "20;20;5;20;10", False, 0),
        ("V:1;F:v,r,p;S:100#", "20;20;5;20;10", False, 0),
        ("V:1;F:;S:100#", "1", False, 0),
        ("V:1;F:v;S:99#", "1", False, 404),
        ("V:1;F:v;S:1000", "1", False, 404),
        ("V:2;F:v;S:1000#", "1", False, 404),
        ("V:1;F:d;S:1000#", "1", False, 404),
        ("V:1;F:d;S:1000#", "1", True, 0),
        ("V:1;F:v,v;S:1000#", "1", True, 404),
        ("V:1;F:o;S:1000#", "1", True, 404),
        ("V:1;F:v;S:1000#", "21", True, 404),
        ("V:1;F:v;S:1000#", ";".join(["1"] * 50), True, 0),
        ("V:1;F:v;S:1000#", ";".join(["1"] * 51), True, 404),
        ("V:1;F:v;S:1000#", "1;;2", True, 404),
    ],
)
def test_pattern_rule_and_strength_grammar(rule: str, strength: str, lan: bool, code: int) -> None:
    """Rules are V:1;F:<features>;S:<ms ≥ 100>#, strengths at most 50 levels of 0–20."""
    body = {"command": "Pattern", "rule": rule, "strength": strength, "timeSec": 9, "apiVer": 2}
    assert code_of(body, lan=lan) == code


def test_pattern_needs_api_ver_2() -> None:
    """A Pattern sent with apiVer 1 is an invalid parameter."""
    body = {"command": "Pattern", "rule": "V:1;F:v;S:1000#", "strength": "1", "timeSec": 9}
    assert code_of({**body, "apiVer": 1}) == 404


@pytest.mark.parametrize(("name", "code"), [("pulse", 0), ("earthquake", 0), ("Pulse", 404)])
def test_preset_names_are_the_four_documented(name: str, code: int) -> None:
    """Only pulse, wave, fireworks and earthquake are presets."""
    body = {"command": "Preset", "name": name, "timeSec": 9, "apiVer": 1}
    assert code_of(body) == code


def test_unknown_command_is_invalid_command() -> None:
    """A command other than Function, Pattern or Preset is 400 on the server route."""
    assert code_of({"command": "Position", "value": "5", "apiVer": 1}, lan=False) == 400


def test_function_stops_previous_by_default() -> None:
    """A Nora told Vibrate and then Rotate ends up only rotating."""
    nora = toys()[NORA]
    nora.apply(check_call(function("Vibrate:16"), lan=True), 0)
    nora.apply(check_call(function("Rotate:4"), lan=True), 0)
    assert nora.levels == {"Vibrate": 0, "Rotate": 4}


def test_stop_previous_zero_keeps_other_functions() -> None:
    """With stopPrevious 0 the earlier Vibrate keeps running beside the new Rotate."""
    nora = toys()[NORA]
    nora.apply(check_call(function("Vibrate:16"), lan=True), 0)
    nora.apply(check_call(function("Rotate:4", stopPrevious=0), lan=True), 0)
    assert nora.levels == {"Vibrate": 16, "Rotate": 4}


def test_all_sets_the_remaining_functions_scaled_to_their_range() -> None:
    """Vibrate:2,All:10 gives a Nora rotate 10 and a Max pump 2 (10 of 20 scaled to 0–3)."""
    state = toys()
    call = check_call(function("Vibrate:2,All:10"), lan=True)
    texts = [state[NORA].apply(call, 0), state[MAX].apply(call, 0)]
    assert state[NORA].levels == {"Vibrate": 2, "Rotate": 10}
    assert state[MAX].levels == {"Vibrate": 2, "Pump": 2}
    assert texts == ["Vibrate 2, Rotate 10 (20 s)", "Vibrate 2, Pump 2 (20 s)"]


def test_function_describes_levels_duration_and_loop() -> None:
    """The console line names the levels, the duration and the loop."""
    max_toy = toys()[MAX]
    body = function("Vibrate:16", loopRunningSec=9, loopPauseSec=4)
    assert max_toy.apply(check_call(body, lan=True), 0) == "Vibrate 16 (20 s, 9 s on / 4 s off)"


def test_stroke_is_kept_with_thrusting_on_a_thrusting_toy() -> None:
    """Solace Pro records Thrusting 10 with the stroke range 0-20."""
    solace = toys()[SOLACE]
    text = solace.apply(check_call(function("Stroke:0-20,Thrusting:10"), lan=True), 0)
    assert (solace.levels, solace.stroke, text) == (
        {"Thrusting": 10},
        (0, 20),
        "Thrusting 10, Stroke 0-20 (20 s)",
    )


def test_time_sec_expires_the_running_command() -> None:
    """After timeSec the toy reads as stopped; before it, the level holds."""
    max_toy = toys()[MAX]
    max_toy.apply(check_call(function("Vibrate:16"), lan=True), 1_000)
    assert max_toy.snapshot(20_999)["levels"] == {"Vibrate": 16, "Pump": 0}
    assert max_toy.snapshot(21_000)["levels"] == {"Vibrate": 0, "Pump": 0}


def test_time_sec_zero_runs_until_stopped() -> None:
    """timeSec 0 never expires."""
    max_toy = toys()[MAX]
    max_toy.apply(check_call(function("Vibrate:3", timeSec=0), lan=True), 0)
    assert max_toy.snapshot(10**12)["levels"] == {"Vibrate": 3, "Pump": 0}


def test_pattern_on_max_pumps_with_the_vibrate_strength() -> None:
    """A v-only pattern drives Max's pump from the first step, scaled to 0–3."""
    max_toy = toys()[MAX]
    body = {
        "command": "Pattern",
        "rule": "V:1;F:v;S:1000#",
        "strength": "20;20;5;20;10",
        "timeSec": 9,
        "apiVer": 2,
    }
    text = max_toy.apply(check_pattern(body, lan=True), 0)
    assert max_toy.levels == {"Vibrate": 20, "Pump": 3}
    assert max_toy.pattern is not None and max_toy.pattern.strengths == (20, 20, 5, 20, 10)
    assert text == "Pattern Vibrate every 1000 ms: 20;20;5;20;10 (9 s)"


def test_stop_clears_levels_pattern_preset_and_pattern_v2() -> None:
    """Stop zeroes every level and ends patterns, presets and PatternV2 playback."""
    nora = toys()[NORA]
    nora.apply(
        check_call({"command": "Preset", "name": "wave", "timeSec": 0, "apiVer": 1}, lan=True), 0
    )
    nora.v2.setup(((0, 10), (100, 90)))
    nora.v2.play(0, 0, 0)
    text = nora.apply(FunctionCall(plan=ActionPlan(levels={}, stop=True), time_sec=0), 0)
    assert (text, nora.levels, nora.preset, nora.pattern, nora.v2.playing) == (
        "stopped",
        {"Vibrate": 0, "Rotate": 0},
        None,
        None,
        False,
    )


def test_get_toys_and_callback_entries_follow_the_docs_shapes() -> None:
    """GetToys lists status as a string; the callback lists it as a number; names in lower case."""
    nora = toys()[NORA]
    assert nora.get_toys_entry() == {
        "id": NORA,
        "status": "1",
        "version": "",
        "name": "nora",
        "battery": 60,
        "nickName": "",
        "shortFunctionNames": ["v", "r"],
        "fullFunctionNames": ["Vibrate", "Rotate"],
    }
    assert nora.callback_entry() == {"nickName": "", "name": "nora", "id": NORA, "status": 1}


def test_lan_get_toy_name_lists_display_names() -> None:
    """GetToyName answers the toys' names in an OK envelope."""
    assert run(toys(), {"command": "GetToyName"}) == {
        "code": 200,
        "data": ["Nora", "Max", "Solace Pro"],
        "type": "OK",
    }


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"command": "Vibrate"}, 400),
        ({"action": "Vibrate:1"}, 400),
        (function("Vibrate:1", toy="nope"), 401),
        (function("Vibrate:1", toy=[NORA, "nope"]), 401),
        (function("Rotate:3", toy=MAX), 403),
        (function("Vibrate:25", toy=MAX), 404),
        (function("Vibrate:1", toy=7), 404),
        ({"command": "Position", "value": "50", "toy": NORA, "apiVer": 1}, 403),
        ({"command": "Position", "value": "101", "toy": SOLACE, "apiVer": 1}, 404),
        ({"command": "PatternV2", "type": "Play", "toy": MAX, "apiVer": 1}, 404),
        ({"command": "PatternV2", "type": "Pause", "apiVer": 1}, 404),
    ],
)
def test_lan_errors_carry_the_documented_codes(body: dict[str, Any], code: int) -> None:
    """Unknown command 400, unknown toy 401, unsupported 403, bad parameter 404."""
    assert run(toys(), body) == code


def test_lan_disconnected_toy_is_402() -> None:
    """A toy whose status is off answers Toy Not Connected."""
    state = toys(ToySpec(id="a1", name="Lush", connected=False))
    assert (run(state, function("Vibrate:1", toy="a1")), run(state, function("Vibrate:1"))) == (
        402,
        402,
    )


def test_lan_function_without_toy_drives_every_toy_that_can() -> None:
    """Without toy, Vibrate:2,Rotate:3,Pump:3 reaches Nora and Max and leaves Solace Pro."""
    state = toys()
    assert run(state, function("Vibrate:2,Rotate:3,Pump:3")) == {"code": 200, "type": "ok"}
    levels = [state[toy].levels for toy in (NORA, MAX, SOLACE)]
    assert levels == [{"Vibrate": 2, "Rotate": 3}, {"Vibrate": 2, "Pump": 3}, {"Thrusting": 0}]


def test_lan_toy_array_targets_each_listed_toy() -> None:
    """toy may be an array of ids; every listed toy responds."""
    state = toys()
    run(state, function("Vibrate:7", toy=[NORA, MAX]))
    assert (state[NORA].levels["Vibrate"], state[MAX].levels["Vibrate"]) == (7, 7)


def test_lan_position_moves_solace_pro() -> None:
    """Position with a string value 0–100 sets the stroker's position."""
    state = toys()
    answer = run(state, {"command": "Position", "value": "35", "toy": SOLACE, "apiVer": 1})
    assert (answer, state[SOLACE].position) == ({"code": 200, "type": "ok"}, 35)


def test_pattern_v2_setup_drops_invalid_actions() -> None:
    """Actions with a non-increasing ts or a pos outside 0–100 are removed, as the app does."""
    actions = [
        {"ts": 0, "pos": 10},
        {"ts": 0, "pos": 20},
        {"ts": 100, "pos": 101},
        {"ts": 200, "pos": 100},
        {"ts": 7_200_001, "pos": 5},
        "junk",
    ]
    assert check_setup(actions) == ((0, 10), (200, 100))


def test_pattern_v2_setup_then_play_plays_from_start_time() -> None:
    """Setup then Play marks the toy playing from startTime with offsetTime."""
    state = toys()
    setup = {
        "command": "PatternV2",
        "type": "Setup",
        "apiVer": 1,
        "actions": [{"ts": 0, "pos": 10}, {"ts": 100, "pos": 100}],
    }
    play = {
        "command": "PatternV2",
        "type": "Play",
        "toy": MAX,
        "startTime": 100,
        "offsetTime": 300,
        "apiVer": 1,
    }
    assert [run(state, setup), run(state, play)] == [{"code": 200, "type": "ok"}] * 2
    assert (state[MAX].v2.playing, state[MAX].v2.start_ms, state[MAX].v2.offset_ms) == (
        True,
        100,
        300,
    )
    assert state[NORA].v2.playing is False


@pytest.mark.parametrize(
    ("version", "body", "code"),
    [
        ("7.75.0", {"type": "InitPlay", "actions": [{"ts": 0, "pos": 1}]}, 400),
        ("7.76.0", {"type": "InitPlay", "actions": [{"ts": 0, "pos": 1}]}, 0),
        ("7.70.0", {"type": "Setup", "toy": NORA, "actions": [{"ts": 0, "pos": 1}]}, 403),
        ("7.70.0", {"type": "Setup", "toy": SOLACE, "actions": [{"ts": 0, "pos": 1}]}, 0),
        ("7.76.0", {"type": "Play", "offsetTime": 15_001}, 404),
        ("7.76.0", {"type": "SyncTime"}, 0),
    ],
)
def test_pattern_v2_follows_the_app_version(version: str, body: dict[str, Any], code: int) -> None:
    """InitPlay needs app 7.76.0; before 7.71.0 only Solace Pro takes PatternV2."""
    answer = run(toys(), {"command": "PatternV2", "apiVer": 1, **body}, version)
    assert answer == (code or {"code": 200, "type": "ok"})


def test_faults_hit_exactly_their_share_evenly() -> None:
    """A share of 0.5 faults every second request; no code or mode faults none."""
    faults = Faults()
    assert [faults.draw() for _ in range(2)] == [False, False]
    faults.configure(code=502, share=0.5)
    assert [faults.draw() for _ in range(4)] == [False, True, False, True]
    faults.configure(mode="reset")
    assert [faults.draw() for _ in range(3)] == [True, True, True]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"share": 1.5}, "share: 1.5 is outside 0..1"),
        ({"mode": "drop"}, "mode: 'drop' is not 'hang' or 'reset'"),
        ({"delay_ms": -1}, "delay_ms: -1 is negative"),
    ],
)
def test_faults_reject_nonsense(kwargs: dict[str, Any], message: str) -> None:
    """Fault settings outside their domain raise ValueError naming the field."""
    with pytest.raises(ValueError) as info:
        Faults().configure(**kwargs)
    assert str(info.value) == message


def test_callback_body_follows_the_docs_shape() -> None:
    """The app's callback has the docs' fields, ports as strings, toys with numeric status."""
    spec = AppSpec(uid="sim-user-1", https_port=30010, http_port=30011)
    app = SimApp(spec, host="127.0.0.1", stage=Stage(record=False))
    assert app.callback_body("s3cr3t") == {
        "uid": "sim-user-1",
        "appVersion": "7.76.0",
        "toys": {
            NORA: {"nickName": "", "name": "nora", "id": NORA, "status": 1},
            MAX: {"nickName": "", "name": "max", "id": MAX, "status": 1},
            SOLACE: {"nickName": "", "name": "solace pro", "id": SOLACE, "status": 1},
        },
        "wssPort": "30010",
        "httpPort": "30011",
        "wsPort": "30011",
        "appType": "remote",
        "domain": "127-0-0-1.lovense.club",
        "utoken": "s3cr3t",
        "httpsPort": "30010",
        "version": "101",
        "platform": "ios",
    }


def test_callback_without_qr_request_has_empty_utoken() -> None:
    """An app whose uid never asked for a QR code calls back with utoken ""."""
    assert Simulator().callback_body("sim-user-1")["utoken"] == ""


def test_non_loopback_host_is_refused() -> None:
    """The simulator listens on IPv4 loopback only."""
    with pytest.raises(ValueError) as info:
        Simulator(host="0.0.0.0")
    assert str(info.value) == "host: 0.0.0.0 is not an IPv4 loopback address"


def test_recorded_request_is_frozen() -> None:
    """Recorded requests cannot be altered after the fact."""
    request = RecordedRequest("server", None, "http", "POST", "/", {}, {}, 0, 200)
    with pytest.raises(AttributeError):
        request.status = 1  # type: ignore[misc]


PATTERN_A = [{"ts": 0, "pos": 10}, {"ts": 1000, "pos": 90}]
PATTERN_B = [{"ts": 0, "pos": 5}, {"ts": 500, "pos": 50}]


def init_play(actions: list[dict[str, int]], **extra: Any) -> dict[str, Any]:
    """Return an InitPlay body for the Solace Pro."""
    return {"command": "PatternV2", "type": "InitPlay", "toy": SOLACE, "actions": actions,
            "apiVer": 1, **extra}


def at(state: dict[str, ToyState], body: dict[str, Any], now: int) -> Any:
    """Run a LAN command at ``now`` ms and return its decoded answer, or the refusing code."""
    try:
        answer, _ = lan_command(AppSpec(uid="u"), state, body, now)
    except Rejected as exc:
        return exc.code
    return msgspec.json.decode(answer)


def test_init_play_without_stop_previous_queues_behind_the_running_pattern() -> None:
    """InitPlay defaults to stopPrevious 0: it waits, then starts where the running one ends."""
    state = toys()
    solace = state[SOLACE]
    assert at(state, init_play(PATTERN_A), 0) == {"code": 200, "type": "ok"}
    assert at(state, init_play(PATTERN_B, stopPrevious=0), 200) == {"code": 200, "type": "ok"}
    assert (solace.v2.running(999), solace.v2.actions[-1], len(solace.v2.queue)) == (
        True, (1000, 90), 1)
    assert (solace.v2.running(1000), solace.v2.actions[-1], solace.v2.since_ms) == (
        True, (500, 50), 1000)
    assert solace.v2.snapshot(1499)["queued"] == 0
    assert solace.v2.running(1500) is False


def test_init_play_with_stop_previous_1_replaces_the_running_pattern_and_its_queue() -> None:
    """stopPrevious 1 starts the new pattern at once and drops the patterns waiting."""
    state = toys()
    solace = state[SOLACE]
    at(state, init_play(PATTERN_A), 0)
    at(state, init_play(PATTERN_A), 100)
    assert at(state, init_play(PATTERN_B, stopPrevious=1), 200) == {"code": 200, "type": "ok"}
    assert (solace.v2.actions[-1], solace.v2.since_ms, solace.v2.queue) == ((500, 50), 200, [])
    assert solace.v2.running(699) is True
    assert solace.v2.running(700) is False


def test_init_play_starts_at_once_when_nothing_plays() -> None:
    """With stopPrevious 0 and the previous pattern over, InitPlay plays immediately."""
    state = toys()
    at(state, init_play(PATTERN_A), 0)
    at(state, init_play(PATTERN_B), 1000)
    assert (state[SOLACE].v2.actions[-1], state[SOLACE].v2.since_ms) == ((500, 50), 1000)


@pytest.mark.parametrize(("value", "code"), [(2, 404), (-1, 404), ("x", 404), (True, 404)])
def test_init_play_stop_previous_is_0_or_1(value: object, code: int) -> None:
    """stopPrevious on InitPlay must be the integer 0 or 1."""
    assert at(toys(), init_play(PATTERN_A, stopPrevious=value), 0) == code


def test_init_play_queue_is_bounded_and_stop_empties_it() -> None:
    """Sixteen InitPlays may wait behind a running pattern; a PatternV2 Stop drops them all."""
    state = toys()
    at(state, init_play(PATTERN_A), 0)
    answers = [at(state, init_play(PATTERN_B), 1) for _ in range(17)]
    assert answers == [{"code": 200, "type": "ok"}] * 16 + [404]
    stop = {"command": "PatternV2", "type": "Stop", "toy": SOLACE, "apiVer": 1}
    assert at(state, stop, 2) == {"code": 200, "type": "ok"}
    assert (state[SOLACE].v2.playing, state[SOLACE].v2.queue) == (False, [])


def test_setup_and_play_drop_queued_init_plays() -> None:
    """A Setup or a Play replaces what was queued: the queue only follows InitPlay."""
    state = toys()
    at(state, init_play(PATTERN_A), 0)
    at(state, init_play(PATTERN_B), 10)
    play = {"command": "PatternV2", "type": "Play", "toy": SOLACE, "apiVer": 1}
    assert at(state, play, 20) == {"code": 200, "type": "ok"}
    assert (state[SOLACE].v2.queue, state[SOLACE].v2.since_ms) == ([], 20)
    at(state, init_play(PATTERN_B), 30)
    setup = {"command": "PatternV2", "type": "Setup", "toy": SOLACE, "actions": PATTERN_B,
             "apiVer": 1}
    assert at(state, setup, 40) == {"code": 200, "type": "ok"}
    assert (state[SOLACE].v2.queue, state[SOLACE].v2.playing) == ([], False)
