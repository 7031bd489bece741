"""The CI gate's false-alarm rate and power with repeats, before (McNemar on (row, repeat,
choice) pairs) and after (the paired test on rows), on outcome tables drawn from the simulator's
own correctness model (sim.behaviour.correct_choices): repeats 5 at temperature 1.

    python tests/bench/gate_repeats.py [--rows 60] [--pairs 200]

Two kinds of pair of the same config: "own seeds" — each run against a simulator with its own
seed, so which rows are hard is drawn per run (the simulator's strongest row effect); "shared" —
one seed, repeats 0-4 against repeats 5-9, so a row keeps its difficulty. Power: the same base
against a run 5 points worse (temperature 1 + 0.05 / 0.12, the simulator's penalty per unit).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
from test_gate_repeats import DROP_T, GATE, _drawn, _regressed_on_rows

from evalrun.analysis.compare import verdict
from evalrun.analysis.stats import mcnemar_exact


def _regressed_on_items(base: pd.DataFrame, new: pd.DataFrame) -> bool:
    """The gate before: (row, repeat, choice) paired across runs, McNemar on the pairs."""
    m = base.merge(new, on=["row_id", "repeat", "choice_index"])
    bp, np_ = m.passed_x.to_numpy(), m.passed_y.to_numpy()
    b, c = int((bp & ~np_).sum()), int((~bp & np_).sum())
    return verdict(float(np_.mean() - bp.mean()), mcnemar_exact(b, c), GATE, b + c) == "regressed"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--pairs", type=int, default=200)
    a = ap.parse_args()
    start = time.monotonic()
    print("| pairs | rows | runs of a pair | false alarms before | after | power (5-pt drop) before | after |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for kind in ("own seeds", "shared"):
        fa, pw = [0, 0], [0, 0]
        for k in range(a.pairs):
            if kind == "own seeds":
                base, same, drop = (
                    _drawn(a.rows, 2 * k, 1.0),
                    _drawn(a.rows, 2 * k + 1, 1.0),
                    _drawn(a.rows, 2 * k + 1, DROP_T),
                )
            else:
                base, same, drop = (
                    _drawn(a.rows, k, 1.0),
                    _drawn(a.rows, k, 1.0, range(5, 10)),
                    _drawn(a.rows, k, DROP_T, range(5, 10)),
                )
            for i, rule in enumerate((_regressed_on_items, _regressed_on_rows)):
                fa[i] += rule(base, same)
                pw[i] += rule(base, drop)
        n = a.pairs
        print(f"| {n} | {a.rows} | {kind} | {fa[0] / n:.3f} | {fa[1] / n:.3f} | {pw[0] / n:.3f} | {pw[1] / n:.3f} |")
    print(f"({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
