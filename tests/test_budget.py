"""--max-cost spends its budget and never more: over real HTTP on 127.0.0.1, with answers whose
lengths (and latencies) vary, a server that answers max_tokens now and then, judges, --resume and
--workers."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Reply, base_config, completion, read_results, write_config

MAX_TOKENS = 400
PRICES = {"m": {"input": 1.0, "output": 10.0}}  # per 1M tokens: an output token is 1e-5


def _rows(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"rows{n}.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"q{i}", "question": f"{i} + {i}"}) + b"\n" for i in range(n)))
    return path


def _tokens(payload: dict[str, Any], every: int) -> int:
    """How long the answer to a question is: 40–200 tokens, and max_tokens for one question in
    `every` (the hostile answers); the same question gets the same length."""
    digest = hashlib.sha256(orjson.dumps(payload["messages"])).digest()
    if every and digest[0] % every == 0:
        return MAX_TOKENS
    return 40 + digest[1] * 160 // 255


def _answer(every: int = 0) -> Any:
    def reply(payload: dict[str, Any]) -> Reply:
        n = _tokens(payload, every)
        usage = {"prompt_tokens": 20, "completion_tokens": n, "total_tokens": 20 + n}
        # a long answer takes longer: the short ones come back first, as from a real model
        body = completion(usage=usage, finish_reason="length" if n == MAX_TOKENS else "stop")
        return Reply(json=body, delay=n / 4000)

    return reply


def _config(tmp_path: Path, url: str, rows: int, **extra: Any) -> Path:
    cfg = base_config(tmp_path, _rows(tmp_path, rows), url, **extra)
    cfg["models"] = ["m"]
    cfg["params"] = {"max_tokens": MAX_TOKENS}
    cfg["prices"] = {"models": PRICES}
    cfg["providers"]["sim"]["max_concurrency"] = 16
    return write_config(tmp_path, cfg)


def _spent(run_dir: Path) -> float:
    return float(read_results(run_dir).cost_total.sum())


def test_max_cost_spends_most_of_its_budget(tmp_path, scripted, cli) -> None:
    """Half the full cost as the budget: 40–50 % of the full cost is spent. It spent a few per
    cent: every request in flight held its worst case and the first that did not fit stopped the run."""
    server = scripted(default=_answer())
    config = _config(tmp_path, server.base_url, 120)
    full = cli("run", config, "--no-progress", "--run-dir", tmp_path / "full")
    assert full.code == 0, full.err
    cost = _spent(tmp_path / "full")
    half = cli("run", config, "--no-progress", "--max-cost", repr(cost / 2), "--run-dir", tmp_path / "half")
    assert half.code == 1 and f"--max-cost {cost / 2:g}" in half.err and "--resume" in half.err
    assert 0.40 * cost <= _spent(tmp_path / "half") <= 0.50 * cost


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5, 0.8])
def test_max_cost_is_never_passed_when_some_answers_take_every_token(tmp_path, scripted, cli, share) -> None:
    server = scripted(default=_answer(every=7))
    config = _config(tmp_path, server.base_url, 160)
    assert cli("run", config, "--no-progress", "--run-dir", tmp_path / "full").code == 0
    cost = _spent(tmp_path / "full")
    worst = (20 * 1.0 + MAX_TOKENS * 10.0) / 1e6
    budget = cost * share
    r = cli("run", config, "--no-progress", "--max-cost", repr(budget), "--run-dir", tmp_path / "part")
    assert r.code == 1, r.err
    spent = _spent(tmp_path / "part")
    assert spent <= budget
    assert spent >= budget - 3 * worst  # it stops a few answers short, not at a few per cent


def test_the_quickstart_at_half_its_cost_spends_40_to_50_percent(tmp_path, cli) -> None:
    """The shipped quickstart on the simulator, every cell answered, never past the budget."""
    config = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
    sets = ["--set", f"reports_dir={tmp_path}", "--set", "providers.simulator.simulator.latency_scale=0.1"]
    assert cli("run", config, *sets, "--no-progress", "--run-dir", tmp_path / "full").code == 0
    cost = _spent(tmp_path / "full")
    r = cli("run", config, *sets, "--no-progress", "--max-cost", repr(cost / 2), "--run-dir", tmp_path / "half")
    assert r.code == 1, r.err
    assert 0.40 * cost <= _spent(tmp_path / "half") <= 0.50 * cost
    assert read_results(tmp_path / "half").cell_id.nunique() == 6  # served in turn, cell by cell
