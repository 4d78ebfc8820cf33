"""The simulated toys: what each can do, Lovense's parameter rules, and the state commands leave.

Pure: no I/O and no clock of its own (callers pass ``now_ms``). The rules are
written from the Lovense docs independently of :mod:`worker`, so the simulator
can catch the worker breaking them. Where the docs are silent, the choice made
here is named in a comment.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

from worker.simulator.pattern_v2 import PatternPlayer

#: Full function name → the short name GetToys reports.
SHORT_NAMES: Final = {
    "Vibrate": "v",
    "Rotate": "r",
    "Pump": "p",
    "Thrusting": "t",
    "Fingering": "f",
    "Suction": "s",
    "Depth": "d",
    "Oscillate": "o",
    "Position": "pos",
}
#: Pattern rule letters → full function name (``d`` only on the LAN).
PATTERN_FEATURES: Final = {
    SHORT_NAMES[name]: name
    for name in ("Vibrate", "Rotate", "Pump", "Thrusting", "Fingering", "Suction", "Depth")
}
#: Pattern functions that follow the vibrate strength when a rule has ``v``.
FOLLOW_VIBRATE: Final = frozenset({"Rotate", "Pump", "Depth"})
SERVER_ACTIONS: Final = frozenset(PATTERN_FEATURES.values()) - {"Depth"}
LAN_ACTIONS: Final = SERVER_ACTIONS | {"Depth", "Oscillate", "All"}
#: Highest level per action; every other action tops out at 20.
TOP_LEVEL: Final = {"Pump": 3, "Depth": 3}
PRESETS: Final = frozenset({"pulse", "wave", "fireworks", "earthquake"})
#: What each toy model can do (buttplug's device config, per the notes).
CATALOG: Final[dict[str, tuple[str, ...]]] = {
    "nora": ("Vibrate", "Rotate"),
    "ridge": ("Vibrate", "Rotate"),
    "flexer": ("Vibrate", "Rotate"),
    "max": ("Vibrate", "Pump"),
    "gravity": ("Vibrate", "Thrusting"),
    "spinel": ("Vibrate", "Thrusting"),
    "solace": ("Thrusting", "Depth"),
    "solace pro": ("Thrusting", "Position"),
}
INVALID_COMMAND: Final = 400
TOY_NOT_FOUND: Final = 401
TOY_NOT_CONNECTED: Final = 402
NOT_SUPPORTED: Final = 403
INVALID_PARAMETER: Final = 404

_LEVEL = re.compile(r"[0-9]{1,3}")
_STROKE = re.compile(r"([0-9]{1,3})-([0-9]{1,3})")
_RULE = re.compile(r"V:1;F:([a-z](?:,[a-z])*)?;S:([0-9]{1,7})#")
_STRENGTH = re.compile(r"[0-9]{1,2}(?:;[0-9]{1,2}){0,49}")


class Rejected(Exception):
    """Signal that a command is turned down with a Lovense error code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class ToySpec:
    """Describe one simulated toy; ``functions`` defaults to the catalog entry for ``name``."""

    id: str
    name: str
    nick_name: str = ""
    battery: int = 100
    connected: bool = True
    functions: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ActionPlan:
    """Hold a parsed Function ``action``: levels by function, a stroke range, or Stop."""

    levels: dict[str, int]
    stroke: tuple[int, int] | None = None
    stop: bool = False


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """Hold a checked Function command."""

    plan: ActionPlan
    time_sec: float
    loop: tuple[float | None, float | None] = (None, None)
    stop_previous: bool = True


@dataclass(frozen=True, slots=True)
class PatternCall:
    """Hold a checked Pattern command; empty ``features`` means every function."""

    rule: str
    features: tuple[str, ...]
    interval_ms: int
    strengths: tuple[int, ...]
    time_sec: float


@dataclass(frozen=True, slots=True)
class PresetCall:
    """Hold a checked Preset command."""

    name: str
    time_sec: float


Call = FunctionCall | PatternCall | PresetCall


