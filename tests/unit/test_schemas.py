"""The committed JSON Schemas are exactly what the msgspec types generate."""

from __future__ import annotations

from pathlib import Path

from worker.schemas import render

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_committed_schemas_match_the_code() -> None:
    """schemas/ holds what `make schemas` generates now (run it after changing messages.py)."""
    for name, content in render().items():
        assert (SCHEMAS / name).read_bytes() == content, f"schemas/{name} is stale: make schemas"
