"""Fault tests reuse the integration fixtures (real RabbitMQ, simulator over loopback) and print
the fault suite's table at the end of the run."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import clean_broker, listener, producer, results, sim, worker

__all__ = ["clean_broker", "listener", "producer", "results", "sim", "worker"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print one row per fault scenario: commands, statuses, duplicates, late, lost."""
    from tests.faults.test_fault_suite import REPORTS

    if not REPORTS:
        return
    terminalreporter.section("fault suite")
    for report in REPORTS:
        terminalreporter.write_line(report.row())
