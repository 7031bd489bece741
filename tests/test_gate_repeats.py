"""Repeats are answers to one row, not independent items: the gate decides on rows.

A few real runs through the simulator over HTTP check the wiring end to end (and that the
outcome tables drawn below are what the simulator serves); the false-alarm rate and the power
are measured on 200 seeded pairs of outcome tables drawn from the simulator's own correctness
model (behaviour.correct_choices), driven through the same functions the gate uses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from conftest import Reply, base_config, completion, read_results, write_config

from evalrun.analysis.compare import Gate, verdict
from evalrun.analysis.compare_rows import paired_rows, per_row
from evalrun.analysis.rowstats import pass_at_k, pass_hat_k, row_rate, sign_flip_p
from evalrun.analysis.stats import mcnemar_exact, wilson_interval
from evalrun.sim.behaviour import correct_choices

MODEL = "gemini-2.5-flash-lite"
PROMPT = "What is {question}? Only the number."
DROP_T = 1.0 + 0.05 / 0.12  # the simulator's temperature penalty is 0.12 per unit: exactly 5 points less


def _questions(rows: int) -> list[str]:
    return [f"{i * 7 % 97 + 3} + {i * 13 % 89 + 2}" for i in range(rows)]


def _data(tmp_path: Path, rows: int) -> Path:
    p = tmp_path / "arith.jsonl"
    p.write_bytes(
        b"".join(
            orjson.dumps({"id": f"a{i}", "question": q, "answer": eval(q)}) + b"\n"
            for i, q in enumerate(_questions(rows))
        )
    )
    return p


def _cfg(tmp_path: Path, rows: int, seed: int, temperature: float = 1.0, **extra: Any) -> dict[str, Any]:
    cfg = base_config(tmp_path, _data(tmp_path, rows))
    cfg["providers"]["sim"]["simulator"]["seed"] = seed
    cfg["models"] = [MODEL]
    cfg["params"] = {"max_tokens": 256, "temperature": temperature}
    cfg["prompts"] = {"p": [{"role": "user", "content": PROMPT}]}
    cfg["scorers"] = [{"name": "correct", "type": "numeric"}]
    cfg["repeats"] = 5
    cfg.update(extra)
    return cfg


def _drawn(rows: int, seed: int, temperature: float, repeats: range = range(5)) -> pd.DataFrame:
    """One run's outcome table as the simulator would score it: (row, repeat, choice) → passed."""
    out = []
    for i, q in enumerate(_questions(rows)):
        body = {
            "model": MODEL,
            "max_tokens": 256,
            "temperature": temperature,
            "messages": [{"role": "user", "content": PROMPT.format(question=q)}],
        }
        for j, choices in zip(range(5), correct_choices(body, seed, repeats)):  # type: ignore[arg-type]
            out += [(f"a{i}", j, c, ok) for c, ok in enumerate(choices)]
    return pd.DataFrame(out, columns=["row_id", "repeat", "choice_index", "passed"])


def test_http_runs_match_the_drawn_outcomes_and_the_gate_passes_noise(tmp_path, cli) -> None:
    runs = {}
    for name, seed in (("base", 3), ("new", 4)):
        r = cli("run", write_config(tmp_path, _cfg(tmp_path, 30, seed), f"{name}.yaml"), "--no-progress")
        assert r.code == 0, r.err
        runs[name] = r.run_dir
        got = read_results(r.run_dir).groupby("row_id").pass_correct.sum().astype(int)
        want = _drawn(30, seed, 1.0).groupby("row_id").passed.sum().astype(int)
        assert got.sort_index().to_dict() == want.sort_index().to_dict()  # the model drawn is the one served
    r = cli("compare", runs["base"], runs["new"])
    assert r.code == 0, r.err
    cell = pd.read_parquet(runs["new"] / "compare.parquet").iloc[0]
    assert cell.matched == 30 and cell.base_answers == 150 and cell.test == "sign-flip"
    b, n = per_row(_drawn(30, 3, 1.0), None), per_row(_drawn(30, 4, 1.0), None)
    t = paired_rows(b, n, None)
    assert cell.delta == pytest.approx(t.delta) and cell.p_value == pytest.approx(t.p_value)
    assert cell.base_stable_pass + cell.base_flaky + cell.base_stable_fail == 30 and cell.base_flaky > 0
    assert "rows ✓/~/✗ base → new" in (runs["new"] / "compare.md").read_text()
    # the summary: per-row rates, classes, pass@k / pass^k
    s = pd.read_parquet(runs["new"] / "summary.parquet").iloc[0]
    assert s["items"] == 30 and s.rows == 150
    assert s.pass_rate_correct == pytest.approx(n.value.mean())
    assert s.stable_pass_correct == (n.cls == "stable-pass").sum() and s.flaky_correct == (n.cls == "flaky").sum()
    at2 = sum(pass_at_k(int(a), int(c), 2) for a, c in zip(n.answers, n.passes)) / 30
    assert s.pass_at_2_correct == pytest.approx(at2) and s.pass_pow_5_correct == pytest.approx(
        (n.cls == "stable-pass").mean()
    )
    # the row effect widens the interval beyond the (row × repeat) Wilson interval of old
    old_lo, old_hi = wilson_interval(int(n.passes.sum()), 150)
    assert s.pass_ci_high_correct - s.pass_ci_low_correct > 1.2 * (old_hi - old_lo)
    assert "flaky rows" in cli("summary", runs["new"]).out
    # the report: the row-level interval, the classes, the flipped rows with their passes
    r = cli("report", runs["new"], "--compare", runs["base"])
    assert r.code == 0, r.err
    page = (runs["new"] / "report.html").read_text()
    assert "95% interval over rows" in page and "rows stable-pass/flaky/stable-fail · correct" in page
    stable, flaky, fail = (int(s[f"{c}_correct"]) for c in ("stable_pass", "flaky", "stable_fail"))
    assert f"{stable}/{flaky}/{fail}" in page and "the unit is the dataset row" in page
    assert cell.pass_to_fail + cell.fail_to_pass > 0 and '<th class="num">base passes</th>' in page


