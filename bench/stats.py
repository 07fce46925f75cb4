"""Summaries of repeated measurements: medians with min-max, and paired ratios.

A *ratio* here is always an advantage over the baseline loop measured in the
same round: ``value / baseline`` for figures where higher is better (msgs/s,
ops/s), ``baseline / value`` where lower is better (CPU per message,
latency, bytes), so ``> 1`` always means better than the baseline.  Pairing
by round cancels most of the drift of a shared machine: both figures of a
ratio were taken seconds apart.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def summarize(values: Sequence[float]) -> dict[str, float] | None:
    """Median, min and max of ``values`` (None when there are none)."""
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def advantage(value: float, baseline: float, better: str) -> float | None:
    """How many times better ``value`` is than ``baseline`` (None if undefined)."""
    if better == "higher":
        return value / baseline if baseline > 0 else None
    return baseline / value if value > 0 else None


def paired_ratios(
    rounds: Sequence[dict[str, Any] | None],
    baseline_rounds: Sequence[dict[str, Any] | None],
    metric: str,
    better: str,
) -> list[float | None]:
    """The ratio of each round's figure to the baseline's figure of the same round."""
    ratios: list[float | None] = []
    for ours, theirs in zip(rounds, baseline_rounds, strict=True):
        ratio = None
        if ours and theirs and metric in ours and metric in theirs:
            ratio = advantage(ours[metric], theirs[metric], better)
        ratios.append(ratio)
    return ratios


def ratio_summary(per_round: Sequence[float | None]) -> dict[str, Any]:
    """Per-round ratios plus their median, min and max (None where no round had one)."""
    present = [r for r in per_round if r is not None]
    summary: dict[str, Any] = {"per_round": list(per_round)}
    summary.update(summarize(present) or {"median": None, "min": None, "max": None, "n": 0})
    return summary
