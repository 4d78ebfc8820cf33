"""Tests for worker.core.codes: the Lovense result codes per route."""

from __future__ import annotations

import pytest

from worker.core.codes import (
    CONFIG_ERRORS,
    MEANINGS,
    RETRYABLE,
    describe,
    is_success,
    label,
)
from worker.core.outcomes import Route

DOCUMENTED: list[tuple[Route, int, str]] = [
    ("lan", 200, "OK"),
    ("lan", 400, "Invalid command"),
    ("lan", 401, "Toy not found"),
    ("lan", 402, "Toy not connected"),
    ("lan", 403, "Toy doesn't support this command"),
    ("lan", 404, "Invalid parameter"),
    ("lan", 500, "HTTP server not started or disabled"),
    ("lan", 506, "Server error, restart Lovense Remote"),
    ("server", 0, "Success"),
    ("server", 200, "Success"),
    ("server", 400, "Invalid command"),
    ("server", 404, "Invalid parameter"),
    ("server", 501, "Invalid token"),
    ("server", 502, "You do not have permission to use this API"),
    ("server", 503, "Invalid user ID"),
    ("server", 507, "Lovense app is offline"),
]


@pytest.mark.parametrize(("route", "code", "meaning"), DOCUMENTED)
def test_describe_documented_code(route: Route, code: int, meaning: str) -> None:
    """describe gives each documented code the docs' meaning on its route."""
    assert describe(code, route) == meaning


def test_tables_hold_exactly_the_documented_codes() -> None:
    """The tables hold the 8 LAN and 8 server codes of the docs and nothing else."""
    assert {(route, code) for route, code, _ in DOCUMENTED} == {
        (route, code) for route, table in MEANINGS.items() for code in table
    }


@pytest.mark.parametrize(
    ("route", "code"),
    [("lan", 999), ("server", 999), ("lan", 0), ("lan", 507), ("server", 401), ("server", 506)],
)
def test_describe_undocumented_code(route: Route, code: int) -> None:
    """A code the route does not document, even one the other route does, is named as such."""
    assert describe(code, route) == f"Lovense answered with undocumented code {code}"


@pytest.mark.parametrize(
    ("route", "code", "success"),
    [
        ("lan", 200, True),
        ("lan", 0, False),
        ("lan", 402, False),
        ("lan", 500, False),
        ("server", 0, True),
        ("server", 200, True),
        ("server", 503, False),
        ("server", 507, False),
        ("server", 999, False),
    ],
)
def test_is_success(route: Route, code: int, success: bool) -> None:
    """Only 200 succeeds on the LAN; 0 (getQrCode) and 200 succeed on the server."""
    assert is_success(code, route) is success


def test_retryable_codes_are_the_lan_app_troubles() -> None:
    """RETRYABLE holds the LAN app's 500 (HTTP server down) and 506 (app failed inside)."""
    assert RETRYABLE == frozenset({500, 506})
    assert all(code in MEANINGS["lan"] for code in RETRYABLE)


def test_config_errors_are_token_and_permission() -> None:
    """CONFIG_ERRORS holds the server's 501 (invalid token) and 502 (no API permission)."""
    assert CONFIG_ERRORS == frozenset({501, 502})
    assert [describe(code, "server") for code in sorted(CONFIG_ERRORS)] == [
        "Invalid token",
        "You do not have permission to use this API",
    ]


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        (123_456_789_012, "123456789012"),
        (1_234_567_890_123, "123456789012…"),
        (-123_456_789_012, "-12345678901…"),
        (18_446_744_073_709_551_615, "184467440737…"),
        (10**5000, "100000000000…"),
    ],
    ids=["12-digits", "13-digits", "negative", "uint64-max", "5001-digits"],
)
def test_describe_clips_a_long_undocumented_code(code: int, shown: str) -> None:
    """An undocumented code is printed with at most 12 characters of it, then an ellipsis."""
    assert describe(code, "lan") == f"Lovense answered with undocumented code {shown}"


@pytest.mark.parametrize(("route", "code"), [(r, c) for r, t in MEANINGS.items() for c in t])
def test_label_of_a_documented_code_is_the_code(route: Route, code: int) -> None:
    """A code the route documents is its own metric label."""
    assert label(code, route) == str(code)


@pytest.mark.parametrize(
    ("route", "code"),
    [("lan", 0), ("lan", 507), ("server", 401), ("server", 12345), ("lan", -1),
     ("server", 10**30), ("lan", None), ("server", None)],
)
def test_label_of_anything_else_is_other(route: Route, code: int | None) -> None:
    """A code the route does not document, or none at all, is the one label "other"."""
    assert label(code, route) == "other"
