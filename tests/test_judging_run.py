"""Judge requests are requests: a judge experiment end to end on the simulator, a kill -9 while
judging, and re-grading with a changed rubric — counted at a standalone simulator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
from conftest import base_config, read_results, write_config
from test_resume import Sim, _evalrun

from evalrun.run.store.journal import read_journal

PRICES = Path(__file__).resolve().parent.parent / "configs" / "prices.yaml"
JUDGE = "gemini-3.1-pro-preview"
ANSWERS = "gemini-2.5-flash-lite"


def _dataset(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "sums.jsonl"
    path.write_bytes(
        b"".join(orjson.dumps({"id": f"s{i}", "question": f"{i} + 7", "answer": i + 7}) + b"\n" for i in range(rows))
    )
    return path


def _judged(tmp_path: Path, rows: int, url: str | None = None, **judge: Any) -> Path:
    cfg = base_config(tmp_path, _dataset(tmp_path, rows), url)
    cfg["models"] = [ANSWERS, "gemini-3-pro-preview"]
    cfg["params"] = {"max_tokens": 1024, "temperature": 0.7}
    cfg["prices"] = str(PRICES)
    cfg["scorers"] = [
        {"name": "number", "type": "numeric", "expected": "{answer}"},
        {
            "name": "factual",
            "type": "label_model",
            "model": JUDGE,
            "rubric": "factuality",
            "reference": "{answer}",
            **judge,
        },
        {
            "name": "grade",
            "type": "score_model",
            "model": JUDGE,
            "rubric": "factuality",
            "reference": "{answer}",
            "range": [1, 10],
            "pass_at": 7,
        },
        {
            "name": "vs_lite",
            "type": "pairwise_model",
            "model": JUDGE,
            "rubric": "factuality",
            "reference": "{answer}",
            "baseline": {"model": ANSWERS},
        },
    ]
    if url is not None:
        cfg["providers"]["sim"]["max_concurrency"] = 8
    return write_config(tmp_path, cfg)


def test_a_judged_run_grades_every_answer_with_its_cost_in_the_summary_compare_and_report(tmp_path, cli) -> None:
    r = cli("run", _judged(tmp_path, 12), "--no-progress")
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    ok = df[df.status == "ok"]
    for name in ("factual", "grade"):
        assert ok[f"score_{name}"].notna().all() and ok[f"judge_cost_{name}"].gt(0).all()
        assert set(ok[f"judge_model_{name}"]) == {JUDGE} and ok[f"judge_request_id_{name}"].notna().all()
        assert ok[f"judge_reasoning_{name}"].str.len().gt(0).all()
    assert set(ok.judge_label_factual) <= {"CORRECT", "INCORRECT"}
    # the judge agrees with the deterministic check on these sums far more often than not
    assert (ok.pass_factual == ok.pass_number).mean() > 0.8
    # pairwise: the baseline is not graded against itself; the other cell wins, ties or loses
    base, other = ok[ok.model == ANSWERS], ok[ok.model != ANSWERS]
    assert base.pass_vs_lite.isna().all() and base.score_vs_lite.isna().all()
    assert set(other.judge_label_vs_lite) <= {"win", "tie", "loss"} and other.score_vs_lite.notna().all()
    # what grading cost sits beside what answering cost, per cell
    summary = pq.read_table(r.run_dir / "summary.parquet").to_pylist()
    assert all(s["judge_cost"] > 0 for s in summary)
    assert {s["model"]: s.get("pass_rate_vs_lite") for s in summary}[ANSWERS] is None
    # compare pairs the judge's verdicts like any scorer's
    c = cli("compare", r.run_dir, r.run_dir, "--scorer", "factual")
    assert c.code == 0, c.err
    assert "factual" in c.out and len(pq.read_table(r.run_dir / "compare.parquet")) == 2  # one row per cell
    page = Path(cli("report", r.run_dir).out.strip().splitlines()[-1]).read_text()
    assert "factual" in page and "vs_lite" in page


def _judge_lines(run_dir: Path) -> int:
    path = run_dir / "judge_journal.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_9_while_judging_then_resume_judges_every_answer_once(tmp_path) -> None:
    sim = Sim("--latency-ms", "80", "--per-token-ms", "0")
    try:
        rows = 24
        config = _judged(tmp_path, rows, sim.url)
        run_dir = tmp_path / "run"
        proc = _evalrun("run", config, "--run-dir", run_dir)
        deadline = time.monotonic() + 60
        while _judge_lines(run_dir) < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before judging could be interrupted; make it slower"
        proc.kill()
        proc.wait(10)
        judged_before = _judge_lines(run_dir)
        expected = rows * 2 * 2 + rows * 2  # label + score per answer (2 cells), pairwise 2 orders × 1 cell
        assert 0 < judged_before < expected
        before = sim.stats()["by_model"].get(JUDGE, 0)
        resumed = _evalrun("run", "--resume", run_dir)
        _out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        sent = sim.stats()["by_model"][JUDGE]
        # every judge request answered once, plus at most those on the wire at the kill
        assert expected <= sent <= expected + 8
        assert sent - before == expected - judged_before  # the resume asked only what had no answer
        entries = list(read_journal(run_dir / "judge_journal.jsonl"))
        assert len({e["id"] for e in entries}) == expected == len(entries)
        df = read_results(run_dir)
        assert df.score_factual.notna().all() and df.score_grade.notna().all()
        assert sim.stats()["by_model"][ANSWERS] == rows  # the answers were never asked again
    finally:
        sim.close()


def test_score_with_a_changed_rubric_asks_only_the_judge_again(tmp_path, cli) -> None:
    sim = Sim("--latency-ms", "0", "--per-token-ms", "0")
    try:
        rows = 10
        config = _judged(tmp_path, rows, sim.url)
        r = cli("run", config, "--no-progress")
        assert r.code == 0, r.err
        answers, judged = sim.stats()["by_model"][ANSWERS], sim.stats()["by_model"][JUDGE]
        old = read_results(r.run_dir).judge_request_id_factual.tolist()
        changed = _judged(tmp_path, rows, sim.url, rubric="closed_qa")  # the same file, a new rubric
        assert changed == config
        s = cli("score", r.run_dir)
        assert s.code == 0, s.err
        stats = sim.stats()["by_model"]
        assert stats[ANSWERS] == answers  # not one answer re-sent
        assert stats[JUDGE] == judged + rows * 2  # the changed judge asked again, once per answer
        new = read_results(r.run_dir)
        assert not set(new.judge_request_id_factual) & set(old) and new.score_factual.notna().all()
        cli("score", r.run_dir)  # unchanged: nothing more is asked
        assert sim.stats()["by_model"][JUDGE] == judged + rows * 2
    finally:
        sim.close()


def test_validate_checks_the_judges_as_run_does(tmp_path, dataset, cli) -> None:
    """A pairwise judge against a model the experiment does not run: exit 2 at validate, not at run."""
    cfg = base_config(tmp_path, dataset)
    cfg["scorers"] = [
        {
            "type": "pairwise_model",
            "model": JUDGE,
            "rubric": "factuality",
            "reference": "{answer}",
            "baseline": {"model": "gemini-3-pro-preview"},
        }
    ]
    r = cli("validate", write_config(tmp_path, cfg))
    assert r.code == 2 and "baseline.model: 'gemini-3-pro-preview' is not in models:" in r.err, r.err
