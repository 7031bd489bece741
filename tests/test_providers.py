"""Several providers in one experiment, and model names checked against what a provider serves.

Each provider is its own simulator on its own loopback port, each with its own key: a row
recorded with another provider's base URL, or a key sent to the wrong server (401), fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import base_config, read_results, write_config

from evalrun.run.store.journal import JUDGE_JOURNAL, read_journal
from evalrun.sim import SimOptions, start_simulator

FLASH, PRO31, PRO3 = "gemini-2.5-flash-lite", "gemini-3.1-pro-preview", "gemini-3-pro-preview"
KEYS = {"slow": "sk-slow-0123456789", "fast": "sk-fast-0123456789", "grader": "sk-grader-0123456789"}
JUDGE = {"name": "graded", "type": "label_model", "model": PRO31, "rubric": "factuality", "reference": "{answer}"}


@pytest.fixture
def sims(loop_thread: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Three simulators, one per provider, each accepting only its provider's key."""
    handles = {}
    for name, key in KEYS.items():
        monkeypatch.setenv(f"{name.upper()}_KEY", key)
        handles[name] = loop_thread.call(start_simulator(SimOptions(latency_scale=0, require_api_key=key)))
    yield handles
    for h in handles.values():
        loop_thread.call(h.close())


def _multi(tmp_path: Path, dataset: Path, sims: dict[str, Any], **extra: Any) -> Path:
    cfg = base_config(tmp_path, dataset)
    del cfg["provider"]  # no default: every model and judge names its own
    cfg["providers"] = {
        name: {"base_urls": [h.base_url], "api_key_env": f"{name.upper()}_KEY"} for name, h in sims.items()
    }
    cfg["models"] = [{"name": FLASH, "provider": "slow"}, {"name": PRO31, "provider": "fast"}]
    cfg["scorers"] = [{"name": "correct", "type": "numeric", "expected": "{answer}"}, {**JUDGE, "provider": "grader"}]
    cfg.update(extra)
    return write_config(tmp_path, cfg)


def _judge_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [row for entry in read_journal(run_dir / JUDGE_JOURNAL) for row in entry["rows"]]


def _by_model(sim: Any) -> dict[str, int]:
    return dict(sim.stats.by_model)


def test_two_providers_without_a_top_level_provider_run_end_to_end(tmp_path, dataset, sims, cli) -> None:
    config = _multi(tmp_path, dataset, sims, repeats=2)
    v = cli("validate", config)
    assert v.code == 0 and "2 cells × 5 rows × 2 repeats = 20 requests" in v.out, v.err
    plan = cli("plan", config)
    assert plan.code == 0 and f"slow/{FLASH}: 10 requests" in plan.out and f"fast/{PRO31}: 10" in plan.out
    r = cli("run", config, "--no-progress")
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    assert (df.status == "ok").all() and len(df) == 20
    # each row names the provider it went to and that provider's own URL
    urls = {p: {h.base_url} for p, h in sims.items()}
    assert {p: set(g.base_url) for p, g in df.groupby("provider")} == {"slow": urls["slow"], "fast": urls["fast"]}
    assert {p: set(g.model) for p, g in df.groupby("provider")} == {"slow": {FLASH}, "fast": {PRO31}}
    # each server saw only its own models (and its own key: any other got a 401 error row)
    assert _by_model(sims["slow"]) == {FLASH: 10} and _by_model(sims["fast"]) == {PRO31: 10}
    assert _by_model(sims["grader"]) == {PRO31: 20}  # one verdict per answer, on the third provider
    judged = _judge_rows(r.run_dir)
    assert {(j["provider"], j["base_url"]) for j in judged} == {("grader", sims["grader"].base_url)}
    assert df.judge_label_graded.notna().all()
    for cmd in (("summary", r.run_dir), ("compare", r.run_dir, r.run_dir), ("report", r.run_dir)):
        out = cli(*cmd)
        assert out.code == 0, (cmd, out.err)
    assert {s["model"] for s in pq.read_table(r.run_dir / "summary.parquet").to_pylist()} == {FLASH, PRO31}
    s = cli("score", r.run_dir)  # verdicts are there: nothing is asked again
    assert s.code == 0, s.err
    assert _by_model(sims["grader"]) == {PRO31: 20} and _by_model(sims["slow"]) == {FLASH: 10}


