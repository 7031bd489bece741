"""How many rows × repeats a gate needs to see a drop of D points: `evalrun plan --detect D`.

The gate (compare_rows) regresses a cell when its mean per-row difference drops by more than
`fail_on_drop` and the paired test on rows gives p < alpha. Its power, for rows n and repeats r,
in the normal approximation of that test:

    d_i = (new row pass fraction) − (base row pass fraction)
    H0 (nothing changed): Var d_i = σ0² = 2·w / r, w = the mean within-row variance of one answer
        (a row that passes with probability p_i answers differently from draw to draw: p_i(1 − p_i))
    H1 (a drop of D): a share D of the rows goes from pass to fail: Var d_i = σ1² = σ0² + D(1 − D)
    the test rejects when the mean drop exceeds z(1 − alpha/2)·√(E[d²]/n), E[d²] = σ1² + D²
    power(n) = Φ((D − max(fail_on_drop, z(1 − alpha/2)·√((σ1² + D²)/n))) · √n / σ1)

w comes from a baseline run: per row, k passes of m answers give the unbiased k(m − k)/(m(m − 1));
with one answer per row it cannot be told from the row effect, so the worst case p̄(1 − p̄) is
assumed (as if every answer were a coin toss at the cell's pass rate) and said. Repeats shrink
σ0 only: the D(1 − D) part is the rows' own, which is why more repeats cannot replace rows.
tests/test_power.py checks the planned sizes against the gate itself on seeded simulated runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from evalrun.config.params import PARAM_COLUMN
from evalrun.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

REPEATS_SHOWN = (1, 3, 5)
MIN_PAIRED = 10  # rows two runs must share before their disagreement stands for the noise
MAX_ROWS = 1_000_000  # beyond this a drop is not worth planning for: said as "more than"
_PHI = NormalDist()


@dataclass(frozen=True, slots=True)
class Noise:
    """A cell's answer-to-answer variance, from a baseline."""

    rate: float  # the cell's pass rate (mean of row fractions)
    within: float  # w: the variance of one answer around its row's pass probability
    rows: int
    assumed: bool  # one answer per row: w is the worst case p̄(1 − p̄), not measured


def noise(passes: Sequence[int], graded: Sequence[int]) -> Noise | None:
    """w from each row's passes k of m graded answers; None when no row was graded."""
    rows = [(k, m) for k, m in zip(passes, graded, strict=True) if m > 0]
    if not rows:
        return None
    rate = sum(k / m for k, m in rows) / len(rows)
    several = [(k, m) for k, m in rows if m >= 2]
    if not several:
        return Noise(rate, rate * (1 - rate), len(rows), True)
    within = sum(k * (m - k) / (m * (m - 1)) for k, m in several) / len(several)
    return Noise(rate, within, len(rows), False)


def power(n: int, repeats: int, drop: float, within: float, alpha: float, fail_on_drop: float) -> float:
    """The chance the gate flags a true drop of `drop` with n rows of `repeats` answers each."""
    if n < 1 or drop <= 0:
        return 0.0
    s1 = math.sqrt(2 * within / repeats + drop * (1 - drop))
    # the test's yardstick is the rows' own second moment E[d²] = σ1² + D² (McNemar's b + c,
    # the sign-flip distribution's variance), not σ0: a drop widens what it is measured by
    threshold = max(fail_on_drop, _PHI.inv_cdf(1 - alpha / 2) * math.sqrt((s1 * s1 + drop * drop) / n))
    if s1 == 0:
        return 1.0 if drop > threshold else 0.0
    return _PHI.cdf((drop - threshold) * math.sqrt(n) / s1)


def rows_needed(
    repeats: int, drop: float, within: float, alpha: float, fail_on_drop: float, target: float
) -> int | None:
    """The fewest rows whose power reaches `target`; None beyond MAX_ROWS (or a drop the gate
    ignores: not more than fail_on_drop)."""
    if drop <= fail_on_drop:
        return None
    hi = 1
    while power(hi, repeats, drop, within, alpha, fail_on_drop) < target:
        hi *= 2
        if hi > MAX_ROWS:
            return None
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:  # power rises with n: bisect for the first n that reaches the target
        mid = (lo + hi) // 2
        if power(mid, repeats, drop, within, alpha, fail_on_drop) >= target:
            hi = mid
        else:
            lo = mid + 1
    return hi


