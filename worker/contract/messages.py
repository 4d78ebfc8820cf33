"""The message contract: commands in, results out.

Producers publish one JSON command per AMQP message to ``lovense.commands``;
the worker publishes one JSON :class:`Result` per command identity to
``lovense.results``. Field names are the Lovense docs' own, so an example can
be copied from the docs (leaving out ``token``; the worker adds it).

The Structs here are the contract: the JSON Schemas in ``schemas/`` are
generated from them (``make schemas``). They check types and shapes only; the
documented rules (ranges, grammars, route limits) live in :mod:`worker.core.rules`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec
from msgspec import Meta, Struct

Mode = Literal["auto", "lan", "server"]
Status = Literal["ok", "failed", "invalid", "superseded", "expired", "dropped"]
Via = Literal["lan", "server"]

#: Commands that only the Lovense Remote app on the LAN understands.
LAN_ONLY_COMMANDS: Final = frozenset({"PatternV2", "Position", "GetToys", "GetToyName"})
#: Commands that only Lovense's server understands.
SERVER_ONLY_COMMANDS: Final = frozenset({"GetQrCode"})

NonEmptyStr = Annotated[str, Meta(min_length=1, max_length=256)]
#: Toy ids and command ids are bounded by the worker's caps after decoding, not here:
#: a Stop is never refused for a size (see :func:`worker.core.rules.stop_relief`).
ToyId = Annotated[str, Meta(min_length=1)]
CommandId = Annotated[str, Meta(min_length=1)]


class LanTarget(Struct, forbid_unknown_fields=True, frozen=True):
    """The Lovense Remote app to call on the LAN, as its callback names it."""

    domain: Annotated[str, Meta(max_length=253, description="e.g. 192-168-1-44.lovense.club")]
    httpsPort: int


class _Command(
    Struct,
    tag_field="command",
    forbid_unknown_fields=True,
    omit_defaults=True,
    kw_only=True,
):
    """Fields every command shares: who, which toy, which route, which identity."""

    uid: NonEmptyStr | None = None
    uids: list[NonEmptyStr] | None = None
    toy: ToyId | list[ToyId] | None = None
    mode: Mode = "auto"
    lan: LanTarget | None = None
    id: CommandId | None = None
    ttlMs: int | None = None

    #: The fields of this command that go to Lovense unchanged (besides
    #: ``command``, ``toy`` and ``apiVer``), in the docs' order.
    lovense_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def kind(self) -> str:
        """Return the command's name as the producer sent it (``Stop`` for the shorthand)."""
        return type(self).__struct_config__.tag  # type: ignore[return-value]

    @property
    def targets(self) -> list[str]:
        """Return the users this command is for."""
        if self.uids is not None:
            return self.uids
        return [self.uid] if self.uid is not None else []


class Function(_Command, tag="Function"):
    """Run toy functions: action like "Vibrate:16" or "Stroke:0-20,Thrusting:10" or "Stop"."""

    action: str
    timeSec: float | None = None
    loopRunningSec: float | None = None
    loopPauseSec: float | None = None
    stopPrevious: Literal[0, 1] | None = None
    apiVer: Literal[1] = 1

    lovense_fields = ("action", "timeSec", "loopRunningSec", "loopPauseSec", "stopPrevious")


class Stop(_Command, tag="Stop"):
    """Shorthand for ``Function`` with ``action: "Stop"``."""


class Pattern(_Command, tag="Pattern"):
    """Play a pattern: rule "V:1;F:v,r;S:1000#" and up to 50 strengths 0–20 like "20;5;10"."""

    rule: str
    strength: str
    timeSec: float | None = None
    apiVer: Literal[2] = 2

    lovense_fields = ("rule", "strength", "timeSec")


class PatternAction(Struct, forbid_unknown_fields=True, frozen=True):
    """One PatternV2 point: position ``pos`` 0–100 at ``ts`` milliseconds."""

    ts: int
    pos: int


class PatternV2(_Command, tag="PatternV2"):
    """Set up, play, stop or time-sync a position pattern (LAN only)."""

    type: Literal["Setup", "Play", "Stop", "SyncTime", "InitPlay"]
    actions: Annotated[list[PatternAction], Meta(max_length=100_000)] | None = None
    startTime: int | None = None
    offsetTime: int | None = None
    timeMs: float | None = None
    #: InitPlay only: 1 stops a running pattern, 0 (the app's default) queues behind it.
    stopPrevious: Literal[0, 1] | None = None
    apiVer: Literal[1] = 1

    lovense_fields = ("type", "actions", "startTime", "offsetTime", "timeMs", "stopPrevious")


class Preset(_Command, tag="Preset"):
    """Play a preset of the Remote app: pulse, wave, fireworks or earthquake."""

    name: Annotated[str, Meta(max_length=64)]
    timeSec: float | None = None
    apiVer: Literal[1] = 1

    lovense_fields = ("name", "timeSec")


class Position(_Command, tag="Position"):
    """Move a stroker (Solace Pro) to a position 0–100 (LAN only)."""

    value: Annotated[str, Meta(max_length=8)] | int
    apiVer: Literal[1] = 1

    lovense_fields = ("value",)


class GetToys(_Command, tag="GetToys"):
    """List the user's toys with what each can do (LAN only)."""


class GetToyName(_Command, tag="GetToyName"):
    """List the names of the user's toys (LAN only)."""


class GetQrCode(_Command, tag="GetQrCode"):
    """Ask Lovense for the QR code that pairs a user's Lovense Remote app (server only)."""

    uname: Annotated[str, Meta(max_length=256)] | None = None
    v: Literal[2] = 2


class Forget(_Command, tag="Forget"):
    """Erase a user's LAN endpoint from every replica's registry and from replays."""


class GetUser(_Command, tag="GetUser"):
    """Ask the worker what it knows of a user (a worker command: nothing is sent to Lovense)."""


Command = (
    Function | Stop | Pattern | PatternV2 | Preset | Position | GetToys | GetToyName | GetQrCode
    | Forget | GetUser
)

COMMAND_NAMES: Final[frozenset[str]] = frozenset(
    str(t.__struct_config__.tag)
    for t in (Function, Stop, Pattern, PatternV2, Preset, Position, GetToys, GetToyName, GetQrCode,
              Forget, GetUser)
)


class Result(Struct, kw_only=True):
    """The one terminal answer to a command identity."""

    id: str
    command: str
    uids: list[str]
    status: Status
    via: Via | None = None
    code: int | None = None
    message: str = ""
    data: Any = None
    attempts: int = 0
    fallback: bool = False
    redelivered: bool = False
    supersededBy: str | None = None
    failedUids: list[str] = msgspec.field(default_factory=list)
    receivedAt: str = ""
    completedAt: str = ""

    @property
    def routing_key(self) -> str:
        """Return the ``lovense.results`` routing key, ``<status>.<command>``."""
        return f"{self.status}.{self.command}"


command_decoder: Final[msgspec.json.Decoder[Command]] = msgspec.json.Decoder(Command)
result_decoder: Final = msgspec.json.Decoder(Result)
encoder: Final = msgspec.json.Encoder()
