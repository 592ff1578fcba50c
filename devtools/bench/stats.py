"""Rates and percentiles of the small samples the bench takes."""

from __future__ import annotations


def rate(n: int, seconds: float) -> float:
    """``n`` per second (infinite for a zero duration)."""
    return n / seconds if seconds > 0 else float("inf")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a small sample."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]
