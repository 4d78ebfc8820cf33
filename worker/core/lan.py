"""The LAN door: which Lovense Remote app addresses the worker may ever connect to.

A LAN target names a host and port the worker will call, and it comes from
outside (a producer's ``lan`` field, later a user's callback). This module is
the only way to get a :class:`LanAddress`, and :mod:`worker.adapters.http.lovense` only
dials a ``LanAddress``; so every LAN connection passed these checks first:

* the domain is a dashed IPv4 under ``lovense.club`` (``192-168-1-44.lovense.club``),
  each octet a plain decimal 0–255 without leading zeros (no octal or decimal
  tricks), turned into its IP locally with no DNS lookup (home routers with
  DNS-rebind protection refuse these names, and DNS is not ours to trust);
* the port is 1–65535;
* the address is never unspecified, link-local (cloud metadata lives at
  169.254.169.254), multicast, broadcast or reserved, whatever the allow list says;
* the address is inside ``LOVENSE_LAN_ALLOW``.

TLS is still verified against the ``lovense.club`` name (see :mod:`worker.adapters.http.lovense`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from worker.contract.errors import InvalidCommand, NotDelivered

#: The networks a LAN address may be in (``LOVENSE_LAN_ALLOW``); empty means private ones.
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

_DASHED: Final = re.compile(r"(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})\.lovense\.club", re.ASCII)
_OCTET: Final = re.compile(r"0|[1-9]\d{0,2}", re.ASCII)


@dataclass(frozen=True, slots=True)
class LanAddress:
    """An app address that passed the door: dial ``ip:port``, verify TLS as ``domain``."""

    ip: str
    port: int
    domain: str

    @property
    def host_header(self) -> str:
        """Return the Host header the real name would have produced."""
        return f"{self.domain}:{self.port}"


def parse_domain(domain: str) -> ipaddress.IPv4Address:
    """Return the IPv4 address a dashed ``lovense.club`` name stands for."""
    name = domain.lower()
    match = _DASHED.fullmatch(name)
    if match is None:
        raise InvalidCommand(
            f"lan.domain: {domain!r} is not a dashed IPv4 address under lovense.club "
            "(like 192-168-1-44.lovense.club)"
        )
    octets = match.groups()
    for octet in octets:
        if not _OCTET.fullmatch(octet) or int(octet) > 255:
            raise InvalidCommand(
                f"lan.domain: {domain!r} has an octet {octet!r} that is not a plain decimal 0–255"
            )
    return ipaddress.IPv4Address(".".join(octets))


def _never_dialled(ip: ipaddress.IPv4Address) -> str | None:
    if ip.is_unspecified:
        return "is unspecified"
    if ip.is_link_local:
        return "is link-local (cloud metadata lives there)"
    if ip.is_multicast:
        return "is multicast"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "is the broadcast address"
    if ip.is_reserved:
        return "is reserved"
    return None


def open_door(domain: str, port: int, allow: Networks) -> LanAddress:
    """Return the address to dial for an app, or raise why it must not be dialled.

    Raises :class:`InvalidCommand` when the name or port is malformed (the
    producer must fix it) and :class:`NotDelivered` when a well-formed address
    is not one this worker may call (nothing was sent; the result is ``failed``).
    """
    ip = parse_domain(domain)
    if not 1 <= port <= 65535:
        raise InvalidCommand(f"lan.httpsPort: must be 1–65535, got {port}")
    reason = _never_dialled(ip)
    if reason is not None:
        raise NotDelivered(f"LAN address {ip} {reason}; the worker never connects to it")
    if not allow:
        raise NotDelivered("the LAN route is off: LOVENSE_LAN_ALLOW is empty")
    if not any(ip in net for net in allow):
        raise NotDelivered(
            f"LAN address {ip} is outside LOVENSE_LAN_ALLOW; the worker did not connect"
        )
    return LanAddress(ip=str(ip), port=port, domain=domain.lower())
