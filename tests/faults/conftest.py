"""Fault tests reuse the integration fixtures (real RabbitMQ, simulator over loopback)."""

from tests.integration.conftest import clean_broker, listener, producer, results, sim, worker

__all__ = ["clean_broker", "listener", "producer", "results", "sim", "worker"]
