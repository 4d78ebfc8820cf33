"""Benchmarks of lovense-worker: ``python -m bench`` (``make bench``); see bench/README.md.

Every figure of the worker is compared with a baseline measured in the same
invocation, on the same broker and simulator, seconds apart: the machine is
shared and noisy, so absolute numbers from different runs do not compare.
"""
