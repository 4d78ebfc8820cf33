"""The Lovense rules: grammars, ranges and route limits of every command.

:mod:`worker.contract.messages` has already checked types and shapes; this module checks
what the Lovense Standard API documents about the values (the ``action``,
``rule`` and ``strength`` grammars, levels, times, PatternV2 operations) and
which route can carry a command. Every failure is an :class:`InvalidCommand`
whose message reads ``"<field>: <what is wrong>"``. Pure: no I/O.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, assert_never

import msgspec

from worker.contract.errors import InvalidCommand
from worker.contract.messages import (
    LAN_ONLY_COMMANDS,
    SERVER_ONLY_COMMANDS,
    Command,
    Forget,
    Function,
    GetQrCode,
    GetToyName,
    GetToys,
    GetUser,
    Pattern,
    PatternV2,
    Position,
    Preset,
    Stop,
)

if TYPE_CHECKING:
    from worker.core.outcomes import Route


#: Function actions with a single level, and the highest level each takes (the lowest is 0).
ACTION_MAX_LEVEL: Final[Mapping[str, int]] = {
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
#: Every Function action name, in the docs' order.
ACTION_NAMES: Final = (*ACTION_MAX_LEVEL, "Stroke", "Stop")
#: The actions Lovense's server API documents; the rest need the LAN route.
SERVER_ACTIONS: Final = ("Vibrate", "Rotate", "Pump", "Thrusting", "Fingering", "Suction", "Stop")
STROKE_MAX: Final = 100
STROKE_MIN_SPAN: Final = 20

#: Pattern rule features: vibrate, rotate, pump, thrusting, fingering, suction, depth.
PATTERN_FEATURES: Final = ("v", "r", "p", "t", "f", "s", "d")
SERVER_PATTERN_FEATURES: Final = ("v", "r", "p", "t", "f", "s")
PATTERN_MIN_INTERVAL_MS: Final = 100
PATTERN_MAX_STEPS: Final = 50
PATTERN_MAX_LEVEL: Final = 20

PATTERN_V2_MAX_TS_MS: Final = 7_200_000
PATTERN_V2_MAX_OFFSET_MS: Final = 15_000
PATTERN_V2_MIN_TIME_MS: Final = 100
POSITION_MAX: Final = 100

PRESETS: Final = ("pulse", "wave", "fireworks", "earthquake")
#: An id travels as AMQP's ``message_id``, a short string: 255 bytes at most.
MAX_ID_BYTES: Final = 255
#: A toy id is at most this long (Lovense's are 12 hex digits).
MAX_TOY_ID_LENGTH: Final = 64
#: The longest a command may wait; Stop watermarks are kept this long.
MAX_TTL_MS: Final = 3_600_000
MAX_PORT: Final = 65_535

_PLAY_FIELDS: Final = ("startTime", "offsetTime", "timeMs")
_LEVEL = re.compile(r"-?[0-9]+")
_STROKE = re.compile(r"([0-9]+)-([0-9]+)")
_RULE = re.compile(r"V:1;F:([^;#]*);S:([0-9]+)#")
_DIGITS = re.compile(r"[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Caps:
    """The sizes a producer controls, each capped (``LOVENSE_MAX_*``; the README lists them).

    Every command over a cap is ``invalid``, except a Stop: :func:`stop_relief`
    turns an oversized Stop into one the worker can carry out.
    """

    toys: int = 32
    uids: int = 10_000
    action: int = 256
    rule: int = 64
    strength: int = 256


DEFAULT_CAPS: Final = Caps()


@dataclass(frozen=True, slots=True)
class PatternRule:
    """A parsed Pattern ``rule``: the features it drives and the step interval."""

    features: tuple[str, ...]
    interval_ms: int


def is_stop(cmd: Command) -> bool:
    """Return whether a command is a Stop (the shorthand, or Function with action Stop)."""
    return isinstance(cmd, Stop) or (isinstance(cmd, Function) and cmd.action.strip() == "Stop")


def id_fits(ident: str) -> bool:
    """Return whether an id fits everywhere it travels (an AMQP short string: 255 bytes)."""
    # Four bytes a character at most: short ids need no encoding (msgspec refuses lone
    # surrogates, so every decoded string encodes).
    return len(ident) <= MAX_ID_BYTES // 4 or len(ident.encode()) <= MAX_ID_BYTES


def stop_relief(cmd: Command, caps: Caps = DEFAULT_CAPS) -> tuple[Command, list[str]]:
    """Return a Stop the worker can carry out whatever its sizes, and what was changed.

    A Stop is never refused for a size cap: too many or too long toy ids make it a
    Stop for every toy of its users; too many users are all stopped anyway.
    """
    notes: list[str] = []
    toys = [cmd.toy] if isinstance(cmd.toy, str) else cmd.toy
    if toys is not None and (len(toys) > caps.toys
                             or any(len(t) > MAX_TOY_ID_LENGTH for t in toys)):
        notes.append(f"toy: over LOVENSE_MAX_TOYS ({caps.toys} ids of at most "
                     f"{MAX_TOY_ID_LENGTH} characters), so every toy of its users was stopped")
        cmd = msgspec.structs.replace(cmd, toy=None)
    if cmd.uids is not None and len(cmd.uids) > caps.uids:
        notes.append(f"uids: {len(cmd.uids):,} users is over LOVENSE_MAX_UIDS ({caps.uids:,}); "
                     "a Stop is carried out for all of them")
    return cmd, notes


def validate(cmd: Command, caps: Caps = DEFAULT_CAPS) -> None:
    """Raise InvalidCommand naming the field and the rule when cmd breaks a documented rule."""
    _check_targets(cmd, caps)
    _check_lan(cmd)
    _check_toy(cmd, caps)
    match cmd:
        case Function():
            _check_length("action", cmd.action, caps.action, "LOVENSE_MAX_ACTION_LENGTH")
            _check_function(cmd)
        case Pattern():
            _check_length("rule", cmd.rule, caps.rule, "LOVENSE_MAX_RULE_LENGTH")
            _check_length("strength", cmd.strength, caps.strength, "LOVENSE_MAX_STRENGTH_LENGTH")
            parse_rule(cmd.rule)
            parse_strength(cmd.strength)
            _check_time_sec(cmd.timeSec, required=True)
        case PatternV2():
            _check_pattern_v2(cmd)
        case Preset():
            _check_preset(cmd)
        case Position():
            position_value(cmd)
        case GetQrCode() | Forget() | GetUser():
            _check_qr_code(cmd)
        case Stop() | GetToys() | GetToyName():
            pass
        case _:
            assert_never(cmd)
    if cmd.ttlMs is not None and not 1 <= cmd.ttlMs <= MAX_TTL_MS:
        raise InvalidCommand(f"ttlMs: must be 1–{MAX_TTL_MS:,} ms, got {cmd.ttlMs}")
    if cmd.mode != "auto":
        check_route(cmd, cmd.mode)


def check_route(cmd: Command, route: Route) -> None:
    """Raise InvalidCommand when cmd cannot be carried by this route."""
    problem = _route_problem(cmd, route)
    if problem is not None:
        raise InvalidCommand(problem)
    # A Stop goes out one call per user, so its toys hold (and stopping more is safe anyway).
    if route == "server" and cmd.uids is not None and cmd.toy is not None and not is_stop(cmd):
        raise InvalidCommand(
            "toy: Lovense's server ignores toy when a command goes to several users, "
            "so every toy would respond; give a single uid or leave toy out"
        )


def needs_lan(cmd: Command) -> bool:
    """Return whether only the LAN route can carry cmd (a LAN-only command, action or feature).

    Meant for validated commands: a malformed action or rule raises InvalidCommand.
    """
    return _route_problem(cmd, "server") is not None


def parse_action(action: str) -> list[tuple[str, int | tuple[int, int]]]:
    """Split a Function action into (name, level) pairs, checking its grammar and ranges.

    Stroke's level is its ``(min, max)`` pair; a lone ``Stop`` parses as ``[("Stop", 0)]``.
    """
    return list(_parse_action(action))


@functools.lru_cache(maxsize=4096)
def _parse_action(action: str) -> tuple[tuple[str, int | tuple[int, int]], ...]:
    # The same few actions arrive over and over; each message is checked more than once.
    return tuple(_parse_action_uncached(action))


def _parse_action_uncached(action: str) -> list[tuple[str, int | tuple[int, int]]]:
    if action == "Stop":
        return [("Stop", 0)]
    if not action:
        raise InvalidCommand("action: must not be empty; give e.g. Vibrate:10 or Stop")
    parsed: list[tuple[str, int | tuple[int, int]]] = []
    seen: set[str] = set()
    for item in action.split(","):
        name, level = _parse_action_item(item, action)
        if name in seen:
            raise InvalidCommand(f"action: {name} is given more than once in {action!r}")
        seen.add(name)
        parsed.append((name, level))
    if "Stroke" in seen and "Thrusting" not in seen:
        raise InvalidCommand(
            "action: Stroke works only together with Thrusting, e.g. Stroke:0-20,Thrusting:10"
        )
    return parsed


def parse_rule(rule: str) -> PatternRule:
    """Parse a Pattern rule such as ``V:1;F:v,r;S:1000#``, checking features and interval."""
    found = _RULE.fullmatch(rule)
    if found is None:
        raise InvalidCommand(f"rule: must look like V:1;F:v,r;S:1000# (got {rule!r})")
    feature_text, interval_text = found.groups()
    features = tuple(feature_text.split(",")) if feature_text else ()
    seen: set[str] = set()
    for feature in features:
        if not feature:
            raise InvalidCommand(
                f"rule: features must be letters separated by single commas, got {feature_text!r}"
            )
        if feature not in PATTERN_FEATURES:
            raise InvalidCommand(
                f"rule: unknown feature {feature!r}; features are {_join(PATTERN_FEATURES)}"
                " (or none, for all functions)"
            )
        if feature in seen:
            raise InvalidCommand(f"rule: feature {feature} is listed more than once")
        seen.add(feature)
    interval = int(interval_text)
    if interval < PATTERN_MIN_INTERVAL_MS:
        raise InvalidCommand(
            f"rule: interval S must be at least {PATTERN_MIN_INTERVAL_MS} ms, got {interval}"
        )
    return PatternRule(features=features, interval_ms=interval)


