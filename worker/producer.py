"""The producer helper's documented home: ``from worker.producer import Producer``.

It lives with the other AMQP adapters in :mod:`worker.adapters.amqp.producer`.
"""

from worker.adapters.amqp.producer import Producer, is_stop, routing_key_for

__all__ = ["Producer", "is_stop", "routing_key_for"]