def _answering(wrong: set[int]) -> Any:
    """A server that answers question i wrongly when i is in `wrong`, whatever the repeat."""

    def reply(payload: dict[str, Any]) -> Reply:
        a, b = map(int, re.findall(r"\d+", payload["messages"][0]["content"])[:2])
        i = next(k for k, q in enumerate(_questions(40)) if q == f"{a} + {b}")
        return Reply(json=completion("0" if i in wrong else str(a + b)))

    return reply


def test_three_rows_failing_in_all_five_repeats_are_three_rows_not_fifteen_items(tmp_path, scripted, cli) -> None:
    """Old: 15 pass→fail (row, repeat) pairs, McNemar p = 6e-5, "regressed". Three rows of 40
    that changed are no evidence that the prompt got worse: p = 0.25 on rows."""
    runs = {}
    for name, wrong in (("base", set()), ("new", {0, 1, 2})):
        srv = scripted(default=_answering(wrong))
        cfg = _cfg(tmp_path, 40, 0)
        cfg["providers"] = {"sim": {"base_urls": [srv.base_url], "max_concurrency": 4}}
        r = cli("run", write_config(tmp_path, cfg, f"{name}.yaml"), "--no-progress")
        assert r.code == 0, r.err
        runs[name] = r.run_dir
    r = cli("compare", runs["base"], runs["new"])
    assert r.code == 0, r.out
    cell = pd.read_parquet(runs["new"] / "compare.parquet").iloc[0]
    assert cell.verdict == "no significant change" and cell.p_value == pytest.approx(0.25)
    assert cell.matched == 40 and cell.pass_to_fail == 3 and cell.new_stable_fail == 3
    flips = pd.read_parquet(runs["new"] / "compare_flips.parquet")
    assert sorted(flips.row_id) == ["a0", "a1", "a2"] and set(flips.new_passes) == {0} and set(flips.base_passes) == {5}
    assert "| a0 | 5/5 | 0/5 |" in (runs["new"] / "compare.md").read_text()
    # with gate.min_passes the rows are pass/fail: the exact McNemar test on rows
    r = cli("compare", runs["base"], runs["new"], "--min-passes", "4")
    cell = pd.read_parquet(runs["new"] / "compare.parquet").iloc[0]
    assert r.code == 0 and cell.test == "mcnemar" and cell.p_value == pytest.approx(mcnemar_exact(3, 0))
    r = cli("compare", runs["base"], runs["new"], "--min-passes", "6")
    assert r.code == 2 and "gate.min_passes: 6 is more than the 5 answer(s) per row" in r.err
    assert "Traceback" not in r.err


@pytest.mark.parametrize(
    "extra, ok",
    [
        ({"repeats": 5, "gate": {"min_passes": 5}}, True),
        ({"repeats": 2, "params": {"n": 2}, "gate": {"min_passes": 4}}, True),
    ],
)
def test_min_passes_up_to_repeats_times_choices_validates(tmp_path, cli, extra, ok) -> None:
    cfg = _cfg(tmp_path, 4, 0)
    params = {**cfg["params"], **extra.pop("params", {})}
    cfg.update(extra, params=params)
    r = cli("validate", write_config(tmp_path, cfg))
    assert r.code == 0, r.err


def test_min_passes_beyond_repeats_times_choices_is_refused(tmp_path, cli) -> None:
    cfg = _cfg(tmp_path, 4, 0, repeats=3, gate={"min_passes": 4})
    path = write_config(tmp_path, cfg)
    r = cli("validate", path)
    assert r.code == 2 and "Traceback" not in r.err
    assert f"{path}" in r.err and "gate.min_passes: 4 is more than the answers per row" in r.err
    assert "repeats × choices = 3 × 1); allowed: 1 to 3" in r.err
    r = cli("run", path, "--no-progress")
    assert r.code == 2 and not list((tmp_path / "reports").glob("*/*/results.parquet"))
    cfg["gate"] = {"min_passes": 0}
    r = cli("validate", write_config(tmp_path, cfg))
    assert r.code == 2 and "min_passes" in r.err


