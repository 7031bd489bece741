"""`plan --detect`: the rows × repeats it plans give the gate the power it promises.

The check is against the gate itself (compare's verdict on the paired row test), on seeded
simulated runs: rows with their own pass probability (easy and hard questions, the row
effect), a baseline run to measure the noise from, then many pairs of runs with a true drop,
each judged by the real test. The empirical power at the planned size must be near the target
(and well below it at half the rows); with no drop the gate's false alarms stay within alpha.
Then the command over a real simulator run: its table, JSON, and bad input.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pandas as pd
import pytest
from conftest import arithmetic_rows, base_config, write_config

from evalrun.analysis.compare import Gate, verdict
from evalrun.analysis.power import noise, power, rows_needed
from evalrun.analysis.rowstats import paired_row_test
from evalrun.cli import main

ALPHA, DROP_GATE = 0.05, 0.02


def _row_probs(rng: random.Random, n: int) -> list[float]:
    # the row effect: most questions easy, some hard, a few never answered right
    return [rng.choice((0.97, 0.97, 0.9, 0.6, 0.3, 0.0)) for _ in range(n)]


def _answers(rng: random.Random, probs: list[float], repeats: int) -> list[int]:
    return [sum(rng.random() < p for _ in range(repeats)) for p in probs]


def _gate_flags(rng: random.Random, probs: list[float], repeats: int, drop: float) -> bool:
    """One base and one new run of the same rows; the new one loses `drop` points by rows
    that break outright (each with chance drop / mean p). The real test decides."""
    mean = sum(probs) / len(probs)
    broken = [0.0 if rng.random() < drop / mean else p for p in probs]
    base = [k / repeats for k in _answers(rng, probs, repeats)]
    new = [k / repeats for k in _answers(rng, broken, repeats)]
    p_value, _ = paired_row_test(base, new, binary=repeats == 1)
    delta = sum(new) / len(new) - sum(base) / len(base)
    flips = sum(1 for a, b in zip(base, new) if a != b)
    return verdict(delta, p_value, Gate(None, DROP_GATE, ALPHA), flips) == "regressed"


@pytest.mark.parametrize(("repeats", "drop"), [(1, 0.10), (3, 0.10), (5, 0.06)])
def test_the_planned_rows_give_the_gate_its_power(repeats: int, drop: float) -> None:
    rng = random.Random(repeats * 100 + int(drop * 100))
    pilot = _row_probs(rng, 400)
    w = noise(_answers(rng, pilot, max(repeats, 2)), [max(repeats, 2)] * len(pilot))
    assert w is not None and not w.assumed
    n = rows_needed(repeats, drop, w.within, ALPHA, DROP_GATE, 0.8)
    assert n is not None and 30 <= n <= 3000
    sims = 200
    at_n = sum(_gate_flags(rng, _row_probs(rng, n), repeats, drop) for _ in range(sims)) / sims
    at_half = sum(_gate_flags(rng, _row_probs(rng, n // 2), repeats, drop) for _ in range(sims)) / sims
    assert 0.7 <= at_n <= 0.95, (n, at_n)  # 0.8 promised; ±0.03 is one standard error of 200 runs
    assert at_half < at_n - 0.1, (n, at_half, at_n)
    assert power(n, repeats, drop, w.within, ALPHA, DROP_GATE) >= 0.8
    no_drop = sum(_gate_flags(rng, _row_probs(rng, n), repeats, 0.0) for _ in range(sims)) / sims
    assert no_drop <= ALPHA + 0.03


def test_repeats_cannot_replace_rows_and_small_drops_need_more() -> None:
    w = 0.05
    by_repeats = [rows_needed(r, 0.10, w, ALPHA, DROP_GATE, 0.8) for r in (1, 3, 10)]
    assert by_repeats[0] > by_repeats[1] > by_repeats[2]  # repeats help the noise part…
    floor = rows_needed(10_000, 0.10, w, ALPHA, DROP_GATE, 0.8)
    assert floor is not None and by_repeats[2] is not None and by_repeats[2] - floor < 0.2 * floor  # …not the rest
    assert rows_needed(1, 0.05, w, ALPHA, DROP_GATE, 0.8) > by_repeats[0]
    assert rows_needed(1, 0.02, w, ALPHA, DROP_GATE, 0.8) is None  # not more than the gate's own threshold


def test_one_answer_per_row_assumes_the_worst_and_says_so() -> None:
    w = noise([1, 0, 1, 1], [1, 1, 1, 1])
    assert w is not None and w.assumed and w.within == pytest.approx(0.75 * 0.25)
    measured = noise([3, 0, 3, 3], [3, 3, 3, 3])
    assert measured is not None and not measured.assumed and measured.within == 0.0  # stable rows: no noise
    assert noise([0, 0], [0, 0]) is None


def _rows(tmp_path: Path, n: int) -> Path:
    return arithmetic_rows(tmp_path / "rows.jsonl", n)


def test_plan_detect_from_a_baseline_run(tmp_path, capsys) -> None:
    rows = _rows(tmp_path, 30)
    cfg = base_config(tmp_path, rows, repeats=3, params={"max_tokens": 256, "temperature": 1.0})
    cfg["scorers"] = [{"name": "correct", "type": "numeric", "expected": "{answer}"}]
    config = write_config(tmp_path, cfg)
    assert main(["plan", str(config), "--detect", "0.1", "--baseline", "latest"]) == 2  # no run yet
    assert "no completed run" in capsys.readouterr().err
    assert main(["run", str(config), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["plan", str(config), "--detect", "0.1", "--baseline", "latest", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)["detect"]
    assert report["drop"] == 0.1 and report["power"] == 0.8 and len(report["cells"]) == 1
    cell = report["cells"][0]
    assert cell["rows_now"] == 30 and cell["repeats_now"] == 3 and cell["noise_measured"] is True
    assert cell["rows_needed"]["3"] >= cell["rows_needed"]["5"]
    assert 0 <= cell["power_now"] <= 1
    assert main(["plan", str(config), "--detect", "0.1", "--baseline", "latest"]) == 0
    text = capsys.readouterr().out
    assert "to detect a drop of 10 points" in text and "gemini-2.5-flash-lite" in text
    for bad in ("0", "1.5", "x"):
        try:
            code = main(["plan", str(config), "--detect", bad])
        except SystemExit as exc:  # argparse: not a number
            code = int(str(exc.code))
        assert code == 2
        err = capsys.readouterr().err
        assert "--detect" in err and "Traceback" not in err


def test_with_one_answer_per_row_two_runs_measure_the_noise(tmp_path, capsys) -> None:
    rows = _rows(tmp_path, 40)
    runs = []
    for seed in (1, 2):  # the same grid, answers drawn with other seeds: they disagree on some rows
        cfg = base_config(tmp_path, rows, params={"max_tokens": 256, "temperature": 1.0})
        cfg["providers"]["sim"]["simulator"]["seed"] = seed
        cfg["scorers"] = [{"name": "correct", "type": "numeric", "expected": "{answer}"}]
        config = write_config(tmp_path, cfg, f"s{seed}.yaml")
        assert main(["run", str(config), "--no-progress"]) == 0
        runs.append(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["plan", str(config), "--detect", "0.1", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)["detect"]
    cell = report["cells"][0]
    assert report["pair"] == runs[0] and cell["noise_from"] == "pair" and cell["noise_measured"]
    a, b = (pd.read_parquet(f"{r}/results.parquet").set_index("row_id").pass_correct.astype(float) for r in runs)
    assert cell["noise"] == pytest.approx(((a - b.reindex(a.index)) ** 2).mean() / 2, abs=1e-4)
    assert 0 < cell["noise"] < cell["pass_rate"] * (1 - cell["pass_rate"])  # less than the worst case
