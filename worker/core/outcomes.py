"""What happens to a command's share: the route it takes, the plan, and the outcome.

``Route``, :class:`Plan`, :class:`Outcome` and the route choice
(:func:`choose_route`) are the core's vocabulary for a call to Lovense; the
dispatcher (:mod:`worker.services.dispatch`) makes the calls, and
:mod:`worker.core.results` folds outcomes into results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

from worker.contract.messages import Command, LanTarget, Status, Via
from worker.core import rules
from worker.core.lan import LanAddress

#: The two ways a command reaches Lovense: the app on the LAN, or Lovense's server. It is
#: what a result reports as ``via``, so the contract spells it (``Via``) and the core names it.
Route: TypeAlias = Via


@dataclass(slots=True)
class Outcome:
    """What happened to (part of) a command: the fields of a result that dispatch decides."""

    status: Status
    message: str
    via: Via | None = None
    code: int | None = None
    data: Any = None
    attempts: int = 0
    fallback: bool = False
    failed_uids: list[str] = field(default_factory=list)
    #: The call provably never reached Lovense (safe to carry elsewhere).
    not_delivered: bool = False
    #: The failure may pass (network, timeout, HTTP 5xx, LAN 500/506): worth a retry.
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """How one user's share of a command travels: the route and, on the LAN, the address."""

    route: Route
    address: LanAddress | None = None
    #: The LAN was wanted but its circuit is open, so the server carries it.
    fallback: bool = False


def choose_route(cmd: Command, endpoint: LanTarget | None) -> Route | Outcome:
    """Return the route a command takes, or the failed Outcome when none can carry it."""
    if cmd.mode == "server":
        return "server"
    if endpoint is not None:
        return "lan"
    if cmd.mode == "lan" or rules.needs_lan(cmd):
        users = ", ".join(cmd.targets)
        return Outcome(
            status="failed",
            message=(
                f"no LAN endpoint is known for {users}: {cmd.kind} needs the LAN route "
                "(give lan {domain, httpsPort} in the command)"
                if rules.needs_lan(cmd)
                else f"no LAN endpoint is known for {users} (give lan {{domain, httpsPort}} "
                "in the command, or use mode auto or server)"
            ),
        )
    return "server"