def test_row_statistics_by_hand() -> None:
    # one answer per row: the plain Wilson interval; all rows 5/5 or 0/5: n_eff = rows, not answers
    for passes, answers in (([1] * 8 + [0] * 2, [1] * 10), ([5] * 8 + [0] * 2, [5] * 10)):
        r = row_rate(passes, answers)
        assert (r.low, r.high) == pytest.approx(wilson_interval(8, 10))
    # no row effect at all (every row 2 of 4): as many effective rows as answers
    assert row_rate([2] * 10, [4] * 10).effective_rows == 40
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10) and pass_hat_k(5, 2, 2) == pytest.approx(1 / 10)
    assert pass_at_k(5, 4, 2) == 1.0 and pass_hat_k(5, 0, 1) == 0.0
    # sign flips: 5 rows of +1 and 1 of -1 → exact 2 × 7/64; ±d ties count as extreme
    assert sign_flip_p([1, 1, 1, 1, 1, -1, 0]) == pytest.approx(14 / 64)
    assert sign_flip_p([0.2, -0.2] * 30) == 1.0 and sign_flip_p([]) == 1.0


PAIRS, ROWS = 200, 60
POWER_PAIRS, POWER_ROWS = 50, 400
GATE = Gate(None, 0.02, 0.05)


def _regressed_on_rows(base: pd.DataFrame, new: pd.DataFrame) -> bool:
    t = paired_rows(per_row(base, None), per_row(new, None), None)
    return verdict(t.delta, t.p_value, GATE, t.changed) == "regressed"


def test_false_alarms_at_most_alpha_on_200_pairs_of_the_same_config_and_a_5_point_drop_is_caught() -> None:
    """False alarms: 200 pairs of runs of the same config (repeats 5, temperature 1) against
    simulators with their own seeds (which rows are hard is drawn per run: the strongest row effect
    the simulator has). Power: 50 pairs (400 rows) of one seed's repeats 0-4 against repeats 5-9 of the same
    questions 5 points worse (a higher temperature); the questions keep their difficulty."""
    alarms = sum(_regressed_on_rows(_drawn(ROWS, 2 * k, 1.0), _drawn(ROWS, 2 * k + 1, 1.0)) for k in range(PAIRS))
    caught = sum(
        _regressed_on_rows(_drawn(POWER_ROWS, k, 1.0), _drawn(POWER_ROWS, k, DROP_T, range(5, 10)))
        for k in range(POWER_PAIRS)
    )
    print(f"false alarms {alarms / PAIRS:.3f}, power {caught / POWER_PAIRS:.3f}")
    assert alarms / PAIRS <= GATE.alpha
    # a 5-point drop needs a few hundred rows whatever the repeats (RESULTS.md): at 400 it is caught
    assert caught / POWER_PAIRS >= 0.5


def test_ungraded_answers_leave_their_row_fraction_alone() -> None:
    from evalrun.analysis.summary import SummaryBuilder

    b = SummaryBuilder()
    rows = [("a", True), ("a", None), ("a", False), ("b", True), ("b", True), ("c", None)]
    b.add(
        [
            {"cell_id": "x", "row_id": r, "repeat": i, "choice_index": 0, "status": "ok", "pass_j": p, "score_j": None}
            for i, (r, p) in enumerate(rows)
        ]
    )
    (s,) = b.rows()
    assert s["pass_rate_j"] == pytest.approx((1 / 2 + 1) / 2) and s["items"] == 3 and s["ungraded_j"] == 2
    assert (s["stable_pass_j"], s["flaky_j"], s["stable_fail_j"]) == (1, 1, 0)
    assert s["pass_at_2_j"] == pytest.approx((1 / 1 + 1) / 2)  # row a: 1 of 2 graded answers passes


def test_workers_and_one_process_give_the_same_row_figures(tmp_path, cli) -> None:
    cfg = _cfg(tmp_path, 12, 5)
    one = cli("run", write_config(tmp_path, cfg, "one.yaml"), "--no-progress")
    two = cli("run", write_config(tmp_path, cfg, "two.yaml"), "--no-progress", "--workers", "2")
    assert one.code == 0 and two.code == 0, two.err
    cols = ["items", "pass_rate_correct", "pass_ci_low_correct", "stable_pass_correct", "flaky_correct"]
    a, b = (pd.read_parquet(r.run_dir / "summary.parquet")[cols] for r in (one, two))
    pd.testing.assert_frame_equal(a, b)
    r = cli("compare", one.run_dir, two.run_dir)
    cell = pd.read_parquet(two.run_dir / "compare.parquet").iloc[0]
    assert r.code == 0 and cell.verdict == "no change" and cell.matched == 12 and cell.new_answers == 60