def test_a_judge_on_one_of_the_two_providers_uses_its_url_and_key(tmp_path, dataset, sims, cli) -> None:
    config = _multi(tmp_path, dataset, sims)
    cfg = yaml.safe_load(config.read_text())
    cfg["scorers"][1]["provider"] = "fast"
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 0, r.err
    # its 5 answers and the 10 verdicts (both models' answers graded) at one server
    assert _by_model(sims["fast"]) == {PRO31: 5 + 10} and _by_model(sims["grader"]) == {}
    judged = _judge_rows(r.run_dir)
    assert len(judged) == 10 and {(j["provider"], j["base_url"], j["status"]) for j in judged} == {
        ("fast", sims["fast"].base_url, "ok")
    }


@pytest.mark.parametrize(
    ("change", "wanted"),
    [
        # a model naming a provider that is not defined
        (
            lambda c: c["models"][1].update(provider="fats"),
            r"exp\.yaml:\d+: models\[1\]\.provider: provider 'fats' is not defined — did you mean 'fast'\?",
        ),
        # a judge naming one
        (
            lambda c: c["scorers"][1].update(provider="grade"),
            r"exp\.yaml:\d+: scorers\[1\]\.provider: provider 'grade' is not defined — did you mean 'grader'\?",
        ),
        # a judge naming none while several are defined
        (
            lambda c: c["scorers"][1].pop("provider"),
            r"exp\.yaml:\d+: scorers\[1\]: several providers are defined \(slow, fast, grader\) and this names "
            r"none; give it provider: \(one of slow, fast, grader\), or set provider: at the top level",
        ),
        # a model naming none
        (
            lambda c: c["models"][0].pop("provider"),
            r"exp\.yaml:\d+: models\[0\]: several providers are defined \(slow, fast, grader\) and this names none",
        ),
    ],
)
def test_a_missing_or_unknown_provider_is_a_usage_error_naming_the_key(
    tmp_path, dataset, sims, cli, change, wanted
) -> None:
    cfg = yaml.safe_load(_multi(tmp_path, dataset, sims).read_text())
    change(cfg)
    config = write_config(tmp_path, cfg)
    for cmd in ("validate", "plan", "run"):
        r = cli(cmd, config)
        assert r.code == 2 and r.err.count("\n") == 1, (cmd, r.err)
        assert re.search(wanted, r.err), r.err
    assert all(_by_model(h) == {} for h in sims.values())  # nothing sent


def test_a_judge_without_a_provider_takes_the_top_level_one(tmp_path, dataset, sims, cli) -> None:
    cfg = yaml.safe_load(_multi(tmp_path, dataset, sims).read_text())
    cfg["scorers"][1].pop("provider")
    cfg["provider"] = "grader"
    r = cli("run", write_config(tmp_path, cfg), "--no-progress", "--limit", "2")
    assert r.code == 0, r.err
    assert _by_model(sims["grader"]) == {PRO31: 4}


def _urls_by_provider(df: Any) -> dict[str, set[str]]:
    return {p: set(g.base_url) for p, g in df.groupby("provider")}


def test_two_providers_through_shards_merge_and_a_stopped_run_resumed(tmp_path, dataset, sims, cli) -> None:
    config = _multi(tmp_path, dataset, sims, repeats=2)
    wanted = {"slow": {sims["slow"].base_url}, "fast": {sims["fast"].base_url}}
    shards = [cli("run", config, "--shard", f"{i}/2", "--no-progress") for i in (1, 2)]
    assert all(s.code == 0 for s in shards), [s.err for s in shards]
    merged = tmp_path / "merged"
    assert cli("merge", *(s.run_dir for s in shards), "--out", merged).code == 0
    df = read_results(merged)
    assert len(df) == 20 and (df.status == "ok").all() and _urls_by_provider(df) == wanted
    stopped = cli("run", config, "--max-requests", "7", "--no-progress")
    assert stopped.code != 0 and len(read_results(stopped.run_dir)) == 7
    resumed = cli("run", "--resume", stopped.run_dir, "--no-progress")
    assert resumed.code == 0, resumed.err
    df = read_results(resumed.run_dir)
    assert len(df) == 20 and (df.status == "ok").all() and _urls_by_provider(df) == wanted
