"""The CI gate's choice of baseline and what it compares: `--baseline latest` takes only a
completed run with the same grid; deltas are over matched items; a baseline that differs is
named (and fails under --strict); "not significant" is said, with its interval; McNemar is exact
and fast at any size."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from conftest import Reply, base_config, completion, write_config

from evalrun.analysis.compare import Gate, verdict
from evalrun.analysis.stats import mcnemar_exact
from evalrun.sim import SimOptions, start_simulator

ROWS = 40


def _data(tmp_path: Path, rows: int = ROWS) -> Path:
    p = tmp_path / "arith.jsonl"
    p.write_bytes(
        b"".join(
            orjson.dumps({"id": f"a{i}", "question": f"{i} + {i + 3}", "answer": 2 * i + 3}) + b"\n"
            for i in range(rows)
        )
    )
    return p


def _cfg(tmp_path: Path, base_url: str | None = None, rows: int = ROWS) -> dict[str, Any]:
    cfg = base_config(tmp_path, _data(tmp_path, rows), base_url)
    cfg["models"] = ["gemini-3-pro-preview"]
    cfg["params"] = {"max_tokens": 1024, "temperature": 0.0, "reasoning_effort": "low"}
    cfg["scorers"] = [{"name": "correct", "type": "numeric"}]
    cfg["prices"] = {"models": {"gemini-3-pro-preview": {"input": 2.0, "output": 12.0}}}
    return cfg


def _run(cli, tmp_path: Path, cfg: dict[str, Any], name: str, *extra: str) -> tuple[int, Path]:
    r = cli("run", write_config(tmp_path, cfg, f"{name}.yaml"), "--no-progress", *extra)
    assert r.code in (0, 1), r.err
    return r.code, r.run_dir


def test_baseline_latest_is_the_latest_completed_run_with_the_same_grid(tmp_path, cli) -> None:
    _, complete = _run(cli, tmp_path, _cfg(tmp_path), "complete")
    code, stopped = _run(cli, tmp_path, _cfg(tmp_path), "stopped", "--max-requests", "2")
    assert code != 0 and orjson.loads((stopped / "manifest.json").read_bytes())["status"] == "stopped"
    _, fewer = _run(cli, tmp_path, _cfg(tmp_path), "fewer", "--set", "dataset.limit=10")
    _, new = _run(cli, tmp_path, _cfg(tmp_path), "new")
    r = cli("compare", "--baseline", "latest", new)
    assert r.code == 0, r.err
    assert f"Base `{complete}`" in r.out and not r.err.count("warning")
    cells = pd.read_parquet(new / "compare.parquet")
    assert list(cells.verdict) == ["no change"] and cells.matched.iloc[0] == ROWS
    # only a stopped run before it: nothing to gate against, said with the reason
    r = cli("compare", "--baseline", "latest", fewer)
    assert r.code == 2 and f"the latest, {stopped.name}, has status stopped" in r.err


def test_deltas_are_per_matched_item_and_a_smaller_baseline_is_named(tmp_path, cli) -> None:
    _, fewer = _run(cli, tmp_path, _cfg(tmp_path), "fewer", "--set", "dataset.limit=10")
    _, new = _run(cli, tmp_path, _cfg(tmp_path), "new")
    r = cli("compare", fewer, new)
    assert r.code == 0, r.err
    cell = pd.read_parquet(new / "compare.parquet").iloc[0]
    assert cell.matched == 10 and cell.new_items == ROWS and cell.only_new_items == ROWS - 10
    assert cell.base_cost_per_item > 0 and cell.delta_cost_per_item == 0  # the same answers cost the same
    assert "| gemini-3-pro-preview · p · defaults | 10 |" in r.out  # a count, not 10.0
    assert "+0.000000 | no change |" in r.out
    assert "the dataset differs: base arith.jsonl (10 rows); new arith.jsonl (40 rows)" in r.err
    assert "30 item(s) only in new" in r.err
    r = cli("compare", fewer, new, "--strict", "--junit", tmp_path / "j.xml")
    assert r.code == 1 and "**FAIL** (--strict)" in r.out and "(--strict: the gate fails)" in r.err
    assert (
        '<testcase classname="evalrun.analysis.compare" name="baseline matches this run"><failure'
        in (tmp_path / "j.xml").read_text()
    )
    assert orjson.loads((new / "compare.json").read_bytes())["verdict"] == "fail"


def test_another_provider_is_named(tmp_path, cli, loop_thread) -> None:
    sim = loop_thread.call(start_simulator(SimOptions.from_mapping({"latency_scale": 0})))
    try:
        _, embedded = _run(cli, tmp_path, _cfg(tmp_path), "embedded")
        _, served = _run(cli, tmp_path, _cfg(tmp_path, sim.base_url), "served")
    finally:
        loop_thread.call(sim.close())
    r = cli("compare", embedded, served)
    assert r.code == 0, r.err
    assert f"the provider differs: base sim (simulator); new sim (openai: {sim.base_url})" in r.err
    assert cli("compare", embedded, served, "--strict").code == 1
    r = cli("compare", "--baseline", "latest", served)  # nor is it the latest baseline
    assert r.code == 2 and f"the latest, {embedded.name}, has another provider (sim (simulator))" in r.err


def _answering(right: set[int]) -> Any:
    """A server that answers question i correctly when i is in `right`, else 0."""

    def reply(payload: dict[str, Any]) -> Reply:
        a, b = map(int, re.findall(r"\d+", payload["messages"][0]["content"])[:2])
        return Reply(json=completion(str(a + b) if a in right else "0"))

    return reply


def test_a_big_change_on_few_items_is_not_significant_and_says_its_interval(tmp_path, scripted, cli) -> None:
    base_srv, new_srv = scripted(default=_answering(set())), scripted(default=_answering({0, 1}))
    _, base = _run(cli, tmp_path, _cfg(tmp_path, base_srv.base_url, rows=10), "base")
    _, new = _run(cli, tmp_path, _cfg(tmp_path, new_srv.base_url, rows=10), "new")
    r = cli("compare", base, new)
    assert r.code == 0, r.err
    cell = pd.read_parquet(new / "compare.parquet").iloc[0]
    assert cell.delta == pytest.approx(0.2) and cell.fail_to_pass == 2 and cell.p_value == 0.5
    assert cell.verdict == "no significant change"
    lo, hi = cell.delta_ci_low * 100, cell.delta_ci_high * 100
    assert f"no significant change (Δ +20.0 pts, 95% CI [{lo:+.1f}, {hi:+.1f}])" in (new / "compare.md").read_text()
    assert lo == 0 and hi > 20


@pytest.mark.parametrize(
    "delta, p, flips, expected",
    [
        (0.0, 1.0, 0, "no change"),
        (0.2, 0.5, 2, "no significant change"),
        (-0.3, 0.2, 9, "no significant change"),
        (-0.3, 0.01, 9, "regressed"),
        (0.3, 0.01, 9, "improved"),
        (-0.01, 0.01, 9, "within threshold"),
    ],
)
def test_verdicts(delta, p, flips, expected) -> None:
    assert verdict(delta, p, Gate(None, 0.02, 0.05), flips) == expected


def _exact(b: int, c: int) -> float:
    """Twice the Binomial(n, ½) tail, in integers (the reference, not the implementation)."""
    n, k = b + c, min(b, c)
    total, term = 0, 1
    for i in range(k + 1):
        total, term = total + term, term * (n - i) // (i + 1)
    return min(1.0, float(Fraction(2 * total, 2**n)))


@pytest.mark.parametrize(
    "b, c, p",
    [(0, 0, 1.0), (0, 1, 1.0), (0, 5, 1 / 16), (5, 0, 1 / 16), (1, 9, 22 / 1024), (3, 10, 756 / 8192), (5, 5, 1.0)],
)
def test_mcnemar_hand_values(b, c, p) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize("b, c", [(a, n - a) for n in (7, 30, 101, 250) for a in range(0, n + 1, max(1, n // 9))])
def test_mcnemar_matches_the_integer_sum(b, c) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(_exact(b, c), rel=1e-9, abs=1e-300)


def test_mcnemar_at_40k_discordant_pairs() -> None:
    # the size that took 6 minutes with big-integer binomials; the integer reference here is
    # one pass of a recurrence, not 20,000 separate binomials
    for b, c in ((19_800, 20_200), (19_950, 20_050), (20_000, 20_000), (10, 39_990)):
        expected = _exact(b, c)
        assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300), (b, c)
    z = (400 - 1) / math.sqrt(40_000)  # and the normal approximation agrees where it should
    assert mcnemar_exact(19_800, 20_200) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.02)
