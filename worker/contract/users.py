"""The user contract: lifecycle events on ``lovense.events`` and the GetUser answer.

Events are JSON, one per AMQP message, routing key = the event's ``type``
(``user.paired``, ``user.toys``, ...). Every event has ``id``, ``type``, ``uid``
and ``at`` (RFC 3339 UTC). None carries a token or utoken; only ``user.paired``
carries the LAN address. The GetUser command's result has a :class:`UserInfo`
as its ``data``. A :class:`ToysReport` is internal: what a GetToys answer said,
written to the callback log so every replica learns it.

The Structs here are the contract: ``schemas/`` is generated from them.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta, Struct

from worker.contract.messages import Via

ToyStatus = Literal["connected", "disconnected"]
Circuit = Literal["closed", "open", "half-open"]
Battery = Annotated[int, Meta(ge=0, le=100, description="percent")]


class UserToy(Struct, kw_only=True):
    """One toy of a user, as last reported by the app."""

    id: str
    name: str
    status: ToyStatus
    #: As a callback or a GetToys answer last reported it; null when never reported.
    battery: Battery | None


class ToyChange(Struct, kw_only=True):
    """What changed about one toy: it connected, disconnected, or its battery crossed 20 % or 10 %.

    A battery change lists the thresholds it crossed in the order it crossed them
    (``[20, 10]`` from 25 % to 5 %, ``[20]`` from 15 % to 30 %).
    """

    toy: str
    change: Literal["connected", "disconnected", "battery"]
    battery: Battery | None = None
    previous: Battery | None = None
    crossed: list[Literal[20, 10]] = msgspec.field(default_factory=list)


class _Event(Struct, tag_field="type", kw_only=True):
    """Fields every event has."""

    id: Annotated[str, Meta(description="unique per event; the same on every replica for "
                                        "events derived from one callback-log entry")]
    uid: str
    at: Annotated[str, Meta(description="RFC 3339 UTC: when the worker saw the change")]

    @property
    def kind(self) -> str:
        """Return the event's type, which is also its routing key."""
        return type(self).__struct_config__.tag  # type: ignore[return-value]


class UserPaired(_Event, tag="user.paired", kw_only=True):
    """A user's first verified callback, or a callback naming a new endpoint (address, port)."""

    reason: Literal["first-callback", "new-endpoint"]
    domain: str
    httpsPort: int
    verified: bool
    platform: str
    appType: str
    version: str
    toys: list[UserToy]


class UserToys(_Event, tag="user.toys", kw_only=True):
    """A toy connected or disconnected, or its battery crossed 20 % or 10 %."""

    source: Literal["callback", "GetToys"]
    changes: list[ToyChange]
    toys: list[UserToy]


class UserExpired(_Event, tag="user.expired", kw_only=True):
    """No callback within LOVENSE_LAN_TTL_S: the user's endpoint is forgotten."""

    lastSeenAt: str


class UserForgotten(_Event, tag="user.forgotten", kw_only=True):
    """A Forget command erased the user."""

    #: Whether the replica that ran the Forget knew the user.
    known: bool


class UserUnreachable(_Event, tag="user.unreachable", kw_only=True):
    """A worker process's circuit for the user's app opened: its LAN calls go to the server for
    now."""

    #: The worker process (its member id: host name and a random suffix).
    replica: str
    cooldownS: int


class UserReachable(_Event, tag="user.reachable", kw_only=True):
    """A worker process's circuit for the user's app closed: a LAN call reached the app again."""

    #: The worker process (its member id).
    replica: str


UserEvent = UserPaired | UserToys | UserExpired | UserForgotten | UserUnreachable | UserReachable

EVENT_TYPES: Final[tuple[str, ...]] = tuple(
    str(t.__struct_config__.tag)
    for t in (UserPaired, UserToys, UserExpired, UserForgotten, UserUnreachable, UserReachable)
)


class UserInfo(Struct, kw_only=True, omit_defaults=True):
    """GetUser's ``data``: what the worker knows of a user; only ``paired`` when nothing."""

    paired: bool
    #: The route ``mode: auto`` would take now.
    route: Via | None = None
    toys: list[UserToy] | None = None
    lastSeenAt: str | None = None
    #: This replica's circuit for the user's app.
    circuit: Circuit | None = None


class ReportedToy(Struct, kw_only=True, omit_defaults=True):
    """One toy as a GetToys answer described it: its battery and what it can do."""

    battery: Battery | None = None
    fullFunctionNames: Annotated[list[Annotated[str, Meta(max_length=64)]],
                                 Meta(max_length=64)] | None = None


class ToysReport(Struct, kw_only=True):
    """Internal: a GetToys answer's news, for every replica (uid in ``x-lovense-toys``)."""

    toys: Annotated[dict[Annotated[str, Meta(max_length=64)], ReportedToy], Meta(max_length=64)]


event_encoder: Final = msgspec.json.Encoder()
event_decoder: Final[msgspec.json.Decoder[UserEvent]] = msgspec.json.Decoder(UserEvent)
report_decoder: Final = msgspec.json.Decoder(ToysReport)
