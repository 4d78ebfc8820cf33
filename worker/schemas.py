"""Generate the contract's JSON Schemas from the msgspec types (``make schemas``).

The Structs in :mod:`worker.messages` are the contract; the files in
``schemas/`` are derived from them and never edited by hand. A test fails when
they drift.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec

from worker.messages import Command, Result

SCHEMAS: dict[str, tuple[Any, str, str]] = {
    "command.schema.json": (
        Command, "Lovense command",
        "A command message published to exchange lovense.commands (routing key: the uid). "
        "The documented Lovense rules (ranges, grammars, routes) are enforced on top of this "
        "shape; see the README.",
    ),
    "result.schema.json": (
        Result, "Lovense command result",
        "The one terminal result per command identity, published to exchange lovense.results "
        "(routing key <status>.<command>) and to the command's reply_to.",
    ),
}


def render() -> dict[str, bytes]:
    """Return every schema file's name and content."""
    files = {}
    for name, (kind, title, description) in SCHEMAS.items():
        schema = msgspec.json.schema(kind)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://lovense-worker.invalid/schemas/{name}",
            "title": title,
            "description": description,
            **schema,
        }
        files[name] = msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"
    return files


def main(argv: list[str]) -> int:
    """Write the schemas into the folder named by argv[0] (default ``schemas``)."""
    folder = Path(argv[0] if argv else "schemas")
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in render().items():
        (folder / name).write_bytes(content)
        print(f"wrote {folder / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
