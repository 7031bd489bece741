"""Statistics with the dataset row as the unit: what summaries, compare, the gate and the report
decide on.

A run answers each row n = repeats × choices times. Those n answers are not n independent
items: at temperature > 0 a hard question stays hard in every repeat (the row effect), and
repeat i of one run has nothing to do with repeat i of another. So each row is reduced to its
pass fraction over its answers, and everything else is computed over rows:

- a pass rate is the mean of the rows' pass fractions;
- its interval is a Wilson interval on the *effective* number of rows (Kish's design effect
  from the spread of the row fractions): with one answer per row it is the plain Wilson
  interval, and it never claims more information than the answers themselves hold;
- two runs are compared on the per-row differences: an exact McNemar test when every row is a
  single pass/fail (repeats = 1 and choices = 1, or `gate.min_passes`), else a sign-flip
  permutation test (exact for few changed rows, seeded Monte Carlo beyond).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evalrun.analysis.stats import mcnemar_exact, wilson_at

if TYPE_CHECKING:
    import numpy as np

PASS_AT_K = (2, 5, 10)  # the k of the summary's pass@k and pass^k columns, where rows have ≥ k answers
FLIP_ROUNDS = 10_000  # Monte Carlo sign flips: p-values within ±0.005 at p = 0.05 (2 s.e.)
EXACT_FLIPS = 16  # up to this many changed rows every sign pattern is enumerated (65,536)
NORMAL_FLIPS = 5_000  # beyond this many changed rows the sign-flip distribution is normal to 1e-3
STABLE_PASS, FLAKY, STABLE_FAIL = "stable-pass", "flaky", "stable-fail"


@dataclass(frozen=True, slots=True)
class RowRate:
    """A pass rate over rows and its 95 % interval."""

    rate: float
    low: float
    high: float
    rows: int  # rows with at least one graded answer
    effective_rows: float  # the interval's sample size after the design effect


def row_fractions(passes: Sequence[int], graded: Sequence[int]) -> np.ndarray:
    """Each graded row's pass fraction (rows with nothing graded are left out)."""
    import numpy as np

    p, g = np.asarray(passes, dtype=float), np.asarray(graded, dtype=float)
    keep = g > 0
    return np.asarray(p[keep] / g[keep], dtype=float)


def row_rate(passes: Sequence[int], graded: Sequence[int]) -> RowRate:
    """The mean of the rows' pass fractions, with a Wilson interval on the effective number of
    rows n_eff = p(1 − p) / Var(p̂), Var(p̂) the cluster-robust (CR0) variance of a mean of row
    means, capped at the number of answers (a row effect can only take information away)."""
    fr = row_fractions(passes, graded)
    rows = len(fr)
    if rows == 0:
        return RowRate(math.nan, math.nan, math.nan, 0, 0.0)
    p = float(fr.mean())
    answers = float(sum(g for g in graded if g > 0))
    spread = float(((fr - p) ** 2).mean())  # = p(1 − p) when each row is one pass/fail: n_eff = rows
    n_eff = answers if spread <= 0 else min(answers, p * (1 - p) * rows / spread)
    lo, hi = wilson_at(p, max(n_eff, 1e-9))
    return RowRate(p, lo, hi, rows, n_eff)


def row_class(passes: int, graded: int) -> str:
    """stable-pass (every answer passed), stable-fail (none did) or flaky (some did)."""
    return STABLE_PASS if passes == graded else STABLE_FAIL if passes == 0 else FLAKY


def class_counts(passes: Sequence[int], graded: Sequence[int]) -> dict[str, int]:
    out = {STABLE_PASS: 0, FLAKY: 0, STABLE_FAIL: 0}
    for c, n in zip(passes, graded):
        if n > 0:
            out[row_class(c, n)] += 1
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of the chance that at least one of k answers drawn from this row's n
    (c of them passing) passes: 1 − C(n−c, k) / C(n, k) (Chen et al., 2021)."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of the chance that all of k answers drawn from the row's n pass:
    C(c, k) / C(n, k) (pass^k, Yao et al., 2024)."""
    return math.comb(c, k) / math.comb(n, k)


def pass_k_columns(passes: Sequence[int], graded: Sequence[int]) -> dict[int, tuple[float, float]]:
    """k → (pass@k, pass^k), means over the rows, for each k of PASS_AT_K that every graded row
    has enough answers for."""
    rows = [(n, c) for c, n in zip(passes, graded) if n > 0]
    if not rows:
        return {}
    fewest = min(n for n, _ in rows)
    return {
        k: (
            sum(pass_at_k(n, c, k) for n, c in rows) / len(rows),
            sum(pass_hat_k(n, c, k) for n, c in rows) / len(rows),
        )
        for k in PASS_AT_K
        if k <= fewest
    }


def sign_flip_p(diffs: Sequence[float], seed: int = 0) -> float:
    """Two-sided p-value of mean(diffs) = 0 against sign-flipped copies: under "no change" a
    row's difference is as likely to be +d as −d. Exact when few rows changed, seeded Monte Carlo
    (with the +1 that keeps it valid) up to NORMAL_FLIPS, the normal limit beyond."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    k = len(d)
    if k == 0:
        return 1.0
    observed = abs(d.sum()) - 1e-9 * np.abs(d).sum()  # ties count as extreme (float sums differ)
    if k <= EXACT_FLIPS:
        signs = ((np.arange(2**k)[:, None] >> np.arange(k)) & 1) * 2 - 1
        return float((np.abs(signs @ d) >= observed).mean())
    if k > NORMAL_FLIPS:
        z = abs(d.sum()) / math.sqrt(float((d * d).sum()))
        return math.erfc(z / math.sqrt(2))
    rng = np.random.default_rng(seed)
    hits, block, total = 0, max(1, 4_000_000 // k), d.sum()
    for start in range(0, FLIP_ROUNDS, block):
        size = min(block, FLIP_ROUNDS - start)
        # one random bit per row and round (bytes unpacked: a tenth of the time of integer draws)
        flip = np.unpackbits(rng.integers(0, 256, size=(size, (k + 7) // 8), dtype=np.uint8), axis=1, count=k)
        hits += int((np.abs(total - 2 * (flip.astype(float) @ d)) >= observed).sum())
    return (hits + 1) / (FLIP_ROUNDS + 1)


def paired_row_test(base: Sequence[float], new: Sequence[float], binary: bool) -> tuple[float, str]:
    """(p-value, the test's name) of "new's rows pass as often as base's", paired by row.
    Binary rows (one pass/fail each side): the exact McNemar test, as with one answer per row;
    else the sign-flip permutation test on the per-row differences."""
    if binary:
        b = sum(1 for x, y in zip(base, new) if x > y)
        c = sum(1 for x, y in zip(base, new) if x < y)
        return mcnemar_exact(b, c), "mcnemar"
    return sign_flip_p([y - x for x, y in zip(base, new)]), "sign-flip"