def number(value: object) -> float | None:
    """Return ``value`` as a finite float (numbers or numeric strings), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def integer(value: object, low: int, high: int) -> int:
    """Return ``value`` as a whole number in ``low..high`` or reject it with 404."""
    result = number(value)
    if result is None or not result.is_integer() or not low <= result <= high:
        raise Rejected(INVALID_PARAMETER)
    return int(result)


def parse_action(action: object, *, lan: bool) -> ActionPlan:
    """Parse a Function ``action`` such as ``"Vibrate:2,Rotate:3"`` with the route's vocabulary."""
    if not isinstance(action, str) or not action:
        raise Rejected(INVALID_PARAMETER)
    if action == "Stop":
        return ActionPlan(levels={}, stop=True)
    allowed = LAN_ACTIONS if lan else SERVER_ACTIONS
    levels: dict[str, int] = {}
    stroke: tuple[int, int] | None = None
    seen_stroke = False
    for part in action.split(","):
        name, _, value = part.partition(":")
        if name == "Stroke" and lan and not seen_stroke:
            seen_stroke = True
            stroke = _parse_stroke(value)
        elif name in allowed and name not in levels and _LEVEL.fullmatch(value):
            level = int(value)
            if level > TOP_LEVEL.get(name, 20):
                raise Rejected(INVALID_PARAMETER)
            levels[name] = level
        else:
            raise Rejected(INVALID_PARAMETER)
    # The docs: Stroke without Thrusting, or spanning less than 20, "will be ignored".
    if stroke is not None and ("Thrusting" not in levels or stroke[1] - stroke[0] < 20):
        stroke = None
    if not levels:
        raise Rejected(INVALID_PARAMETER)
    return ActionPlan(levels=levels, stroke=stroke)


def _parse_stroke(value: str) -> tuple[int, int]:
    """Parse a Stroke range ``"min-max"`` within 0–100."""
    match = _STROKE.fullmatch(value)
    if match is None:
        raise Rejected(INVALID_PARAMETER)
    low, high = int(match[1]), int(match[2])
    if not low <= high <= 100:
        raise Rejected(INVALID_PARAMETER)
    return low, high


def check_time_sec(body: dict[str, Any], key: str = "timeSec") -> float:
    """Return a required duration: 0 (indefinite) or more than 1 second."""
    seconds = number(body.get(key))
    if seconds is None or seconds < 0 or 0 < seconds <= 1:
        raise Rejected(INVALID_PARAMETER)
    return seconds


def _optional_seconds(body: dict[str, Any], key: str) -> float | None:
    """Return an optional loop duration, which must exceed 1 second."""
    if body.get(key) is None:
        return None
    seconds = number(body[key])
    if seconds is None or seconds <= 1:
        raise Rejected(INVALID_PARAMETER)
    return seconds


def check_api_ver(body: dict[str, Any], expected: int) -> None:
    """Require the documented ``apiVer`` ("Always use 1", or 2 for Pattern)."""
    if number(body.get("apiVer")) != expected:
        raise Rejected(INVALID_PARAMETER)


def check_function(body: dict[str, Any], *, lan: bool) -> FunctionCall:
    """Check a Function command's parameters."""
    plan = parse_action(body.get("action"), lan=lan)
    time_sec = check_time_sec(body)
    loop = (_optional_seconds(body, "loopRunningSec"), _optional_seconds(body, "loopPauseSec"))
    stop_previous = True
    if body.get("stopPrevious") is not None:
        stop_previous = integer(body["stopPrevious"], 0, 1) == 1
    check_api_ver(body, 1)
    return FunctionCall(plan=plan, time_sec=time_sec, loop=loop, stop_previous=stop_previous)


