"""The result codes Lovense answers with, and what each means on each route.

The LAN route (the Lovense Remote app) and the server route (Lovense's server
API) document different codes; both tables are the Lovense docs' own words.
Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

from worker.core.outcomes import Route

#: What each documented code means, per route.
MEANINGS: Final[Mapping[Route, Mapping[int, str]]] = {
    "lan": {
        200: "OK",
        400: "Invalid command",
        401: "Toy not found",
        402: "Toy not connected",
        403: "Toy doesn't support this command",
        404: "Invalid parameter",
        500: "HTTP server not started or disabled",
        506: "Server error, restart Lovense Remote",
    },
    "server": {
        0: "Success",
        200: "Success",
        400: "Invalid command",
        404: "Invalid parameter",
        501: "Invalid token",
        502: "You do not have permission to use this API",
        503: "Invalid user ID",
        507: "Lovense app is offline",
    },
}

#: The codes that mean the command was carried out (getQrCode answers 0).
SUCCESS: Final[Mapping[Route, frozenset[int]]] = {
    "lan": frozenset({200}),
    "server": frozenset({0, 200}),
}

#: LAN codes worth a later retry: the app's HTTP server is down or it failed inside.
RETRYABLE: Final = frozenset({500, 506})

#: Server codes that mean the worker's own settings are wrong (token, API permission).
CONFIG_ERRORS: Final = frozenset({501, 502})


#: How many characters of an undocumented code a message shows.
_SHOWN_CHARS: Final = 12
#: The metric label of every code a route does not document (labels stay few).
OTHER: Final = "other"


def _shown(code: int) -> str:
    if -(10**13) < code < 10**13:
        text = str(code)
    else:
        # str() refuses ints of over 4300 digits: drop all but the leading ones first.
        n = abs(code)
        n //= 10 ** max(0, int(n.bit_length() * math.log10(2)) - 13)
        text = f"{'-' if code < 0 else ''}{n}"
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def describe(code: int, route: Route) -> str:
    """Return what code means on route, in the Lovense docs' words."""
    meaning = MEANINGS[route].get(code)
    if meaning is None:
        return f"Lovense answered with undocumented code {_shown(code)}"
    return meaning


def label(code: int | None, route: Route) -> str:
    """Return the metric label of code on route: itself if documented, else "other"."""
    return str(code) if code is not None and code in MEANINGS[route] else OTHER


def is_success(code: int, route: Route) -> bool:
    """Return whether code means the command was carried out on route."""
    return code in SUCCESS[route]
