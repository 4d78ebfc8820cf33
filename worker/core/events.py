"""User lifecycle: what changed in a user's registry entry, as events; what GetUser says.

Pure. The callback-log follower hands in a user's entry before and after each
log entry it applies; every replica applies the same log in the same order, so
every replica derives the same events, with the same ids (made from the log
entry's message id and offset): only the one that publishes them differs.

Battery thresholds: a level at or below 20 % is low, at or below 10 % critical;
a change is reported when a reported level crosses either, down or back up.
An unknown level (never reported) crosses nothing.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Final, Literal

from worker.contract.messages import Via
from worker.contract.users import (
    Circuit,
    ToyChange,
    UserEvent,
    UserExpired,
    UserInfo,
    UserPaired,
    UserToy,
    UserToys,
)
from worker.core.registry import NO_BATTERY, Endpoint, ToyRecord

#: Battery levels (percent) whose crossing is an event, highest first.
THRESHOLDS: Final[tuple[Literal[20, 10], ...]] = (20, 10)
#: How often the active replica looks for expired users, at most and at least.
SWEEP_MAX_S: Final = 60.0
SWEEP_MIN_S: Final = 1.0


def sweep_interval_s(ttl_s: float) -> float:
    """Return how often to look for users past ``ttl_s``: a twentieth of it, 1–60 s."""
    return max(SWEEP_MIN_S, min(SWEEP_MAX_S, ttl_s / 20))


def rfc3339_s(epoch_s: float) -> str:
    """Return epoch seconds as an RFC 3339 UTC timestamp with milliseconds."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_id(key: str, kind: str) -> str:
    """Return an event's id: the same for the same change (``key``) on every replica."""
    return hashlib.blake2b(f"{key}/{kind}".encode(), digest_size=16).hexdigest()


def crossed(previous: int | None, now: int | None) -> list[Literal[20, 10]]:
    """Return the thresholds a battery level crossed going from ``previous`` to ``now``."""
    if previous is None or now is None or previous == now:
        return []
    if now < previous:
        return [t for t in THRESHOLDS if now <= t < previous]
    return [t for t in reversed(THRESHOLDS) if previous <= t < now]


def _battery(toy: ToyRecord) -> int | None:
    return None if toy[5] == NO_BATTERY else toy[5]


def _connected(toy: ToyRecord | None) -> bool:
    return toy is not None and toy[3] == 1


def toy_views(endpoint: Endpoint) -> list[UserToy]:
    """Return a user's toys as events and GetUser show them."""
    return [UserToy(id=t[0], name=t[1], status="connected" if _connected(t) else "disconnected",
                    battery=_battery(t)) for t in endpoint.toys]


def toy_changes(before: tuple[ToyRecord, ...], after: tuple[ToyRecord, ...]) -> list[ToyChange]:
    """Return what changed from one toy list to the next: connections and battery crossings.

    A toy that leaves the list while connected counts as disconnected; one that
    joins it disconnected is no change.
    """
    old = {t[0]: t for t in before}
    changes = []
    for toy in after:
        was = old.pop(toy[0], None)
        if _connected(toy) != _connected(was):
            changes.append(ToyChange(
                toy=toy[0], change="connected" if _connected(toy) else "disconnected",
                battery=_battery(toy)))
        previous = _battery(was) if was is not None else None
        if thresholds := crossed(previous, _battery(toy)):
            changes.append(ToyChange(toy=toy[0], change="battery", battery=_battery(toy),
                                     previous=previous, crossed=thresholds))
    changes.extend(ToyChange(toy=gone[0], change="disconnected", battery=_battery(gone))
                   for gone in old.values() if _connected(gone))
    return changes


def _pairing_reason(before: Endpoint | None,
                    after: Endpoint) -> Literal["first-callback", "new-endpoint"] | None:
    if before is None or (after.verified and not before.verified):
        return "first-callback"
    if (before.ip, before.port) != (after.ip, after.port):
        return "new-endpoint"
    return None


def after_callback(before: Endpoint | None, after: Endpoint, *, key: str,
                   at: str) -> list[UserEvent]:
    """Return the events one applied callback makes: paired, then toys.

    ``before`` is the user's entry as it stood, or None when unknown or stale (a
    user whose endpoint expired pairs again). Pairing lists the toys, so a first
    callback makes no toys event of its own.
    """
    events: list[UserEvent] = []
    if (reason := _pairing_reason(before, after)) is not None:
        events.append(UserPaired(
            id=event_id(key, "user.paired"), uid=after.uid, at=at, reason=reason,
            domain=after.domain, httpsPort=after.port, verified=after.verified,
            platform=after.platform, appType=after.app_type, version=after.version,
            toys=toy_views(after)))
    if before is not None and (changes := toy_changes(before.toys, after.toys)):
        events.append(UserToys(id=event_id(key, "user.toys"), uid=after.uid, at=at,
                               source="callback", changes=changes, toys=toy_views(after)))
    return events


def after_report(before: Endpoint, after: Endpoint, *, key: str, at: str) -> list[UserEvent]:
    """Return the events a GetToys report makes: its batteries' crossings, if any."""
    changes = toy_changes(before.toys, after.toys)
    if not changes:
        return []
    return [UserToys(id=event_id(key, "user.toys"), uid=after.uid, at=at, source="GetToys",
                     changes=changes, toys=toy_views(after))]


def expired(uid: str, seen_s: float, *, key: str, at: str) -> UserExpired:
    """Return the event of a user whose endpoint was not refreshed within the TTL."""
    return UserExpired(id=event_id(key, "user.expired"), uid=uid, at=at,
                       lastSeenAt=rfc3339_s(seen_s))


def user_info(endpoint: Endpoint | None, *, route: Via, circuit: Circuit) -> UserInfo:
    """Return GetUser's answer: ``paired: false`` alone when no fresh endpoint is known."""
    if endpoint is None:
        return UserInfo(paired=False)
    return UserInfo(paired=True, route=route, toys=toy_views(endpoint),
                    lastSeenAt=rfc3339_s(endpoint.seen_s), circuit=circuit)
