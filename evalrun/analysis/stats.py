"""The few statistics summaries and comparisons need, written out so they can be checked
against hand-computed values (no SciPy dependency for three formulas)."""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054


def wilson_interval(passes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a pass rate; (nan, nan) when n == 0."""
    if n <= 0:
        return math.nan, math.nan
    p = passes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: b = pass→fail, c = fail→pass.
    Under no change each discordant pair flips either way with probability ½."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap_ci(
    base: Sequence[float], new: Sequence[float], rounds: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of mean(new − base) over items resampled with replacement, pairs kept
    together. Seeded: the same runs give the same interval."""
    import numpy as np

    n = len(base)
    if n == 0:
        return math.nan, math.nan
    diffs = np.asarray(new, dtype=float) - np.asarray(base, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.empty(rounds)
    step = max(1, 2_000_000 // n)  # resample in blocks: memory stays ~16 MB whatever n is
    for start in range(0, rounds, step):
        stop = min(rounds, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diffs[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