def parse_strength(strength: str) -> list[int]:
    """Parse a Pattern strength such as ``20;20;5``, checking the count and every level."""
    if not strength:
        raise InvalidCommand(
            f"strength: give 1–{PATTERN_MAX_STEPS} levels 0–{PATTERN_MAX_LEVEL} "
            "separated by ';', like 20;20;5"
        )
    items = strength.split(";")
    if len(items) > PATTERN_MAX_STEPS:
        raise InvalidCommand(f"strength: at most {PATTERN_MAX_STEPS} levels, got {len(items)}")
    levels: list[int] = []
    for number, item in enumerate(items, start=1):
        if not item:
            raise InvalidCommand(f"strength: level {number} is empty; separate levels with one ';'")
        if _LEVEL.fullmatch(item) is None:
            raise InvalidCommand(
                f"strength: level {number} must be a whole number 0–{PATTERN_MAX_LEVEL}, "
                f"got {item!r}"
            )
        level = int(item)
        if not 0 <= level <= PATTERN_MAX_LEVEL:
            raise InvalidCommand(
                f"strength: level {number} is {level}, out of range 0–{PATTERN_MAX_LEVEL}"
            )
        levels.append(level)
    return levels


def position_value(cmd: Position) -> str:
    """Return the Position value as the docs' string ``"0"``..``"100"``, checking its range."""
    value = cmd.value
    if isinstance(value, str):
        if _DIGITS.fullmatch(value) is None:
            raise InvalidCommand(f"value: must be a whole number 0–{POSITION_MAX}, got {value!r}")
        value = int(value)
    if not 0 <= value <= POSITION_MAX:
        raise InvalidCommand(f"value: {value} is out of range 0–{POSITION_MAX}")
    return str(value)


