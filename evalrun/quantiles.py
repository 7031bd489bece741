"""The one percentile rule for every figure evalrun reports: inter-token latency p95 (run stage)
and latency p50/p95/p99 (summary). One rule, so the two can never disagree."""

from __future__ import annotations

from collections.abc import Sequence


def quantile(ordered: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks of sorted values (numpy's and pandas' default);
    None for no values."""
    if not ordered:
        return None
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
