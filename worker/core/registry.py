"""The LAN registry: each user's Lovense Remote endpoint, learned from verified callbacks.

Pure state on an injected clock (epoch seconds). Entries are kept compact, a
single ``bytes`` per user (address, port, last seen, flags, then the toys and
app details as msgpack), because a platform has millions of users and a dict
of objects costs several times as much. Entries not refreshed within
``LOVENSE_LAN_TTL_S`` are forgotten. Snapshots (:meth:`Registry.dump` /
:meth:`Registry.load`) carry the same blobs in chunks.

Batteries came later than the other toy fields: an entry written before them
(a snapshot of an older worker) reads back with every battery unknown.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from worker.contract.messages import LanTarget
from worker.core.callbacks import Callback
from worker.core.lan import LanAddress

_HEAD: Final = struct.Struct("!IHdB")
_VERIFIED: Final = 1
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode
#: Toy: (id, name, nickName, status, functions, battery); functions from GetToys, else "";
#: battery in percent as a callback or GetToys last reported it, else -1.
ToyRecord = tuple[str, str, str, int, str, int]
NO_BATTERY: Final = -1
#: Where the last-seen time sits in an entry's head (see :func:`same_state`).
_SEEN: Final = slice(6, 14)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A user's Remote app as last seen."""

    uid: str
    ip: str
    port: int
    seen_s: float
    verified: bool
    platform: str
    app_type: str
    version: str
    toys: tuple[ToyRecord, ...]

    @property
    def domain(self) -> str:
        """Return the app's dashed ``lovense.club`` name."""
        return f"{self.ip.replace('.', '-')}.lovense.club"

    @property
    def target(self) -> LanTarget:
        """Return the endpoint as a command's ``lan`` target (it still passes the door)."""
        return LanTarget(domain=self.domain, httpsPort=self.port)

    def toy(self, toy_id: str) -> ToyRecord | None:
        """Return one toy of this app by id."""
        return next((t for t in self.toys if t[0] == toy_id), None)


def _status(value: int | str) -> int:
    if isinstance(value, int):
        return value
    return int(value) if value.isdigit() else 0


def battery_level(value: object) -> int:
    """Return a reported battery as a percent 0–100, or NO_BATTERY when it is not one."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
        return value
    return NO_BATTERY


def same_state(a: bytes, b: bytes) -> bool:
    """Return whether two entries say the same apart from when they were seen."""
    return a[:_SEEN.start] == b[:_SEEN.start] and a[_SEEN.stop:] == b[_SEEN.stop:]


def _encode(ip: str, port: int, seen_s: float, verified: bool, meta: tuple[Any, ...]) -> bytes:
    head = _HEAD.pack(int(ipaddress.IPv4Address(ip)), port, seen_s,
                      _VERIFIED if verified else 0)
    return head + _pack(meta)


class Registry:
    """Users' LAN endpoints: record, look up, forget, expire, snapshot."""

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self._entries: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, uid: object) -> bool:
        return uid in self._entries

    def record(self, callback: Callback, address: LanAddress, verified: bool,
               seen_s: float | None = None) -> None:
        """Record (or refresh) a user's endpoint from an accepted callback."""
        known = self.get(callback.uid, fresh_only=False)
        toys = []
        for t in callback.toys.values():
            old = known.toy(t.id) if known else None
            battery = battery_level(t.battery) if t.battery is not None else NO_BATTERY
            if battery == NO_BATTERY and old is not None:
                battery = old[5]  # a callback without a battery keeps the last one reported
            toys.append((t.id, t.name, t.nickName, _status(t.status), old[4] if old else "",
                         battery))
        meta = (callback.platform, callback.appType, callback.version, tuple(toys))
        seen = self._clock() if seen_s is None else seen_s
        self._entries[callback.uid] = _encode(address.ip, address.port, seen, verified, meta)

    def learn_toys(self, uid: str, functions: Mapping[str, list[str]],
                   batteries: Mapping[str, int]) -> None:
        """Remember what a GetToys answer said of known toys: what each can do, its battery."""
        known = self.get(uid, fresh_only=False)
        if known is None:
            return
        toys = tuple(
            (t[0], t[1], t[2], t[3], ",".join(functions[t[0]]) if t[0] in functions else t[4],
             batteries.get(t[0], t[5]))
            for t in known.toys
        )
        meta = (known.platform, known.app_type, known.version, toys)
        self._entries[uid] = _encode(known.ip, known.port, known.seen_s, known.verified, meta)

    def raw(self, uid: str) -> bytes | None:
        """Return a user's entry as stored (compare two with :func:`same_state`)."""
        return self._entries.get(uid)

    def fresh(self, blob: bytes) -> bool:
        """Return whether an entry was seen within the TTL."""
        return self._clock() - float(_HEAD.unpack_from(blob)[2]) <= self._ttl

    def forget(self, uid: str) -> bool:
        """Remove a user; return whether they were known."""
        return self._entries.pop(uid, None) is not None

    def get(self, uid: str, *, fresh_only: bool = True) -> Endpoint | None:
        """Return a user's endpoint, or None when unknown (or stale, unless asked)."""
        blob = self._entries.get(uid)
        if blob is None or (fresh_only and not self.fresh(blob)):
            return None
        return self.decode(uid, blob)

    @staticmethod
    def decode(uid: str, blob: bytes) -> Endpoint:
        """Return the endpoint an entry (from :meth:`raw`) describes."""
        ip, port, seen, flags = _HEAD.unpack_from(blob)
        platform, app_type, version, toys = _unpack(blob[_HEAD.size:])
        return Endpoint(
            uid=uid, ip=str(ipaddress.IPv4Address(ip)), port=port, seen_s=seen,
            verified=bool(flags & _VERIFIED), platform=platform, app_type=app_type,
            version=version, toys=tuple((*t, NO_BATTERY)[:6] for t in toys),
        )

    def stale(self, grace_s: float = 0.0) -> list[tuple[str, float]]:
        """Return each user not refreshed within the TTL (plus a grace), and when last seen."""
        horizon = self._clock() - self._ttl - grace_s
        return [(uid, seen) for uid, blob in self._entries.items()
                if (seen := _HEAD.unpack_from(blob)[2]) < horizon]

    def prune(self, grace_s: float = 0.0) -> int:
        """Forget every entry not refreshed within the TTL (plus a grace); return how many went."""
        stale = self.stale(grace_s)
        for uid, _ in stale:
            del self._entries[uid]
        return len(stale)

    def dump(self, chunk_size: int) -> Iterator[bytes]:
        """Yield the registry as msgpack chunks of at most ``chunk_size`` entries.

        Chunks are made one at a time (a full copy would double the memory), so
        entries may change between chunks; a snapshot stays correct because its
        loader replays the log from an offset taken before the first chunk.
        """
        uids = list(self._entries)
        for start in range(0, len(uids), chunk_size):
            entries = self._entries
            pairs = [(uid, entries[uid]) for uid in uids[start : start + chunk_size]
                     if uid in entries]
            yield _pack(pairs)

    def load(self, chunk: bytes) -> int:
        """Merge one snapshot chunk (newer entries win); return how many entries it held."""
        pairs = _unpack(chunk)
        for uid, blob in pairs:
            current = self._entries.get(uid)
            if current is None or _HEAD.unpack_from(current)[2] < _HEAD.unpack_from(blob)[2]:
                self._entries[uid] = blob
        return len(pairs)
