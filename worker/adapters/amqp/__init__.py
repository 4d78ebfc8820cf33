"""RabbitMQ through aio-pika: the only modules that import it."""
