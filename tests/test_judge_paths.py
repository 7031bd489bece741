"""Judge verdicts survive every path a run takes — --workers, --shard + merge, a stopped run
resumed, `evalrun score` — and none is asked twice. A standalone simulator counts requests by
model: the experiment's models and the judge's apart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from conftest import read_results
from test_judging_run import ANSWERS, JUDGE, _judged
from test_resume import Sim

from evalrun.run.store.journal import read_journal

ROWS = 10
OTHER = "gemini-3-pro-preview"  # the experiment's second model (see test_judging_run._judged)
# label + score per answer (2 cells), pairwise in 2 orders for the cell that is not the baseline
JUDGE_REQUESTS = ROWS * 2 * 2 + ROWS * 2


@pytest.fixture
def sim() -> Iterator[Sim]:
    s = Sim("--latency-ms", "0", "--per-token-ms", "0")
    yield s
    s.close()


def _sent(sim: Sim) -> tuple[int, int]:
    """(experiment requests, judge requests) the simulator has answered."""
    by_model = sim.stats()["by_model"]
    return by_model.get(ANSWERS, 0) + by_model.get(OTHER, 0), by_model.get(JUDGE, 0)


def _all_judged(run_dir: Path, rows: int = ROWS) -> None:
    """Every row carries every judge's verdict (the baseline cell has none of the pairwise)."""
    df = read_results(run_dir)
    assert len(df) == rows * 2 and (df.status == "ok").all()
    assert df.score_factual.notna().all() and df.score_grade.notna().all()
    assert df.judge_error_factual.isna().all() and df.judge_error_grade.isna().all()
    other = df[df.model == OTHER]
    assert other.score_vs_lite.notna().all() and other.judge_error_vs_lite.isna().all()
    assert df.judge_cost_factual.gt(0).all()


def _judge_ids(run_dir: Path) -> list[str]:
    return [e["id"] for e in read_journal(run_dir / "judge_journal.jsonl")]


def test_workers_keep_every_verdict_and_ask_each_once(tmp_path: Path, sim: Sim, cli: Any) -> None:
    config = _judged(tmp_path, ROWS, sim.url)
    r = cli("run", config, "--workers", "2", "--run-dir", tmp_path / "run", "--no-progress")
    assert r.code == 0, r.err
    run_dir = tmp_path / "run"
    _all_judged(run_dir)
    assert _sent(sim) == (ROWS * 2, JUDGE_REQUESTS)  # pairwise across shards asked once, by the parent
    ids = _judge_ids(run_dir)
    assert len(ids) == len(set(ids)) == JUDGE_REQUESTS
    assert orjson.loads((run_dir / "manifest.json").read_bytes())["status"] == "completed"
    s = cli("score", run_dir)  # everything is answered: nothing is sent
    assert s.code == 0, s.err
    assert _sent(sim) == (ROWS * 2, JUDGE_REQUESTS)
    _all_judged(run_dir)


def test_shards_and_merge_keep_the_shards_verdicts_and_score_asks_the_rest(tmp_path: Path, sim: Sim, cli: Any) -> None:
    config = _judged(tmp_path, ROWS, sim.url)
    dirs = [tmp_path / "s1", tmp_path / "s2"]
    for i, d in enumerate(dirs, 1):
        r = cli("run", config, "--shard", f"{i}/2", "--run-dir", d, "--no-progress")
        assert r.code == 0, r.err
    paid = _sent(sim)
    m = cli("merge", *dirs, "--out", tmp_path / "merged")
    assert m.code == 0, m.err
    merged = tmp_path / "merged"
    assert _sent(sim) == paid  # merging sends nothing
    df = read_results(merged)
    # the label and score judges were all answered in the shards: every verdict is in the merge
    assert df.score_factual.notna().all() and df.score_grade.notna().all() and df.judge_model_factual.notna().all()
    shard_ids = [i for d in dirs for i in _judge_ids(d)]
    assert sorted(_judge_ids(merged)) == sorted(shard_ids)
    # a pairwise item whose two answers fell in different shards could be asked by neither
    pending = JUDGE_REQUESTS - len(shard_ids)
    assert pending > 0 and f"{pending:,} judge requests have no answer yet" in m.err
    assert f"evalrun score {merged}" in m.err
    s = cli("score", merged)
    assert s.code == 0, s.err
    assert _sent(sim) == (ROWS * 2, paid[1] + pending)  # only what no shard had asked
    _all_judged(merged)


def test_a_stopped_judged_run_resumed_judges_every_answer_once(tmp_path: Path, sim: Sim, cli: Any) -> None:
    config = _judged(tmp_path, ROWS, sim.url)
    r = cli("run", config, "--max-requests", "7", "--no-progress")
    assert r.code == 1, r.err
    sent, judged = _sent(sim)
    assert 7 <= sent < ROWS * 2 and judged == 0  # stopped before the judges' turn
    again = cli("run", "--resume", r.run_dir, "--no-progress")
    assert again.code == 0, again.err
    assert _sent(sim) == (ROWS * 2, JUDGE_REQUESTS)
    _all_judged(r.run_dir)


def test_score_of_a_stopped_run_sends_no_experiment_request_and_says_so(tmp_path: Path, sim: Sim, cli: Any) -> None:
    config = _judged(tmp_path, ROWS, sim.url)
    r = cli("run", config, "--max-requests", "7", "--no-progress")
    assert r.code == 1, r.err
    answered, judged = _sent(sim)
    assert judged == 0 and answered < ROWS * 2
    s = cli("score", r.run_dir)
    sent, judged = _sent(sim)
    assert sent == answered  # not one of the missing experiment requests
    assert judged > 0
    df = read_results(r.run_dir)
    assert len(df) == answered and df.score_factual.notna().all() and df.score_grade.notna().all()
    assert f"scored the {answered:,} of {ROWS * 2:,} requests that have a row: the run was stopped" in s.err
    assert f"evalrun run --resume {r.run_dir}" in s.err
    assert s.code == 1  # the run is still incomplete
    manifest = orjson.loads((r.run_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "stopped" and manifest["counts"]["missing"] == ROWS * 2 - answered
    again = cli("score", r.run_dir)  # answered once: asked no more
    assert _sent(sim) == (sent, judged) and again.code == 1
    assert "nothing to resume" not in again.err and "the run was stopped" in again.err


def test_score_without_judges_of_a_stopped_run_says_it_is_stopped(tmp_path: Path, sim: Sim, cli: Any) -> None:
    config = _judged(tmp_path, ROWS, sim.url)
    cfg = yaml.safe_load(config.read_text())
    cfg["scorers"] = cfg["scorers"][:1]  # the numeric check only
    config.write_text(yaml.safe_dump(cfg))
    r = cli("run", config, "--max-requests", "5", "--no-progress")
    assert r.code == 1, r.err
    answered = _sent(sim)
    s = cli("score", r.run_dir)
    assert _sent(sim) == answered and s.code == 1
    assert f"scored the {answered[0]:,} of {ROWS * 2:,} requests that have a row" in s.err
    assert f"evalrun run --resume {r.run_dir}" in s.err
