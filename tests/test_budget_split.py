"""Budgets split across --workers: the K shards' parts add up to the budget and never more
(whole requests; money rounded down), counted at a loopback server over real HTTP."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Reply, base_config, completion, read_results, write_config

from evalrun.run.scale.workers import cost_share, count_share


def _rows(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"rows{n}.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"q{i}", "question": f"{i} + {i}"}) + b"\n" for i in range(n)))
    return path


@pytest.mark.parametrize(("total", "workers"), [(2, 3), (1, 5), (7, 3), (9, 3), (10, 4), (0, 2), (256, 256)])
def test_whole_budgets_split_into_parts_that_add_up(total: int, workers: int) -> None:
    parts = [count_share(total, workers, i) for i in range(1, workers + 1)]
    assert sum(parts) == total and max(parts) - min(parts) <= 1


@pytest.mark.parametrize(("total", "workers"), [(0.1, 3), (0.3, 7), (1.0, 3), (0.04375, 2), (1e-9, 256), (5.0, 1)])
def test_money_budgets_split_into_parts_that_never_add_up_to_more(total: float, workers: int) -> None:
    share = cost_share(total, workers)
    assert Fraction(share) * workers <= Fraction(total) and sum([share] * workers) <= total
    assert share > total / workers * (1 - 1e-12)  # rounded down by a hair, not by a cent


@pytest.mark.parametrize("where", ["flag", "config"])
def test_more_workers_than_requests_sends_only_the_budget(tmp_path, scripted, cli, where: str) -> None:
    server = scripted()
    cfg = base_config(tmp_path, _rows(tmp_path, 12), server.base_url)
    if where == "config":
        cfg["budget"] = {"max_requests": 2}
    flags = ["--max-requests", "2"] if where == "flag" else []
    res = cli("run", write_config(tmp_path, cfg), "--workers", "3", "--no-progress", *flags)
    assert len(server.requests) == 2, res.err  # was 3: each shard got max(1, 2 // 3)
    assert res.code == 1 and "continue with: evalrun run --resume" in res.err
    assert len(read_results(res.run_dir)) == 2
    manifest: dict[str, Any] = orjson.loads((res.run_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "stopped" and manifest["counts"]["recorded"] == 2
    # the resume of the --workers run sends the rest, each request once
    again = cli("run", "--resume", res.run_dir, "--no-progress", "--max-requests", "100")
    assert again.code == 0, again.err
    assert len(server.requests) == 12 and len({orjson.dumps(r["messages"]) for r in server.requests}) == 12


def _priced(tmp_path: Path, url: str, rows: int) -> Path:
    cfg = base_config(tmp_path, _rows(tmp_path, rows), url)
    cfg["models"] = ["m"]
    cfg["prices"] = {"models": {"m": {"input": 1.0, "output": 10.0}}}  # an answer below: ≈0.002
    return write_config(tmp_path, cfg)


def test_a_cost_budget_split_across_workers_is_never_passed_together(tmp_path, scripted, cli) -> None:
    usage = {"prompt_tokens": 13, "completion_tokens": 200, "total_tokens": 213}
    server = scripted(default=lambda p: Reply(json=completion(usage=usage)))
    res = cli("run", _priced(tmp_path, server.base_url, 16), "--workers", "2", "--no-progress", "--max-cost", "0.012")
    assert res.code == 1 and "--resume" in res.err
    df = read_results(res.run_dir)
    assert 0.006 <= df.cost_total.sum() <= 0.012 and len(server.requests) == len(df)


def test_a_worker_share_below_one_request_is_refused_before_anything_starts(tmp_path, scripted, cli) -> None:
    server = scripted()
    # one request may cost ≈0.0026 (256 max_tokens at 10/M): 0.004 fits one run, not half of it
    res = cli("run", _priced(tmp_path, server.base_url, 4), "--workers", "2", "--max-cost", "0.004")
    assert res.code == 2 and server.requests == []
    assert "--workers 2 gives each worker 1/2 of the budget: --max-cost 0.002" in res.err
    assert not (tmp_path / "reports").exists()
