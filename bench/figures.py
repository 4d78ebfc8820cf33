"""Reading and printing figures: ``/metrics`` text, percentiles, rounding, table lines
(:func:`render`: templates over the figures; a missing one prints ``-``)."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from worker.core.brokers import redact


def metric(text: str, name: str, **labels: str) -> float | None:
    """Return the sum of a metric's samples whose labels include ``labels`` (None: absent)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total, seen = total + float(value), True
    return total if seen else None


def histogram(text: str, name: str) -> dict[str, Any]:
    """Return a histogram's cumulative buckets {le: count}, count and sum (all label sets)."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{") and (le := re.search(r'le="([^"]+)"', line)):
            bound = float("inf") if le[1] == "+Inf" else float(le[1])
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rpartition(" ")[2])
    return {"buckets": {("+Inf" if k == float("inf") else k): int(v)
                        for k, v in sorted(buckets.items())},
            "count": int(metric(text, f"{name}_count") or 0.0),
            "sum_s": round(metric(text, f"{name}_sum") or 0.0, 3)}


def share_within(hist: dict[str, Any], bound_s: float) -> float | None:
    """Return the share of a histogram's observations at or below ``bound_s`` (a bucket bound)."""
    count, within = hist["count"], hist["buckets"].get(bound_s)
    return None if not count or within is None else round(within / count, 4)


def percentile(ordered: Sequence[float], share: float) -> float | None:
    """Return the nearest-rank percentile (share in 0..1) of sorted values."""
    rank = min(len(ordered), max(1, math.ceil(share * len(ordered))))
    return ordered[rank - 1] if ordered else None


def quantiles(values: Iterable[float]) -> dict[str, float | None]:
    """Return p50, p99 and max (nearest rank) of ``values``, rounded to 0.1, and n."""
    ordered = sorted(values)
    p50, p99, top = percentile(ordered, 0.5), percentile(ordered, 0.99), max(ordered, default=None)
    return {"p50": rounded(p50, 1), "p99": rounded(p99, 1), "max": rounded(top, 1),
            "n": len(ordered)}


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def per_unit(seconds: float | None, units: int, scale: float = 1000) -> float | None:
    """Return ``seconds`` × ``scale`` (ms by default) per unit, rounded to 0.001."""
    return None if seconds is None else round(seconds * scale / units, 3)


def mb(kb: Mapping[str, int]) -> dict[str, float]:
    """Return /proc memory figures (kB) in MB."""
    return {k: round(v / 1024, 1) for k, v in kb.items()}


def fmt(value: Any, spec: str = "") -> str:
    """Format a figure, '-' when it is missing."""
    return "-" if value is None else format(value, spec)


def verdict(met: bool | None) -> str:
    return "NOT MEASURED" if met is None else ("MET" if met else "NOT MET")


def counts(counter: Mapping[str, Any] | None) -> str:
    """Return ``{"ok": 3, "failed": 1}`` as ``ok 3, failed 1`` (``-`` when empty)."""
    return ", ".join(f"{k} {v}" for k, v in (counter or {}).items()) or "-"


class _Figures(string.Formatter):
    def get_field(self, field_name: str, args: Sequence[Any],
                  kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        try:
            value, key = super().get_field(field_name, args, kwargs)
            return value, key
        except (KeyError, IndexError, TypeError):
            return None, field_name

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion == "v":
            return verdict(value)
        if conversion == "c":
            return counts(value)
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> str:
        return fmt(value, format_spec)


_FIGURES: Final = _Figures()


def render(data: Mapping[str, Any], *templates: str) -> list[str]:
    """Return each template filled in from ``data`` (see the module's docstring)."""
    return [_FIGURES.vformat(template, (), data) for template in templates]


def check_lines(data: Mapping[str, Any]) -> list[str]:
    """Return a table's closing lines: every check, and why the run failed if it did."""
    lines = [f"check: {name}: {'yes' if good else 'NO'}" for name, good in data["checks"].items()]
    if data.get("failure"):
        lines.append(f"FAILED: {data['failure']}"
                     + (f" (log: {data['log_file']})" if "log_file" in data else ""))
    return lines


def recorded_env(env: dict[str, str]) -> dict[str, str]:
    """Return a worker's LOVENSE_* settings as results.json records them (no secrets)."""
    hidden = {"LOVENSE_DEVELOPER_TOKEN": "(random)", "LOVENSE_UTOKEN_SECRET": "(random)",
              "LOVENSE_METRICS_PORT": "(a free port)", "LOVENSE_API_BASE": "(simulator)",
              "LOVENSE_AMQP_URL": redact(env.get("LOVENSE_AMQP_URL", ""))}
    return {k: hidden.get(k, v) for k, v in env.items() if k.startswith("LOVENSE_")}
