"""The README documents what the code does."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from worker.metrics import CallbackMetrics, Metrics

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _script(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_configuration_table_lists_every_setting() -> None:
    """The README's settings table is, row for row, what worker/config.py declares."""
    docs = _script("docs")
    table = docs.current(README, docs.SETTINGS_BEGIN, docs.SETTINGS_END)
    documented = re.findall(r"^\| `LOVENSE_.*$", table, flags=re.MULTILINE)
    assert documented == docs.rows(), "README settings are stale: run make docs"
    assert table == docs.render_settings()


def test_readme_lists_every_metric() -> None:
    """Every metric the worker and the callback endpoint export is described in the README."""
    names = {m.name for registry in (Metrics().registry, CallbackMetrics().registry)
             for m in registry.collect()}
    documented = set(re.findall(r"^\| `(lovense_(?:worker|callback)_[a-z_]+)` \|", README,
                                flags=re.MULTILINE))
    exported = {n + "_total" if n + "_total" in documented else n for n in names}
    assert exported == documented


def test_readme_layout_matches_the_packages() -> None:
    """The README's layout tables are what scripts/docs.py renders from the packages."""
    docs = _script("docs")
    layout = docs.current(README, docs.LAYOUT_BEGIN, docs.LAYOUT_END)
    assert layout == docs.render_layout(), "README layout is stale: run make docs"
