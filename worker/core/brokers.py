"""The broker addresses: `LOVENSE_AMQP_URL` as a list of nodes, and the order to try them in.

``LOVENSE_AMQP_URL`` names one RabbitMQ node or several, comma-separated, all in
one cluster: every entry must name the same vhost and credentials (a comma
inside credentials is written ``%2C``). :func:`parse_brokers` checks that and
:func:`connect_order` shuffles the nodes for each connect, with an injected
random generator. Pure: no I/O, and no password in any ``repr`` or message.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

#: Default ports, as aio-pika and RabbitMQ's URI spec give them.
_PORTS: Final = {"amqp": 5672, "amqps": 5671}
_PASSWORD: Final = re.compile(r"(://[^:/@,]*):[^@,/]*@")


def redact(text: str) -> str:
    """Return ``text`` (one URL or a list) with every URL's password replaced by ``***``."""
    return _PASSWORD.sub(r"\1:***@", text)


@dataclass(frozen=True, slots=True)
class Node:
    """One broker address; :attr:`name` (``host:port``) is what logs and metrics show."""

    host: str
    port: int
    #: The whole URL as written, credentials included: only for connecting.
    url: str = field(repr=False)

    @property
    def name(self) -> str:
        """Return ``host:port`` (an IPv6 host in brackets), never credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Node({self.name})"


@dataclass(frozen=True, slots=True)
class Brokers:
    """The nodes of ``LOVENSE_AMQP_URL``, in the order written, with their shared login."""

    nodes: tuple[Node, ...]
    vhost: str
    user: str
    #: Shared by every node (percent-decoded); never shown.
    password: str = field(repr=False)

    @property
    def names(self) -> str:
        """Return the nodes' names, comma-separated (for logs and messages)."""
        return ",".join(node.name for node in self.nodes)

    def __repr__(self) -> str:
        return f"Brokers({self.names}, vhost={self.vhost!r}, user={self.user!r})"


@dataclass(frozen=True, slots=True)
class _Login:
    vhost: str
    user: str
    password: str


def parse_brokers(raw: str) -> Brokers:
    """Return the nodes ``raw`` names, or raise ValueError naming the entry that is wrong."""
    entries = [entry.strip() for entry in raw.split(",")]
    several = len(entries) > 1
    nodes: list[Node] = []
    first: _Login | None = None
    for number, entry in enumerate(entries, 1):
        where = f"entry {number} of {len(entries)} ({redact(entry)!r}) " if several else ""
        node, login = _parse_entry(entry, where)
        if first is None:
            first = login
        else:
            _check_same(login, first, where)
        if any(seen.name == node.name for seen in nodes):
            raise ValueError(f"{where}names {node.name} again")
        nodes.append(node)
    assert first is not None  # split() returns at least one entry
    return Brokers(tuple(nodes), first.vhost, first.user, first.password)


def _parse_entry(entry: str, where: str) -> tuple[Node, _Login]:
    if not entry:
        raise ValueError(f"{where}is empty" if where else "must be an amqp:// or amqps:// URL")
    scheme = entry.partition("://")[0]
    if scheme not in _PORTS or "://" not in entry:
        raise ValueError(f"{where}must be an amqp:// or amqps:// URL")
    parts = urlsplit(entry)
    try:
        port = parts.port or _PORTS[scheme]
    except ValueError:
        raise ValueError(f"{where}has no valid port") from None
    if not parts.hostname:
        raise ValueError(f"{where}names no host")
    path = parts.path
    vhost = unquote(path[1:]) if len(path) > 1 else "/"
    login = _Login(vhost, unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    return Node(parts.hostname, port, entry), login


def _check_same(login: _Login, first: _Login, where: str) -> None:
    if login.vhost != first.vhost:
        raise ValueError(f"{where}names vhost {login.vhost!r}, the first entry "
                         f"{first.vhost!r}: every entry must name the same vhost and credentials")
    if login.user != first.user:
        raise ValueError(f"{where}names user {login.user!r}, the first entry {first.user!r}: "
                         "every entry must name the same vhost and credentials")
    if login.password != first.password:
        raise ValueError(f"{where}has another password than the first entry: every entry must "
                         "name the same vhost and credentials")


def connect_order(brokers: Brokers, rng: random.Random, *,
                  last: Node | None = None) -> tuple[Node, ...]:
    """Return the nodes in the order to try them: shuffled, with ``last`` (the node just lost)
    moved to the end, so a reconnect tries the other nodes first."""
    nodes = list(brokers.nodes)
    rng.shuffle(nodes)
    if last is not None and last in nodes:
        nodes.remove(last)
        nodes.append(last)
    return tuple(nodes)
