"""One cost ledger: a judged run's experiment and judge requests in `evalrun cost` (by kind), the
summary, the report's total and score-vs-cost, the plan and a resumed --max-cost — on the
simulator, the judges' usage read from the judge journal."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import read_results
from test_judging_run import _judged

from evalrun.run.recorder import spent
from evalrun.run.store.journal import read_journal


@pytest.fixture
def judged(tmp_path, cli) -> Path:
    r = cli("run", _judged(tmp_path, 6), "--no-progress")
    assert r.code == 0, r.err
    return r.run_dir


def _judge_spend(run_dir: Path) -> float:
    return sum(e["rows"][0]["cost_total"] for e in read_journal(run_dir / "judge_journal.jsonl"))


def test_cost_counts_the_judges_by_kind(judged, cli) -> None:
    answers, judges = float(read_results(judged).cost_total.sum()), _judge_spend(judged)
    assert judges > answers > 0
    table = orjson.loads(cli("cost", judged, "--format", "json").out)
    by = {(r["kind"], r["model"]): r for r in table}
    assert by["experiment", "(all)"]["cost_total"] == pytest.approx(answers)
    assert by["judge", "(all)"]["cost_total"] == pytest.approx(judges)
    assert by["judge", "(all)"]["requests"] == 6 * 2 * 2 + 6 * 2  # label + score per answer; pairwise twice
    assert table[-1]["kind"] == "(all)" and table[-1]["cost_total"] == pytest.approx(answers + judges)
    assert by["judge", "gemini-3.1-pro-preview"]["reasoning_tokens"] > 0
    # at other prices the judges are recomputed too
    prices = judged.parent / "double.yaml"
    doubled = {m: {"input": 2 * p["input"], "output": 2 * p["output"]} for m, p in _flat_prices().items()}
    prices.write_text(orjson.dumps({"models": doubled}).decode())
    again = orjson.loads(cli("cost", judged, "--prices", prices, "--format", "json").out)
    assert {(r["kind"], r["model"]) for r in again} == set(by)
    assert "kind" in cli("cost", judged).out  # the table shows it, never dropped for width


def _flat_prices() -> dict[str, dict[str, float]]:
    return {
        "gemini-2.5-flash-lite": {"input": 0.081, "output": 0.321},
        "gemini-3-pro-preview": {"input": 1.6, "output": 9.6},
        "gemini-3.1-pro-preview": {"input": 2.0, "output": 12.0},
    }


def test_summary_and_report_total_the_judges_too(judged, cli) -> None:
    total = float(read_results(judged).cost_total.sum()) + _judge_spend(judged)
    summary = pq.read_table(judged / "summary.parquet").to_pylist()
    assert sum(s["cost_with_judges"] for s in summary) == pytest.approx(total)
    printed = cli("summary", judged).out
    assert f"cost {total:.4f}: answers" in printed and "+ judges" in printed
    page = Path(cli("report", judged).out.strip().splitlines()[-1]).read_text()
    assert f"${total:.3f}" in page and "+ judges" in page
    assert "judging included" in page and "+ judging" in page  # the score-vs-cost axis, its tooltips


def test_a_resumed_budget_counts_what_the_judges_spent(judged) -> None:
    answers = float(read_results(judged).cost_total.sum())
    assert spent(judged) == pytest.approx(answers + _judge_spend(judged))


def test_plan_estimates_the_judges(tmp_path, cli) -> None:
    report = orjson.loads(cli("plan", _judged(tmp_path, 6), "--json").out)
    assert report["judge_requests"] == 6 * 2 * 2 + 6 * 2
    assert 0 < report["judge_cost_expected"] < report["cost_expected"]
    assert "of which judges" in cli("plan", _judged(tmp_path, 6)).out


def test_judges_spend_the_budget_too_and_a_resume_finishes_them(judged, tmp_path, cli) -> None:
    answers, judges = float(read_results(judged).cost_total.sum()), _judge_spend(judged)
    budget = answers + judges / 2
    config, run_dir = _judged(tmp_path, 6), tmp_path / "budgeted"
    r = cli("run", config, "--no-progress", "--max-cost", repr(budget), "--run-dir", run_dir)
    assert r.code == 1 and f"--max-cost {budget:g}" in r.err
    assert 0 < len(list(read_journal(run_dir / "judge_journal.jsonl"))) < 36  # stopped while judging
    assert spent(run_dir) <= budget  # the judges' spend counted against it
    again = cli("run", "--resume", run_dir, "--no-progress", "--max-cost", repr(3 * (answers + judges)))
    assert again.code == 0, again.err
    assert read_results(run_dir).score_factual.notna().all()
