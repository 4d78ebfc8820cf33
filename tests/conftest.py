"""Hooks for the whole suite: the fault table (tests/faults and tests/cluster) at the end."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print one row per fault scenario: commands, statuses, duplicates, late, lost, pause."""
    from tests.faults.harness import REPORTS

    if not REPORTS:
        return
    terminalreporter.section("fault suite")
    for report in REPORTS:
        terminalreporter.write_line(report.row())
