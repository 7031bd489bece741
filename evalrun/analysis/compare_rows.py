"""One cell of `evalrun compare`, with the dataset row as the unit (rowstats.py says why).

Each side's answers to a row (its repeats and choices) become the row's pass fraction — or,
with `gate.min_passes: k`, 1 if at least k of them passed, else 0. Rows are matched by row id;
the delta is the mean difference over matched rows, its interval a bootstrap over rows, its
p-value from the paired test on rows. A row "flips" when its class changes (stable-pass, flaky,
stable-fail; with min_passes: passing or not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evalrun.analysis.rowstats import FLAKY, STABLE_FAIL, STABLE_PASS, paired_row_test
from evalrun.analysis.stats import paired_bootstrap_ci

if TYPE_CHECKING:
    import pandas as pd

FLIP_COLUMNS = (
    "cell",
    "row_id",
    "repeat",
    "choice_index",
    "direction",
    "base_passes",
    "base_answers",
    "new_passes",
    "new_answers",
    "base_class",
    "new_class",
    "base_content",
    "new_content",
)
PASSING, FAILING = "passing", "failing"  # a row's class under gate.min_passes


@dataclass(frozen=True, slots=True)
class CellRows:
    """The row-level comparison of one cell: its figures (compare.parquet's columns) and flips."""

    figures: dict[str, Any]
    flips: pd.DataFrame


def per_row(side: pd.DataFrame, min_passes: int | None) -> pd.DataFrame:
    """row id → passes, answers, the row's value (pass fraction, or 0/1 under min_passes), class."""
    import numpy as np

    g = side.groupby("row_id", sort=True).passed.agg(passes="sum", answers="size")
    g["passes"] = g.passes.astype("int64")
    if min_passes:
        g["value"] = (g.passes >= min_passes).astype(float)
        g["cls"] = np.where(g.value > 0, PASSING, FAILING)
    else:
        g["value"] = g.passes / g.answers
        g["cls"] = np.select([g.passes == g.answers, g.passes == 0], [STABLE_PASS, STABLE_FAIL], FLAKY)
    return g


def _classes(rows: pd.DataFrame, side: str) -> dict[str, int]:
    counts = rows.cls.value_counts()
    return {f"{side}_{c.replace('-', '_')}": int(counts.get(c, 0)) for c in (STABLE_PASS, FLAKY, STABLE_FAIL)}


def _shown_answers(side: pd.DataFrame, wanted: pd.Series) -> pd.DataFrame:
    """Per row id in `wanted` (row id → True for a passing answer, False for a failing one): the
    first such answer by repeat and choice."""
    s = side[side.row_id.isin(wanted.index)].sort_values(["row_id", "repeat", "choice_index"], kind="stable")
    s = s[s.passed.to_numpy() == s.row_id.map(wanted).to_numpy(dtype=bool)]
    return s.drop_duplicates("row_id").set_index("row_id")


def _flips(cell: str, m: pd.DataFrame, b: pd.DataFrame, n: pd.DataFrame) -> pd.DataFrame:
    """The rows whose class changed, each with a base and a new answer that show the change: a
    passing base answer and a failing new one for pass→fail, the other way round for fail→pass."""
    import pandas as pd

    f = m[m.cls_base != m.cls_new]
    if f.empty:
        return pd.DataFrame(columns=list(FLIP_COLUMNS))
    worse = f.value_new < f.value_base
    base_ans, new_ans = _shown_answers(b, worse), _shown_answers(n, ~worse)
    return pd.DataFrame(
        {
            "cell": cell,
            "row_id": f.index,
            "repeat": f.index.map(new_ans.repeat).to_numpy(),
            "choice_index": f.index.map(new_ans.choice_index).to_numpy(),
            "direction": ["pass→fail" if w else "fail→pass" for w in worse],
            "base_passes": f.passes_base.to_numpy(),
            "base_answers": f.answers_base.to_numpy(),
            "new_passes": f.passes_new.to_numpy(),
            "new_answers": f.answers_new.to_numpy(),
            "base_class": f.cls_base.to_numpy(),
            "new_class": f.cls_new.to_numpy(),
            "base_content": f.index.map(base_ans.content).to_numpy(),
            "new_content": f.index.map(new_ans.content).to_numpy(),
        }
    )


@dataclass(frozen=True, slots=True)
class RowTest:
    """What the gate decides on: the matched rows, the mean per-row difference and its p-value."""

    rows: pd.DataFrame  # per_row() of both sides, joined on row id (suffixes _base, _new)
    delta: float
    p_value: float
    test: str  # "mcnemar" or "sign-flip"
    changed: int  # rows whose value differs


def paired_rows(rb: pd.DataFrame, rn: pd.DataFrame, min_passes: int | None) -> RowTest:
    """The paired test on the rows both sides answered (rb, rn: per_row() of each side)."""
    m = rb.merge(rn, left_index=True, right_index=True, suffixes=("_base", "_new"))
    if m.empty:
        return RowTest(m, math.nan, math.nan, "", 0)
    bv, nv = m.value_base.to_numpy(), m.value_new.to_numpy()
    # one pass/fail per row on each side: the exact test on rows, as with repeats = 1
    binary = bool(min_passes) or bool(((m.answers_base == 1) & (m.answers_new == 1)).all())
    p_value, test = paired_row_test(bv, nv, binary)
    return RowTest(m, float(nv.mean() - bv.mean()), p_value, test, int((bv != nv).sum()))


def compare_cell(cell: str, b: pd.DataFrame, n: pd.DataFrame, min_passes: int | None) -> CellRows:
    """The row-level figures of one cell present on both sides (b and n: its answers)."""
    rb, rn = per_row(b, min_passes), per_row(n, min_passes)
    t = paired_rows(rb, rn, min_passes)
    m, k = t.rows, len(t.rows)
    bv, nv = m.value_base.to_numpy(), m.value_new.to_numpy()
    lo, hi = paired_bootstrap_ci(bv, nv) if k else (math.nan, math.nan)
    flips = _flips(cell, m, b, n)
    matched_b, matched_n = b[b.row_id.isin(m.index)], n[n.row_id.isin(m.index)]
    figures: dict[str, Any] = {
        "matched": k,
        "only_base_items": len(rb) - k,
        "only_new_items": len(rn) - k,
        "base_answers": len(matched_b),
        "new_answers": len(matched_n),
        "base_pass_rate": float(bv.mean()) if k else math.nan,
        "new_pass_rate": float(nv.mean()) if k else math.nan,
        "delta": t.delta,
        "delta_ci_low": lo,
        "delta_ci_high": hi,
        "pass_to_fail": int((flips.direction == "pass→fail").sum()),
        "fail_to_pass": int((flips.direction == "fail→pass").sum()),
        "changed_rows": t.changed,
        "p_value": t.p_value,
        "test": t.test,
        "score_delta": float(matched_n.score.mean() - matched_b.score.mean()) if k else math.nan,
        **_classes(m.rename(columns={"cls_base": "cls"}), "base"),
        **_classes(m.rename(columns={"cls_new": "cls"}), "new"),
    }
    return CellRows(figures, flips)
