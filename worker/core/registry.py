"""The LAN registry: each user's Lovense Remote endpoint, learned from verified callbacks.

Pure state on an injected clock (epoch seconds). Entries are kept compact, a
single ``bytes`` per user (address, port, last seen, flags, then the toys and
app details as msgpack), because a platform has millions of users and a dict
of objects costs several times as much. Entries not refreshed within
``LOVENSE_LAN_TTL_S`` are forgotten. Snapshots (:meth:`Registry.dump` /
:meth:`Registry.load`) carry the same blobs in chunks.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterator
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
#: Toy: (id, name, nickName, status, functions); functions from GetToys, else "".
ToyRecord = tuple[str, str, str, int, str]


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
        toys = tuple(
            (t.id, t.name, t.nickName, _status(t.status), self._functions(callback.uid, t.id))
            for t in callback.toys.values()
        )
        meta = (callback.platform, callback.appType, callback.version, toys)
        seen = self._clock() if seen_s is None else seen_s
        self._entries[callback.uid] = _encode(address.ip, address.port, seen, verified, meta)

    def _functions(self, uid: str, toy_id: str) -> str:
        known = self.get(uid, fresh_only=False)
        old = known.toy(toy_id) if known else None
        return old[4] if old else ""

    def learn_functions(self, uid: str, functions: dict[str, list[str]]) -> None:
        """Remember what each toy can do, from a GetToys answer's fullFunctionNames."""
        known = self.get(uid, fresh_only=False)
        if known is None:
            return
        toys = tuple(
            (t[0], t[1], t[2], t[3], ",".join(functions[t[0]]) if t[0] in functions else t[4])
            for t in known.toys
        )
        meta = (known.platform, known.app_type, known.version, toys)
        self._entries[uid] = _encode(known.ip, known.port, known.seen_s, known.verified, meta)

    def forget(self, uid: str) -> bool:
        """Remove a user; return whether they were known."""
        return self._entries.pop(uid, None) is not None

    def get(self, uid: str, *, fresh_only: bool = True) -> Endpoint | None:
        """Return a user's endpoint, or None when unknown (or stale, unless asked)."""
        blob = self._entries.get(uid)
        if blob is None:
            return None
        ip, port, seen, flags = _HEAD.unpack_from(blob)
        if fresh_only and self._clock() - seen > self._ttl:
            return None
        platform, app_type, version, toys = _unpack(blob[_HEAD.size:])
        return Endpoint(
            uid=uid, ip=str(ipaddress.IPv4Address(ip)), port=port, seen_s=seen,
            verified=bool(flags & _VERIFIED), platform=platform, app_type=app_type,
            version=version, toys=tuple(tuple(t) for t in toys),
        )

    def prune(self) -> int:
        """Forget every entry not refreshed within the TTL; return how many went."""
        horizon = self._clock() - self._ttl
        stale = [uid for uid, blob in self._entries.items()
                 if _HEAD.unpack_from(blob)[2] < horizon]
        for uid in stale:
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
