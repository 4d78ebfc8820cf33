"""The result codes Lovense answers with, and what each means on each route.

The LAN route (the Lovense Remote app) and the server route (Lovense's server
API) document different codes; both tables are the Lovense docs' own words.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

Route = Literal["lan", "server"]

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


def describe(code: int, route: Route) -> str:
    """Return what code means on route, in the Lovense docs' words."""
    meaning = MEANINGS[route].get(code)
    if meaning is None:
        return f"Lovense answered with undocumented code {code}"
    return meaning


def is_success(code: int, route: Route) -> bool:
    """Return whether code means the command was carried out on route."""
    return code in SUCCESS[route]
