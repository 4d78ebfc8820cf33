"""Fault tests reuse the integration fixtures (real RabbitMQ, simulator over loopback); the
fault table is printed by tests/conftest.py."""

from __future__ import annotations

from tests.integration.conftest import clean_broker, listener, producer, results, sim, worker

__all__ = ["clean_broker", "listener", "producer", "results", "sim", "worker"]
