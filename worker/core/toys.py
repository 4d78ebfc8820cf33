"""Toy awareness: what a named toy can do, so a command it cannot carry out is refused.

What a toy can do comes from the app itself when known (GetToys'
``fullFunctionNames``, remembered in the registry), else from the capability
table of docs/lovense-api.md by toy name. Unknown toys are not second-guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from worker.contract.messages import Command, Function, Position
from worker.core import rules

#: Functions by toy name (lower case), from docs/lovense-api.md's capability table.
CAPABILITIES: Final[dict[str, frozenset[str]]] = {
    **{name: frozenset({"Vibrate", "Rotate"}) for name in ("nora", "ridge", "flexer")},
    "max": frozenset({"Vibrate", "Pump"}),
    **{name: frozenset({"Vibrate"}) for name in (
        "edge", "dolce", "gemini", "osci", "hyphy", "lapis", "lush", "hush", "ambi", "domi",
        "ferri", "diamo", "exomoon")},
    **{name: frozenset({"Vibrate", "Thrusting", "Oscillate"}) for name in ("gravity", "spinel")},
    "solace": frozenset({"Thrusting"}),
    "solace pro": frozenset({"Thrusting", "Position"}),
    "solacepro": frozenset({"Thrusting", "Position"}),
}
#: Actions every toy takes, and actions that travel with another (Stroke with Thrusting).
_ANY_TOY: Final = frozenset({"All", "Stop"})
_RIDES_ALONG: Final = {"Stroke": "Thrusting", "Depth": "Thrusting"}


def functions_of(name: str, reported: str) -> frozenset[str] | None:
    """Return a toy's functions: as the app reported them, else by name, else unknown."""
    if reported:
        return frozenset(f.strip() for f in reported.split(",") if f.strip())
    return CAPABILITIES.get(name.strip().lower())


def unsupported(cmd: Command, toys: Iterable[tuple[str, str, frozenset[str] | None]]) -> str | None:
    """Return why a named toy cannot carry out cmd, or None; toys are (id, name, functions)."""
    if isinstance(cmd, Function):
        wanted = {name for name, _ in rules.parse_action(cmd.action)} - _ANY_TOY
    elif isinstance(cmd, Position):
        wanted = {"Position"}
    else:
        return None
    for toy_id, name, functions in toys:
        if functions is None:
            continue
        missing = sorted(
            w for w in wanted if w not in functions and _RIDES_ALONG.get(w) not in functions
        )
        if missing:
            can = ", ".join(sorted(functions)) or "nothing the worker knows of"
            label = f"{name.capitalize()} {toy_id}" if name else toy_id
            return f"toy: {label} cannot {' or '.join(missing)}; it can {can}"
    return None
