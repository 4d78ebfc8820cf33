"""The README documents what the code does."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from worker.config import SETTINGS
from worker.metrics import Metrics

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_readme_configuration_table_lists_every_setting() -> None:
    """Every LOVENSE_* setting the code reads has a row in the README table, and no other."""
    rows = set(re.findall(r"^\| `(LOVENSE_[A-Z_]+)` \|", README, flags=re.MULTILINE))
    assert rows == {s.env for s in SETTINGS}


def test_readme_lists_every_metric() -> None:
    """Every metric the worker exports is described in the README."""
    names = {m.name for m in Metrics().registry.collect()}
    documented = set(re.findall(r"^\| `(lovense_worker_[a-z_]+)` \|", README, flags=re.MULTILINE))
    exported = {n + "_total" if n + "_total" in documented else n for n in names}
    assert exported == documented


def test_readme_layout_matches_the_packages() -> None:
    """The README's layout tables are what scripts/layout.py renders from the packages."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "layout.py"
    spec = importlib.util.spec_from_file_location("layout", script)
    assert spec is not None and spec.loader is not None
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    assert layout.current(README) == layout.render(), "README layout is stale: run make layout"