def check_pattern(body: dict[str, Any], *, lan: bool) -> PatternCall:
    """Check a Pattern command's rule, strengths, duration and version."""
    rule, strength = body.get("rule"), body.get("strength")
    if not isinstance(rule, str) or not isinstance(strength, str):
        raise Rejected(INVALID_PARAMETER)
    match = _RULE.fullmatch(rule)
    if match is None or not _STRENGTH.fullmatch(strength):
        raise Rejected(INVALID_PARAMETER)
    letters = tuple(match[1].split(",")) if match[1] else ()
    known = "vrptfsd" if lan else "vrptfs"
    if any(letter not in known for letter in letters) or len(set(letters)) != len(letters):
        raise Rejected(INVALID_PARAMETER)
    interval_ms = int(match[2])
    strengths = tuple(int(level) for level in strength.split(";"))
    # The docs say "greater than 100" yet their own example uses S:100; 100 passes.
    if interval_ms < 100 or max(strengths) > 20:
        raise Rejected(INVALID_PARAMETER)
    time_sec = check_time_sec(body)
    check_api_ver(body, 2)
    features = tuple(PATTERN_FEATURES[letter] for letter in letters)
    return PatternCall(rule, features, interval_ms, strengths, time_sec)


def check_preset(body: dict[str, Any]) -> PresetCall:
    """Check a Preset command's name, duration and version."""
    name = body.get("name")
    if not isinstance(name, str) or name not in PRESETS:
        raise Rejected(INVALID_PARAMETER)
    time_sec = check_time_sec(body)
    check_api_ver(body, 1)
    return PresetCall(name=name, time_sec=time_sec)


def check_call(body: dict[str, Any], *, lan: bool) -> Call:
    """Check a Function, Pattern or Preset command; other commands are 400."""
    match body.get("command"):
        case "Function":
            return check_function(body, lan=lan)
        case "Pattern":
            return check_pattern(body, lan=lan)
        case "Preset":
            return check_preset(body)
    raise Rejected(INVALID_COMMAND)


def _scaled(level: int, function: str) -> int:
    """Map a 0–20 level onto ``function``'s own range (Pump and Depth go to 0–3)."""
    top = TOP_LEVEL.get(function, 20)
    return level if top == 20 else int(level * top / 20 + 0.5)


def _duration(time_sec: float) -> str:
    """Describe a timeSec for a console line."""
    return "until stopped" if time_sec == 0 else f"{time_sec:g} s"


