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
    return wilson_at(passes / n, n, z)


def wilson_at(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion p with a (possibly fractional) sample size n."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: b = pass→fail, c = fail→pass.
    Under no change each discordant pair flips either way with probability ½, so the p-value is
    twice the Binomial(n, ½) tail at min(b, c).

    Summed in log space from the tail's largest term downwards, stopping once the terms no
    longer change the sum: big-integer binomials took 11 s at 10k pairs and 6 min at 40k; this
    takes well under a millisecond, and the terms it skips are below 1e-17 of the sum."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    if 2 * k >= n:
        return 1.0
    log_top = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
    total, term = 1.0, 1.0  # terms relative to C(n, k) / 2**n, from i = k down to 0
    for i in range(k, 0, -1):
        term *= i / (n - i + 1)  # C(n, i-1) / C(n, i)
        total += term
        if term < total * 1e-17:
            break
    return min(1.0, 2 * math.exp(log_top + math.log(total)))


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


def student_t_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with `df` degrees of freedom: I_x(df/2, 1/2) at
    x = df / (df + t²), the regularized incomplete beta function (continued fraction, as in
    Numerical Recipes' betacf; converges in a few dozen terms for the df a test meets)."""
    if df <= 0 or math.isnan(t):
        return math.nan
    if t == 0:
        return 1.0
    x, y = df / (df + t * t), t * t / (df + t * t)  # y = 1 − x, exact for a tiny t
    a, b = df / 2, 0.5
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y))
    if x < (a + 1) / (a + b + 2):
        return min(1.0, front * _beta_fraction(a, b, x) / a)
    return max(0.0, min(1.0, 1 - front * _beta_fraction(b, a, y) / b))


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h
