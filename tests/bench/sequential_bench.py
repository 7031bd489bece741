"""--stop-when-decided on the simulator's own correctness model: the gate's false alarms with
the early stop (looked at after every row) and the rows it saves, seeded.

    python tests/bench/sequential_bench.py [--pairs 200]

Each pair: a base run at temperature 1 and a new run (own seeds), 200 or 400 rows; rows go in
order into the sequential test; a cell it never settles gets the gate's fixed test on all its
rows, as compare gives it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_sequential import _gate_with_early_stop


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200)
    a = ap.parse_args()
    cases = [("no change", 1.0), ("5 points", 1.0 + 0.05 / 0.12), ("15 points", 1.0 + 0.15 / 0.12)]
    print("| repeats | rows | new run | flagged | rows used (mean) | requests saved |")
    print("|---:|---:|---|---:|---:|---:|")
    start = time.monotonic()
    for repeats in (1, 5):
        for rows in (200, 400):
            for label, t in cases:
                runs = [_gate_with_early_stop(rows, k, t, repeats) for k in range(a.pairs)]
                flagged = sum(f for f, _ in runs) / a.pairs
                used = sum(u for _, u in runs) / a.pairs
                print(
                    f"| {repeats} | {rows} | {label} | {flagged:.3f} | {used:.0f} | {1 - used / rows:.0%} |", flush=True
                )
    print(f"\n{time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