def _route_problem(cmd: Command, route: Route) -> str | None:
    """Return why route cannot carry cmd, or None when it can."""
    if route == "lan":
        if cmd.kind in SERVER_ONLY_COMMANDS:
            return (
                f"command: {cmd.kind} needs the server route; the Lovense Remote app "
                'does not carry it (use mode "server" or "auto")'
            )
        return None
    if cmd.kind in LAN_ONLY_COMMANDS:
        return (
            f"command: {cmd.kind} needs the LAN route; Lovense's server API does not carry it "
            '(use mode "lan" or "auto")'
        )
    if isinstance(cmd, Function):
        for name, _ in parse_action(cmd.action):
            if name not in SERVER_ACTIONS:
                return (
                    f"action: {name} needs the LAN route; "
                    f"Lovense's server API takes {_join(SERVER_ACTIONS)}"
                )
    elif isinstance(cmd, Pattern):
        for feature in parse_rule(cmd.rule).features:
            if feature not in SERVER_PATTERN_FEATURES:
                return (
                    f"rule: feature {feature} needs the LAN route; "
                    f"Lovense's server API takes features {_join(SERVER_PATTERN_FEATURES)}"
                )
    return None


def _check_length(field: str, value: str, cap: int, setting: str) -> None:
    if len(value) > cap:
        raise InvalidCommand(f"{field}: at most {cap} characters ({setting}), got {len(value):,}")