def detect_report(
    run_dir: Path,
    drop: float,
    target: float,
    alpha: float,
    fail_on_drop: float,
    repeats_now: int,
    scorer: str | None = None,
    pair: Path | None = None,
) -> dict[str, Any]:
    """Per cell of a baseline run: its noise, the power of the current design (its rows ×
    `repeats_now`), and the rows needed at REPEATS_SHOWN repeats, with what they cost. `pair`:
    an earlier run of the same grid; where the baseline has one answer per row, the noise is
    measured from how often the two runs' answers disagree instead of assumed."""
    import pyarrow.parquet as pq

    from evalrun.run.store import RESULTS

    ordered = pq.read_schema(run_dir / RESULTS).names
    names = set(ordered)
    scorer = scorer or next((n[len("pass_") :] for n in ordered if n.startswith("pass_")), None)
    if scorer is None or f"pass_{scorer}" not in names:
        raise ConfigError(
            f"plan --detect: {run_dir} has no {'scorer' if scorer is None else repr(scorer)} "
            "(pass_<name> column): nothing to detect a drop in"
        )
    costs = sorted(n for n in names if n == "cost_total" or n.startswith("judge_cost_"))
    params = [c for c in PARAM_COLUMN.values() if c in names]
    cols = ["cell_id", "model", "prompt_id", "row_id", f"pass_{scorer}", *costs, *params]
    df = pq.read_table(run_dir / RESULTS, columns=cols).to_pandas()
    firsts = df.groupby("cell_id")[params].first() if params else None
    varying = [] if firsts is None else [p for p in params if firsts[p].astype(str).nunique() > 1]
    goal = (drop, target, alpha, fail_on_drop)
    paired = {} if pair is None else _disagreement(run_dir, pair, df, f"pass_{scorer}")
    cells = []
    for (cell, model, prompt), part in df.groupby(["cell_id", "model", "prompt_id"], sort=True):
        label = " · ".join([str(model), str(prompt), *(f"{p}={part[p].iloc[0]}" for p in varying)])
        figures = _cell(part, f"pass_{scorer}", costs, goal, repeats_now, paired.get(str(cell)))
        if figures is not None:
            cells.append({"cell": label, "cell_id": cell, **figures})
    return {
        "baseline": str(run_dir),
        "pair": None if pair is None else str(pair),
        "scorer": scorer,
        "drop": drop,
        "power": target,
        "alpha": alpha,
        "fail_on_drop": fail_on_drop,
        "cells": cells,
    }


def _disagreement(base: Path, pair: Path, df: pd.DataFrame, column: str) -> dict[str, float]:
    """Baseline cell id → w from two runs with one answer per row: two independent answers to a
    row that passes with probability p disagree with probability 2p(1 − p) = 2w. Cells are
    matched by model, prompt name and parameters; at least MIN_PAIRED rows in common."""
    import pyarrow.parquet as pq

    from evalrun.analysis.compare import cell_keys
    from evalrun.run.store import RESULTS, manifest_if_any

    keys_base, keys_pair = cell_keys(manifest_if_any(base)), cell_keys(manifest_if_any(pair))
    other = pq.read_table(pair / RESULTS, columns=["cell_id", "row_id", column]).to_pandas()
    frac = {}
    for name, frame, keys in (("base", df, keys_base), ("pair", other, keys_pair)):
        g = frame.assign(ok=frame[column].fillna(False).astype(bool)).groupby(["cell_id", "row_id"]).ok
        frac[name] = {(keys.get(str(c)), str(r)): (v, n) for (c, r), v, n in zip(g.sum().index, g.sum(), g.size())}
    out: dict[str, float] = {}
    for cell, key in keys_base.items():
        both = [
            (v / n, frac["pair"][(key, row)][0])
            for (k, row), (v, n) in frac["base"].items()
            if k == key and n == 1 and frac["pair"].get((key, row), (0, 0))[1] == 1
        ]
        if len(both) >= MIN_PAIRED:
            out[cell] = sum((a - b) ** 2 for a, b in both) / len(both) / 2
    return out


