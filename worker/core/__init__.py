"""The pure core: validation, Lovense rules, scheduling, registry, results, on injected clocks.

No event loop, no I/O library, no logging or metrics: every function is tested
with plain values (``lint-imports`` checks it).
"""