def _check_targets(cmd: Command, caps: Caps) -> None:
    """Check that cmd names its users with exactly one of uid or uids, each usable."""
    if (cmd.uid is None) == (cmd.uids is None):
        raise InvalidCommand("uid: give exactly one of uid or uids")
    if cmd.uid is not None:
        _check_uid("uid", cmd.uid)
        return
    uids = cmd.uids or []
    if not uids:
        raise InvalidCommand("uids: must list at least one user id")
    if len(uids) > caps.uids and not is_stop(cmd):
        raise InvalidCommand(
            f"uids: at most {caps.uids:,} user ids (LOVENSE_MAX_UIDS), got {len(uids):,}")
    seen: set[str] = set()
    for index, uid in enumerate(uids):
        _check_uid(f"uids[{index}]", uid)
        if uid in seen:
            raise InvalidCommand(f"uids[{index}]: {uid!r} is listed more than once")
        seen.add(uid)


def _check_uid(field: str, uid: str) -> None:
    """Check one user id: the server route comma-joins them, and logs print them."""
    if "," in uid:
        raise InvalidCommand(
            f"{field}: must not contain a comma (the server route joins user ids with commas), "
            f"got {uid!r}"
        )
    if _CONTROL.search(uid) is not None:
        raise InvalidCommand(f"{field}: must not contain control characters, got {uid!r}")


def _check_lan(cmd: Command) -> None:
    """Check that the LAN app named by ``lan`` can be the one called."""
    if cmd.lan is None:
        return
    if cmd.mode == "server":
        raise InvalidCommand(
            'lan: mode "server" never calls the app on the LAN; '
            'remove lan or use mode "lan" or "auto"'
        )
    if cmd.uids is not None:
        raise InvalidCommand("lan: names one app, so give a single uid instead of uids")
    if not 1 <= cmd.lan.httpsPort <= MAX_PORT:
        raise InvalidCommand(f"lan.httpsPort: must be 1–{MAX_PORT}, got {cmd.lan.httpsPort}")


def _check_toy(cmd: Command, caps: Caps) -> None:
    """Check that a toy list, when given, names 1 to ``caps.toys`` toys of sane length."""
    toys = [cmd.toy] if isinstance(cmd.toy, str) else cmd.toy
    if toys is None:
        return
    if not toys:
        raise InvalidCommand("toy: give at least one toy id, or leave toy out for all toys")
    if len(toys) > caps.toys:
        raise InvalidCommand(
            f"toy: at most {caps.toys} toy ids per command (LOVENSE_MAX_TOYS), got {len(toys):,}")
    for index, toy in enumerate(toys):
        if len(toy) > MAX_TOY_ID_LENGTH:
            where = "toy" if isinstance(cmd.toy, str) else f"toy[{index}]"
            raise InvalidCommand(
                f"{where}: a toy id is at most {MAX_TOY_ID_LENGTH} characters, got {len(toy):,}")