def _cell(
    part: pd.DataFrame,
    column: str,
    costs: list[str],
    goal: tuple[float, float, float, float],
    repeats_now: int,
    paired: float | None = None,
) -> dict[str, Any] | None:
    """One cell's noise, power now, rows needed and cost per answer; None if nothing was graded.
    `paired`: w measured against an earlier run (used where one answer per row tells nothing)."""
    drop, target, alpha, fail_on_drop = goal
    by_row = part.groupby("row_id")[column]
    w = noise(list(by_row.sum().astype(int)), list(by_row.size()))  # an error is an answer that failed
    if w is None:
        return None
    source = "assumed" if w.assumed else "repeats"
    if w.assumed and paired is not None:
        w, source = Noise(w.rate, paired, w.rows, False), "pair"
    per_answer = float(part[costs].sum(axis=1, min_count=1).mean()) if costs else math.nan
    return {
        "pass_rate": round(w.rate, 4),
        "noise": round(w.within, 4),
        "noise_measured": not w.assumed,
        "noise_from": source,  # repeats within the run, the disagreement with `pair`, or assumed
        "rows_now": w.rows,
        "repeats_now": repeats_now,
        "power_now": round(power(w.rows, repeats_now, drop, w.within, alpha, fail_on_drop), 3),
        "rows_needed": {str(r): rows_needed(r, drop, w.within, alpha, fail_on_drop, target) for r in REPEATS_SHOWN},
        "cost_per_answer": None if math.isnan(per_answer) else per_answer,
    }


def format_detect(report: dict[str, Any], currency: str = "") -> str:
    """The terminal's table: a line per cell (about 110 columns with the quickstart's labels)."""
    pts = report["drop"] * 100
    lines = [
        f"to detect a drop of {pts:g} points with {report['power']:.0%} power at alpha {report['alpha']} "
        f"(the gate flags drops of more than {report['fail_on_drop'] * 100:g} points),",
        f"measured on {report['baseline']}:",
        "",
    ]
    if any(c.get("noise_from") == "pair" for c in report["cells"]):  # one answer per row there
        lines[-2:-1] = [f"measured on {report['baseline']}; its noise: how often it and", f"{report['pair']} disagree:"]
    shown = "/".join(str(r) for r in REPEATS_SHOWN)
    rows = []
    for c in report["cells"]:
        needed = " / ".join("-" if n is None else f"{n:,}" for n in c["rows_needed"].values())
        costs = ""
        if c["cost_per_answer"] is not None:  # one run of each design at the baseline's prices
            costs = " / ".join(
                "-" if n is None else f"{currency}{n * int(r) * c['cost_per_answer']:.2g}"
                for r, n in c["rows_needed"].items()
            )
        now = f"{c['rows_now']}×{c['repeats_now']}" + ("" if c["noise_measured"] else "*")
        rows.append((c["cell"][:60], f"{c['pass_rate']:.0%}", now, f"{c['power_now']:.0%}", needed, costs))
    heads = ("cell", "pass", "now", "power", f"rows for {shown} repeats", "a run costs")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    for r in [heads, *rows]:
        cells = [r[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(r[1:4], widths[1:4], strict=True))]
        lines.append("  " + "  ".join([*cells, r[4].ljust(widths[4]), r[5]]).rstrip())
    if any(not c["noise_measured"] for c in report["cells"]):
        lines += [
            "",
            "  * one answer per row: its noise is assumed at its worst, p(1 - p); a baseline with",
            "    repeats of 2 or more measures it, and usually needs fewer rows",
        ]
    if any(None in c["rows_needed"].values() for c in report["cells"]):
        lines.append(f"  -: more than {MAX_ROWS:,} rows, or a drop the gate does not flag")
    return "\n".join(lines)


def detect_for(exp: Any, drop: float, target: float, baseline: str | None) -> dict[str, Any]:
    """`plan --detect D [--baseline RUN_DIR] [--power P]`: the baseline (default: the latest
    completed run), the run before it with the same grid if any, and detect_report over them."""
    from evalrun.analysis.baseline import latest_baseline, named_or_latest

    if not 0 < drop < 1:
        raise ConfigError(f"--detect takes a drop in pass rate between 0 and 1 (0.05 = 5 points), got {drop}")
    if not 0 < target < 1:
        raise ConfigError(f"--power takes a probability between 0 and 1 (0.8 = 80 %), got {target}")
    hint = " to measure the noise from: run it once (a pilot with --limit and repeats: 3 is enough), or give --baseline RUN_DIR"
    base = named_or_latest(exp, baseline, "--detect", hint)
    try:  # with one answer per row, the noise is how often two runs of the same grid disagree
        pair: Path | None = latest_baseline(base)
    except ConfigError:
        pair = None
    gate = exp.config.gate
    return detect_report(base, drop, target, gate.alpha, gate.fail_on_drop, exp.config.repeats, gate.scorer, pair)
