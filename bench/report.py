"""The figures of `bench.suite`, from its measurements to markdown: percentiles, medians over
rounds, ratios to the codec limit, CPU per job. Pure: no clock, no processes."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence


def quantile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) by linear interpolation between the closest ranks (numpy's
    default, and `statistics.quantiles(method="inclusive")`); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(value: float, limit: float) -> float:
    return value / limit if limit > 0 else math.nan


def per_job_ms(cpu_seconds: Mapping[str, float], jobs: int) -> dict[str, float]:
    """CPU seconds of each process group over a phase, as milliseconds per job of the phase."""
    return {group: seconds * 1000 / jobs for group, seconds in cpu_seconds.items()} if jobs else {}


def table(head: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A markdown table; `align` has one letter per column, `l` or `r` (default: the first
    column left, the others right)."""
    align = align or "l" + "r" * (len(head) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [head, rule, *([_cell(v) for v in row] for row in rows)]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return (
            f"{value:.2f}"
            if abs(value) < 10
            else f"{value:.1f}"
            if abs(value) < 100
            else f"{value:.0f}"
        )
    return str(value)
