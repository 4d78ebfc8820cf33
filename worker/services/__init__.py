"""The services: orchestrate the core and the adapters' seams (runtime, dispatch, pairing).

They may await, log and count; they reach the outside only through what they
are given (an upstream, a publisher), never by importing an adapter.
"""