@dataclass(slots=True)
class ToyState:
    """Hold what one simulated toy is doing now."""

    id: str
    name: str
    functions: tuple[str, ...]
    nick_name: str = ""
    status: int = 1
    battery: int = 100
    levels: dict[str, int] = field(default_factory=dict)
    stroke: tuple[int, int] | None = None
    loop: tuple[float | None, float | None] = (None, None)
    pattern: PatternCall | None = None
    preset: str | None = None
    position: int | None = None
    until_ms: int | None = None
    v2: PatternPlayer = field(default_factory=PatternPlayer)

    @classmethod
    def from_spec(cls, spec: ToySpec) -> ToyState:
        """Build the idle state of a toy from its spec."""
        functions = spec.functions or CATALOG.get(spec.name.lower(), ("Vibrate",))
        return cls(
            id=spec.id,
            name=spec.name,
            functions=functions,
            nick_name=spec.nick_name,
            status=1 if spec.connected else 0,
            battery=spec.battery,
            levels={f: 0 for f in functions if f != "Position"},
        )

    @property
    def motors(self) -> tuple[str, ...]:
        """Return the functions driven by levels (everything but Position)."""
        return tuple(self.levels)

    def supports(self, function: str) -> bool:
        """Tell whether the toy has ``function``."""
        return function in self.functions

    def handles(self, call: Call) -> bool:
        """Tell whether any part of ``call`` means something to this toy."""
        match call:
            case FunctionCall(plan=plan):
                return plan.stop or "All" in plan.levels or any(map(self.supports, plan.levels))
            case PatternCall(features=features):
                return not features or bool(self._pattern_motors(features))
        return True

    def apply(self, call: Call, now_ms: int) -> str:
        """Apply a checked Function, Pattern or Preset and describe the result."""
        self.expire(now_ms)
        match call:
            case FunctionCall(plan=ActionPlan(stop=True)):
                return self.stop()
            case FunctionCall():
                return self._apply_function(call, now_ms)
            case PatternCall():
                self._clear()
                self.pattern = call
                first = call.strengths[0]
                for motor in self._pattern_motors(call.features):
                    self.levels[motor] = _scaled(first, motor)
                self._run_for(call.time_sec, now_ms)
                steps = ";".join(map(str, call.strengths))
                what = "+".join(call.features) or "All"
                return f"Pattern {what} every {call.interval_ms} ms: {steps} " + (
                    f"({_duration(call.time_sec)})"
                )
        self._clear()
        self.preset = call.name
        self._run_for(call.time_sec, now_ms)
        return f"Preset {call.name} ({_duration(call.time_sec)})"

    def _apply_function(self, call: FunctionCall, now_ms: int) -> str:
        """Set levels from a Function, keeping the others only when stopPrevious is 0."""
        if call.stop_previous:
            self._clear()
        levels = call.plan.levels
        for motor in self.motors:
            if motor in levels:
                self.levels[motor] = levels[motor]
            elif "All" in levels:
                self.levels[motor] = _scaled(levels["All"], motor)
        if call.plan.stroke is not None and self.supports("Thrusting"):
            self.stroke = call.plan.stroke
        self.loop = call.loop
        self._run_for(call.time_sec, now_ms)
        running, pause = call.loop
        detail = _duration(call.time_sec)
        if running is not None and pause is not None:
            detail += f", {running:g} s on / {pause:g} s off"
        return f"{self.describe_levels()} ({detail})"

    def _pattern_motors(self, features: tuple[str, ...]) -> list[str]:
        """Return the motors a pattern drives: its features, and r/p/d following v."""
        if not features:
            return list(self.motors)
        follow = "Vibrate" in features
        return [m for m in self.motors if m in features or (follow and m in FOLLOW_VIBRATE)]

    def set_position(self, value: int) -> str:
        """Move the stroker to ``value`` (0–100)."""
        self.position = value
        return f"Position {value}"

    def stop(self) -> str:
        """Stop everything: levels, stroke, pattern, preset and PatternV2 playback."""
        self._clear()
        self.v2.stop()
        return "stopped"

    def expire(self, now_ms: int) -> None:
        """Stop what was running once its timeSec has passed."""
        if self.until_ms is not None and now_ms >= self.until_ms:
            self._clear()

    def _run_for(self, time_sec: float, now_ms: int) -> None:
        """Remember when the running command ends (timeSec 0 runs until stopped)."""
        self.until_ms = now_ms + round(time_sec * 1000) if time_sec else None

    def _clear(self) -> None:
        """Zero every level and forget the running command."""
        for motor in self.levels:
            self.levels[motor] = 0
        self.stroke, self.pattern, self.preset, self.until_ms = None, None, None, None
        self.loop = (None, None)

    def describe_levels(self) -> str:
        """Describe the non-zero levels, e.g. ``"Vibrate 16, Rotate 3"``."""
        active = [f"{motor} {level}" for motor, level in self.levels.items() if level]
        if self.stroke is not None:
            active.append(f"Stroke {self.stroke[0]}-{self.stroke[1]}")
        return ", ".join(active) or "stopped"

    def get_toys_entry(self) -> dict[str, Any]:
        """Return this toy as GetToys lists it (status a string, name in lower case)."""
        return {
            "id": self.id,
            "status": str(self.status),
            "version": "",
            "name": self.name.lower(),
            "battery": self.battery,
            "nickName": self.nick_name,
            "shortFunctionNames": [SHORT_NAMES.get(f, f.lower()) for f in self.functions],
            "fullFunctionNames": list(self.functions),
        }

    def callback_entry(self) -> dict[str, Any]:
        """Return this toy as the app's callback lists it (status a number)."""
        return {
            "nickName": self.nick_name,
            "name": self.name.lower(),
            "id": self.id,
            "status": self.status,
        }

    def snapshot(self, now_ms: int) -> dict[str, Any]:
        """Return the toy's current state as plain JSON-ready data."""
        self.expire(now_ms)
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "battery": self.battery,
            "functions": list(self.functions),
            "levels": dict(self.levels),
            "stroke": list(self.stroke) if self.stroke else None,
            "pattern": self.pattern.rule if self.pattern else None,
            "preset": self.preset,
            "position": self.position,
            "untilMs": self.until_ms,
            "patternV2": self.v2.snapshot(now_ms),
        }
