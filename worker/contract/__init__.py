"""The contract: what producers and consumers rely on (message types, RabbitMQ names, errors).

Imports nothing of the worker but itself, so any program can read the names.
"""
