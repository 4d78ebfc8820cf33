"""The LAN door: which addresses the worker may ever dial."""

from __future__ import annotations

import ipaddress

import pytest

from worker.contract.errors import InvalidCommand, NotDelivered
from worker.core.lan import LanAddress, open_door, parse_domain

HOME = (ipaddress.ip_network("192.168.0.0/16"),)
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


def test_dashed_name_becomes_its_address_without_dns() -> None:
    """A dashed lovense.club name is turned into its IPv4 address locally."""
    assert open_door("192-168-1-44.lovense.club", 34568, HOME) == LanAddress(
        ip="192.168.1.44", port=34568, domain="192-168-1-44.lovense.club"
    )


def test_name_is_case_insensitive_and_normalised() -> None:
    """Upper-case names are accepted and verified in lower case."""
    assert open_door("127-0-0-1.LOVENSE.CLUB", 30010, LOOPBACK).domain == "127-0-0-1.lovense.club"


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("192.168.1.44", "lan.domain: '192.168.1.44' is not a dashed IPv4 address under "
         "lovense.club (like 192-168-1-44.lovense.club)"),
        ("192-168-1-44.lovense.club.evil.com", "lan.domain: '192-168-1-44.lovense.club.evil.com' "
         "is not a dashed IPv4 address under lovense.club (like 192-168-1-44.lovense.club)"),
        ("evil-192-168-1-44.lovense.club", "lan.domain: 'evil-192-168-1-44.lovense.club' is not "
         "a dashed IPv4 address under lovense.club (like 192-168-1-44.lovense.club)"),
        ("3232235820.lovense.club", "lan.domain: '3232235820.lovense.club' is not a dashed IPv4 "
         "address under lovense.club (like 192-168-1-44.lovense.club)"),
        ("0300-0250-01-054.lovense.club", "lan.domain: '0300-0250-01-054.lovense.club' is not a "
         "dashed IPv4 address under lovense.club (like 192-168-1-44.lovense.club)"),
        ("192-168-01-44.lovense.club", "lan.domain: '192-168-01-44.lovense.club' has an octet "
         "'01' that is not a plain decimal 0–255"),
        ("192-168-1-256.lovense.club", "lan.domain: '192-168-1-256.lovense.club' has an octet "
         "'256' that is not a plain decimal 0–255"),
        ("--1.lovense.club", "lan.domain: '--1.lovense.club' is not a dashed IPv4 address under "
         "lovense.club (like 192-168-1-44.lovense.club)"),
        ("fe80--1.lovense.club", "lan.domain: 'fe80--1.lovense.club' is not a dashed IPv4 address "
         "under lovense.club (like 192-168-1-44.lovense.club)"),
        ("192-168-1-44.lovense.club.", "lan.domain: '192-168-1-44.lovense.club.' is not a dashed "
         "IPv4 address under lovense.club (like 192-168-1-44.lovense.club)"),
        ("１９２-168-1-44.lovense.club",
         "lan.domain: '１９２-168-1-44.lovense.club' is not a dashed IPv4 address "
         "under lovense.club (like 192-168-1-44.lovense.club)"),
    ],
)
def test_malformed_names_are_invalid(domain: str, message: str) -> None:
    """Anything but a plain dashed IPv4 under lovense.club is refused, naming the problem."""
    with pytest.raises(InvalidCommand) as caught:
        parse_domain(domain)
    assert str(caught.value) == message


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_ports_outside_range_are_invalid(port: int) -> None:
    """Ports outside 1–65535 are refused before anything else."""
    with pytest.raises(InvalidCommand) as caught:
        open_door("192-168-1-44.lovense.club", port, HOME)
    assert str(caught.value) == f"lan.httpsPort: must be 1–65535, got {port}"


@pytest.mark.parametrize(
    ("domain", "why"),
    [
        ("169-254-169-254.lovense.club", "LAN address 169.254.169.254 is link-local (cloud "
         "metadata lives there); the worker never connects to it"),
        ("0-0-0-0.lovense.club", "LAN address 0.0.0.0 is unspecified; the worker never "
         "connects to it"),
        ("224-0-0-1.lovense.club", "LAN address 224.0.0.1 is multicast; the worker never "
         "connects to it"),
        ("255-255-255-255.lovense.club", "LAN address 255.255.255.255 is the broadcast address; "
         "the worker never connects to it"),
        ("240-0-0-1.lovense.club", "LAN address 240.0.0.1 is reserved; the worker never "
         "connects to it"),
    ],
)
def test_special_addresses_are_never_dialled_even_when_allowed(domain: str, why: str) -> None:
    """Metadata, unspecified, multicast, broadcast and reserved addresses are refused always."""
    everything = (ipaddress.ip_network("0.0.0.0/0"),)
    with pytest.raises(NotDelivered) as caught:
        open_door(domain, 443, everything)
    assert str(caught.value) == why


def test_address_outside_allow_list_is_not_dialled() -> None:
    """A well-formed address outside LOVENSE_LAN_ALLOW is refused as not delivered."""
    with pytest.raises(NotDelivered) as caught:
        open_door("127-0-0-2.lovense.club", 34568, LOOPBACK)
    assert str(caught.value) == (
        "LAN address 127.0.0.2 is outside LOVENSE_LAN_ALLOW; the worker did not connect"
    )


def test_empty_allow_list_turns_the_lan_route_off() -> None:
    """With no allowed networks the LAN route is off and says so."""
    with pytest.raises(NotDelivered) as caught:
        open_door("192-168-1-44.lovense.club", 34568, ())
    assert str(caught.value) == "the LAN route is off: LOVENSE_LAN_ALLOW is empty"
