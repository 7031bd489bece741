"""Paying once for an answer: `cache:` and `--reuse` over real runs, counted at a standalone
simulator (what it serves is what a run paid for)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import base_config, read_results, write_config
from test_judging_run import ANSWERS, JUDGE, _dataset
from test_judging_run import _judged as judged_config
from test_resume import Sim

PRICES = Path(__file__).resolve().parent.parent / "configs" / "prices.yaml"
ANSWER_COLUMNS = ["request_id", "content", "finish_reason", "logprobs", "prompt_tokens", "completion_tokens"]


@pytest.fixture
def sim() -> Iterator[Sim]:
    s = Sim("--latency-ms", "0", "--per-token-ms", "0")
    yield s
    s.close()


def _config(tmp_path: Path, url: str, models: list[str], **extra: Any) -> Path:
    cfg = base_config(tmp_path, _dataset(tmp_path, 8), url)
    cfg["models"] = models
    cfg["params"] = {"max_tokens": 256, "logprobs": True, "top_logprobs": 3}
    cfg["prices"] = str(PRICES)
    cfg.update(extra)
    return write_config(tmp_path, cfg)


def _sent(sim: Sim) -> int:
    return int(sim.stats()["requests"])


def _answers(run_dir: Path) -> list[dict[str, Any]]:
    """What was answered, logprobs included, as plain values in request order."""
    table = pq.read_table(run_dir / "results.parquet", columns=ANSWER_COLUMNS).sort_by("request_id")
    return table.to_pylist()


def test_the_same_experiment_twice_with_a_cache_sends_nothing_the_second_time(tmp_path, cli, sim) -> None:
    config = _config(tmp_path, sim.url, [ANSWERS, "gemini-3-pro-preview"], cache=str(tmp_path / "cache"))
    first = cli("run", config, "--no-progress")
    assert first.code == 0, first.err
    assert _sent(sim) == 16
    plan = orjson.loads(cli("plan", config, "--json").out)["cache"]
    assert plan["hits"] == 16 and plan["saved"] == pytest.approx(read_results(first.run_dir).cost_total.sum())
    second = cli("run", config, "--no-progress")
    assert second.code == 0, second.err
    assert _sent(sim) == 16  # not one request more
    assert "16 answers came from the cache" in second.err
    a, b = read_results(first.run_dir), read_results(second.run_dir)
    assert _answers(first.run_dir) == _answers(second.run_dir)  # the same answers, logprobs included
    assert b.cached.all() and not a.cached.any()
    assert (b.cost_total == 0).all()  # this run paid nothing ...
    costs = a.set_index("request_id").cost_total
    assert b.set_index("request_id").cached_cost_total.equals(costs.loc[b.request_id].rename("cached_cost_total"))
    assert set(b.cache_source_run) == {first.run_dir.name}  # ... and says who did
    # one model changed: plan says half would come from the cache, and only its requests are sent
    changed = _config(tmp_path, sim.url, [ANSWERS, "gemini-3.1-pro-preview"], cache=str(tmp_path / "cache"))
    assert orjson.loads(cli("plan", changed, "--json").out)["cache"]["hits"] == 8
    third = cli(
        "run",
        _config(tmp_path, sim.url, [ANSWERS, "gemini-3.1-pro-preview"], cache=str(tmp_path / "cache")),
        "--no-progress",
    )
    assert third.code == 0, third.err
    assert _sent(sim) == 16 + 8
    assert sim.stats()["by_model"]["gemini-3.1-pro-preview"] == 8


def test_errors_are_never_cached_and_repeats_are_separate_samples(tmp_path, cli, sim) -> None:
    sim.options(fail_first=3, fail_first_status=400)  # three requests refused: error rows, not retried
    config = _config(tmp_path, sim.url, [ANSWERS], cache=True, repeats=2)
    first = cli("run", config, "--no-progress")
    df = read_results(first.run_dir)
    assert _sent(sim) == 16 and (df.status == "error").sum() == 3  # both repeats sent: never one for the other
    r0, r1 = (df[(df.status == "ok") & (df.repeat == k)].set_index("row_id").content for k in (0, 1))
    assert (r0 != r1.reindex(r0.index)).any()  # repeats are different samples
    second = cli("run", config, "--no-progress")
    assert _sent(sim) == 16 + 3  # only the requests that had ended in error are asked again
    assert (read_results(second.run_dir).status == "ok").all()


def test_reuse_takes_an_earlier_runs_unchanged_answers(tmp_path, cli, sim) -> None:
    config = _config(tmp_path, sim.url, [ANSWERS, "gemini-3-pro-preview"])  # no cache configured
    first = cli("run", config, "--no-progress")
    assert _sent(sim) == 16
    second = cli("run", config, "--no-progress", "--reuse", first.run_dir)
    assert second.code == 0, second.err
    assert _sent(sim) == 16 and read_results(second.run_dir).cached.all()
    assert _answers(first.run_dir) == _answers(second.run_dir)
    assert not (second.run_dir / "reuse.sqlite").exists()  # the loaded copy is gone with the run
    changed = _config(tmp_path, sim.url, [ANSWERS, "gemini-3.1-pro-preview"])
    third = cli("run", changed, "--no-progress", "--reuse", "latest")
    assert third.code == 0, third.err
    assert _sent(sim) == 16 + 8  # the unchanged model's answers reused, the new model's sent
    bad = cli("run", changed, "--no-progress", "--reuse", tmp_path / "nowhere")
    assert bad.code == 2 and "--reuse" in bad.err and _sent(sim) == 24


def test_judge_requests_are_cached_the_same_way(tmp_path, cli, sim) -> None:
    config = judged_config(tmp_path, 6, sim.url)
    text = config.read_text() + f"cache: {tmp_path / 'cache'}\n"
    config.write_text(text)
    first = cli("run", config, "--no-progress")
    assert first.code == 0, first.err
    sent = sim.stats()["by_model"]
    second = cli("run", config, "--no-progress")
    assert second.code == 0, second.err
    assert sim.stats()["by_model"] == sent  # answers and judges alike served from the cache
    df = read_results(second.run_dir)
    assert df.score_factual.notna().all() and df.cached.all()
    assert sent[JUDGE] > 0 and sent[ANSWERS] == 6