def _check_function(cmd: Function) -> None:
    """Check a Function's action, total time and loop times."""
    actions = parse_action(cmd.action)
    _check_time_sec(cmd.timeSec, required=actions[0][0] != "Stop")
    running, pause = cmd.loopRunningSec, cmd.loopPauseSec
    if running is None and pause is None:
        return
    if running is None:
        raise InvalidCommand("loopRunningSec: required with loopPauseSec; give both or neither")
    if pause is None:
        raise InvalidCommand("loopPauseSec: required with loopRunningSec; give both or neither")
    if cmd.timeSec is None:
        raise InvalidCommand("loopRunningSec: loops need timeSec, the total running time")
    for field, seconds in (("loopRunningSec", running), ("loopPauseSec", pause)):
        _check_finite(field, seconds)
        if not seconds > 1:
            raise InvalidCommand(f"{field}: must be more than 1 second, got {_number(seconds)}")


def _parse_action_item(item: str, action: str) -> tuple[str, int | tuple[int, int]]:
    """Parse one ``Name:level`` item of action."""
    if not item:
        raise InvalidCommand(f"action: empty item in {action!r}; separate actions with one ','")
    name, colon, level = item.partition(":")
    if name == "Stop":
        if colon:
            raise InvalidCommand(f"action: Stop takes no level, got {action!r}")
        raise InvalidCommand(f"action: Stop must stand alone, got {action!r}")
    if name not in ACTION_NAMES:
        raise InvalidCommand(f"action: unknown action {name!r}; actions are {_join(ACTION_NAMES)}")
    if name == "Stroke":
        if not colon:
            raise InvalidCommand("action: Stroke needs a min-max range, like Stroke:0-20")
        return name, _parse_stroke(level)
    high = ACTION_MAX_LEVEL[name]
    if not colon:
        raise InvalidCommand(f"action: {name} needs a level 0–{high}, like {name}:{high // 2}")
    if _LEVEL.fullmatch(level) is None:
        raise InvalidCommand(f"action: {name} level must be a whole number 0–{high}, got {level!r}")
    value = int(level)
    if not 0 <= value <= high:
        raise InvalidCommand(f"action: {name} level {value} is out of range 0–{high}")
    return name, value


def _parse_stroke(text: str) -> tuple[int, int]:
    """Parse Stroke's ``min-max`` range."""
    found = _STROKE.fullmatch(text)
    if found is None:
        raise InvalidCommand(
            f"action: Stroke needs min-max whole numbers within 0–{STROKE_MAX}, "
            f"like Stroke:0-20, got {text!r}"
        )
    low, high = int(found[1]), int(found[2])
    if high > STROKE_MAX:
        raise InvalidCommand(f"action: Stroke {low}-{high} is out of range 0–{STROKE_MAX}")
    if low >= high:
        raise InvalidCommand(f"action: Stroke minimum {low} must be below the maximum {high}")
    if high - low < STROKE_MIN_SPAN:
        raise InvalidCommand(
            f"action: Stroke {low}-{high} spans {high - low}; "
            f"min and max must be at least {STROKE_MIN_SPAN} apart"
        )
    return low, high


def _check_pattern_v2(cmd: PatternV2) -> None:
    """Check the fields each PatternV2 operation takes."""
    if cmd.stopPrevious is not None and cmd.type != "InitPlay":
        raise InvalidCommand(
            f"stopPrevious: PatternV2 {cmd.type} takes no stopPrevious (only InitPlay does)"
        )
    match cmd.type:
        case "Setup":
            _forbid(cmd, _PLAY_FIELDS, "Play and InitPlay")
            _check_actions(cmd)
        case "Play":
            _forbid(cmd, ("actions",), "Setup and InitPlay")
            _check_play(cmd)
        case "InitPlay":
            _check_actions(cmd)
            _check_play(cmd)
        case "Stop" | "SyncTime":
            _forbid(cmd, ("actions",), "Setup and InitPlay")
            _forbid(cmd, _PLAY_FIELDS, "Play and InitPlay")
        case _:
            assert_never(cmd.type)


def _forbid(cmd: PatternV2, fields: tuple[str, ...], where: str) -> None:
    """Reject any of fields given on a PatternV2 operation that takes none of them."""
    for field in fields:
        if getattr(cmd, field) is not None:
            raise InvalidCommand(
                f"{field}: PatternV2 {cmd.type} takes no {field} (only {where} do)"
            )


