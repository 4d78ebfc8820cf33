"""lovense-worker: drive Lovense toys from RabbitMQ, safely and at scale."""

__version__ = "0.1.0"
