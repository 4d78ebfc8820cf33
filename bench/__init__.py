"""Benchmarks of lovense-worker against a baseline measured in the same run (bench/README.md)."""