def _check_actions(cmd: PatternV2) -> None:
    """Check PatternV2 actions: present, ts strictly increasing within range, pos 0–100."""
    if not cmd.actions:
        raise InvalidCommand(
            f'actions: PatternV2 {cmd.type} needs at least one action, like {{"ts": 0, "pos": 10}}'
        )
    previous: int | None = None
    for index, action in enumerate(cmd.actions):
        if not 0 <= action.ts <= PATTERN_V2_MAX_TS_MS:
            raise InvalidCommand(
                f"actions[{index}].ts: must be 0–{PATTERN_V2_MAX_TS_MS:,} ms, got {action.ts}"
            )
        if previous is not None and action.ts <= previous:
            raise InvalidCommand(
                f"actions[{index}].ts: must be greater than the previous ts ({previous}), "
                f"got {action.ts}"
            )
        if not 0 <= action.pos <= POSITION_MAX:
            raise InvalidCommand(
                f"actions[{index}].pos: must be 0–{POSITION_MAX}, got {action.pos}"
            )
        previous = action.ts


def _check_play(cmd: PatternV2) -> None:
    """Check PatternV2 Play's optional startTime, offsetTime and timeMs."""
    if cmd.startTime is not None and not 0 <= cmd.startTime <= PATTERN_V2_MAX_TS_MS:
        raise InvalidCommand(
            f"startTime: must be 0–{PATTERN_V2_MAX_TS_MS:,} ms, got {cmd.startTime}"
        )
    if cmd.offsetTime is not None and not 0 <= cmd.offsetTime <= PATTERN_V2_MAX_OFFSET_MS:
        raise InvalidCommand(
            f"offsetTime: must be 0–{PATTERN_V2_MAX_OFFSET_MS:,} ms, got {cmd.offsetTime}"
        )
    if cmd.timeMs is not None:
        _check_finite("timeMs", cmd.timeMs)
        if not cmd.timeMs > PATTERN_V2_MIN_TIME_MS:
            raise InvalidCommand(
                f"timeMs: must be more than {PATTERN_V2_MIN_TIME_MS} ms, got {_number(cmd.timeMs)}"
            )


def _check_preset(cmd: Preset) -> None:
    """Check a Preset's name and total time."""
    if cmd.name not in PRESETS:
        raise InvalidCommand(f"name: unknown preset {cmd.name!r}; presets are {_join(PRESETS)}")
    _check_time_sec(cmd.timeSec, required=True)


def _check_qr_code(cmd: GetQrCode | Forget | GetUser) -> None:
    """Check that GetQrCode, Forget or GetUser names exactly one user and no toy or LAN app."""
    verb = {"GetQrCode": "pairs", "Forget": "erases"}.get(cmd.kind, "describes")
    if isinstance(cmd, GetUser) and cmd.mode != "auto":
        raise InvalidCommand("mode: GetUser contacts neither the app nor Lovense; remove mode")
    if cmd.uids is not None:
        raise InvalidCommand(f"uids: {cmd.kind} {verb} one user; give a single uid")
    if cmd.toy is not None:
        raise InvalidCommand(f"toy: {cmd.kind} takes no toy; remove it")
    if cmd.lan is not None:
        where = "goes to Lovense's server" if isinstance(cmd, GetQrCode) else "names no app"
        raise InvalidCommand(f"lan: {cmd.kind} {where}; remove lan")


def _check_time_sec(seconds: float | None, *, required: bool) -> None:
    """Check a total running time: 0 runs until stopped, otherwise more than 1 second."""
    if seconds is None:
        if required:
            raise InvalidCommand(
                "timeSec: required; give 0 to run until stopped or more than 1 second"
            )
        return
    _check_finite("timeSec", seconds)
    if not (seconds == 0 or seconds > 1):
        raise InvalidCommand(
            f"timeSec: must be 0 (run until stopped) or more than 1 second, got {_number(seconds)}"
        )


def _check_finite(field: str, value: float) -> None:
    """Reject NaN and infinities, which a Python producer can put in a Struct."""
    if not math.isfinite(value):
        raise InvalidCommand(f"{field}: must be a finite number, got {value!r}")


def _number(value: float) -> str:
    """Format a number as a producer wrote it: ``20`` rather than ``20.0``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _join(words: tuple[str, ...]) -> str:
    """Join words as a plain-English list: ``a, b and c``."""
    return f"{', '.join(words[:-1])} and {words[-1]}" if len(words) > 1 else "".join(words)
