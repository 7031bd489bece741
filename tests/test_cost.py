"""Cost: hand-computed figures for the rules peers get wrong (cached input, reasoning inside
completion tokens, tiers, audio, missing usage), the budget, plan estimates, `evalrun cost`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd
import pytest
import yaml
from conftest import Reply, base_config, completion, read_results, write_config

from evalrun.config.prices import ModelPrice, PriceTable, Pricing, load_pricing

TABLE = PriceTable(
    models={
        "flat": ModelPrice(input=1.0, output=4.0, cached_input=0.1),
        "think": ModelPrice(input=1.0, output=4.0, reasoning=8.0),
        "tiered": ModelPrice(
            tiers=[
                {"max_prompt_tokens": 1000, "input": 1.0, "output": 2.0, "cached_input": 0.5},
                {"input": 3.0, "output": 6.0},
            ]
        ),
        "audio": ModelPrice(input=1.0, output=2.0, audio_input=10.0),
    }
)
PRICING = Pricing(TABLE, "test")
M = 1_000_000


@pytest.mark.parametrize(
    "model, usage, expected",
    [
        # 1,000 prompt of which 400 cached; 500 completion of which 200 reasoning (billed as output)
        (
            "flat",
            {"prompt_tokens": 1000, "cached_tokens": 400, "completion_tokens": 500, "reasoning_tokens": 200},
            {
                "cost_input": 600 * 1.0 / M,
                "cost_cached": 400 * 0.1 / M,
                "cost_output": 300 * 4.0 / M,
                "cost_reasoning": 200 * 4.0 / M,
                "cost_total": (600 + 40 + 1200 + 800) / M,
            },
        ),
        # a reasoning price of its own; reasoning never billed twice
        (
            "think",
            {"prompt_tokens": 100, "completion_tokens": 1891, "reasoning_tokens": 1480},
            {
                "cost_input": 100 / M,
                "cost_cached": 0.0,
                "cost_output": 411 * 4.0 / M,
                "cost_reasoning": 1480 * 8.0 / M,
                "cost_total": (100 + 1644 + 11840) / M,
            },
        ),
        # no cached price given: cached tokens at the input price, still not twice
        (
            "think",
            {"prompt_tokens": 100, "cached_tokens": 100, "completion_tokens": 0},
            {
                "cost_input": 0.0,
                "cost_cached": 100 / M,
                "cost_output": 0.0,
                "cost_reasoning": 0.0,
                "cost_total": 100 / M,
            },
        ),
        # tiers: the request's own prompt length picks the tier (1,000 is still the first)
        (
            "tiered",
            {"prompt_tokens": 1000, "cached_tokens": 200, "completion_tokens": 10},
            {
                "cost_input": 800 / M,
                "cost_cached": 200 * 0.5 / M,
                "cost_output": 20 / M,
                "cost_reasoning": 0.0,
                "cost_total": (800 + 100 + 20) / M,
            },
        ),
        (
            "tiered",
            {"prompt_tokens": 1001, "completion_tokens": 10},
            {
                "cost_input": 3003 / M,
                "cost_cached": 0.0,
                "cost_output": 60 / M,
                "cost_reasoning": 0.0,
                "cost_total": 3063 / M,
            },
        ),
        # audio prompt tokens at the audio price
        (
            "audio",
            {"prompt_tokens": 300, "prompt_audio_tokens": 100, "completion_tokens": 1},
            {
                "cost_input": (200 + 1000) / M,
                "cost_cached": 0.0,
                "cost_output": 2 / M,
                "cost_reasoning": 0.0,
                "cost_total": 1202 / M,
            },
        ),
        # missing usage: null, never a guess; half-missing: the known part, total null
        ("flat", {}, dict.fromkeys(["cost_input", "cost_cached", "cost_output", "cost_reasoning", "cost_total"])),
        (
            "flat",
            {"prompt_tokens": 1000, "completion_tokens": None},
            {
                "cost_input": 1000 / M,
                "cost_cached": 0.0,
                "cost_output": None,
                "cost_reasoning": None,
                "cost_total": None,
            },
        ),
        # an unknown model has no price
        (
            "nope",
            {"prompt_tokens": 10, "completion_tokens": 10},
            dict.fromkeys(["cost_input", "cost_cached", "cost_output", "cost_reasoning", "cost_total"]),
        ),
    ],
)
def test_cost_table(model, usage, expected) -> None:
    got = PRICING.cost(model, usage)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k] == (None if v is None else pytest.approx(v, rel=1e-12, abs=1e-15)), k


def test_shipped_price_table_matches_the_published_figures() -> None:
    p = load_pricing(None, Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    assert p is not None and p.currency == "USD"
    lite = p.cost("gemini-2.5-flash-lite", {"prompt_tokens": M, "completion_tokens": M, "cached_tokens": 0})
    assert lite["cost_input"] == pytest.approx(0.081) and lite["cost_output"] == pytest.approx(0.321)
    pro = p.cost("gemini-3-pro-preview", {"prompt_tokens": 200_000, "cached_tokens": 100_000, "completion_tokens": 0})
    assert pro["cost_input"] == pytest.approx(0.16) and pro["cost_cached"] == pytest.approx(0.016)
    big = p.cost("gemini-3-pro-preview", {"prompt_tokens": 300_000, "completion_tokens": 1000})
    assert big["cost_input"] == pytest.approx(0.96) and big["cost_output"] == pytest.approx(0.0144)


def _usage(prompt: int, completion: int, reasoning: int = 0, cached: int = 0) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def _priced_config(tmp_path: Path, dataset: Path, url: str, **extra) -> Path:
    cfg = base_config(tmp_path, dataset, url, **extra)
    cfg["models"] = ["m"]
    cfg["prices"] = {"models": {"m": {"input": 1.0, "output": 10.0, "cached_input": 0.25}}}
    return write_config(tmp_path, cfg)


def test_cost_columns_in_the_report_and_evalrun_cost(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted(default=lambda p: Reply(json=completion(usage=_usage(1000, 300, reasoning=200, cached=600))))
    r = cli("run", _priced_config(tmp_path, dataset, srv.base_url), "--no-progress")
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    row = df.iloc[0]
    assert row.cost_input == pytest.approx(400 / M) and row.cost_cached == pytest.approx(150 / M)
    assert row.cost_output == pytest.approx(1000 / M) and row.cost_reasoning == pytest.approx(2000 / M)
    assert row.cost_total == pytest.approx(3550 / M)
    out = cli("cost", r.run_dir, "--format", "json")
    assert out.code == 0, out.err
    total = orjson.loads(out.out)[-1]
    assert total["requests"] == 5 and total["cost_total"] == pytest.approx(5 * 3550 / M)
    assert total["reasoning_share"] == pytest.approx(200 / 300)
    # other prices for the same run, no requests: output twice as dear
    prices = tmp_path / "other.yaml"
    prices.write_text(yaml.safe_dump({"models": {"m": {"input": 1.0, "output": 20.0, "cached_input": 0.25}}}))
    sent = len(srv.requests)
    again = orjson.loads(cli("cost", r.run_dir, "--prices", prices, "--format", "json").out)[-1]
    assert again["cost_total"] == pytest.approx(5 * (400 + 150 + 2000 + 4000) / M)
    assert len(srv.requests) == sent
    summary = pd.read_parquet(r.run_dir / "summary.parquet")
    assert summary.cost_total.iloc[0] == pytest.approx(5 * 3550 / M)


def test_failed_but_billed_requests_are_costed(tmp_path, dataset, scripted, cli) -> None:
    """A 200 whose body is an error but which reports usage was billed: the error row says
    what it cost (retries of it too: only the last attempt's usage is known)."""
    billed = {"error": {"message": "content filtered", "type": "upstream_error"}, "usage": _usage(1000, 50)}
    srv = scripted(default=lambda p: Reply(json=billed))
    r = cli("run", _priced_config(tmp_path, dataset, srv.base_url), "--no-progress", "--limit", "1")
    row = read_results(r.run_dir).iloc[0]
    assert row.status == "error" and row.error_type == "error_in_200"
    assert row.prompt_tokens == 1000 and row.completion_tokens == 50
    assert row.cost_total == pytest.approx((1000 * 1.0 + 50 * 10.0) / M)


def test_max_cost_stops_before_the_budget_and_resumes(tmp_path, scripted, cli) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(b"".join(orjson.dumps({"id": f"r{i}", "question": "1 + 1"}) + b"\n" for i in range(20)))
    srv = scripted(default=lambda p: Reply(json=completion(usage=_usage(10, 100))))
    cfg = _priced_config(tmp_path, rows, srv.base_url)
    # each request: worst case ≈ (prompt estimate + 256 output) → ≈ 0.0026; real cost 0.00101
    r = cli("run", cfg, "--no-progress", "--max-cost", "0.01", "--run-dir", tmp_path / "run")
    assert r.code == 1 and "--max-cost 0.01" in r.err and "--resume" in r.err
    df = read_results(tmp_path / "run")
    assert df.cost_total.sum() <= 0.01
    assert 3 <= len(df) < 20
    r = cli("run", "--resume", tmp_path / "run", "--no-progress", "--max-cost", "1")
    assert r.code == 0, r.err
    assert len(read_results(tmp_path / "run")) == 20


def test_max_cost_needs_prices_for_every_model(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted()
    cfg = base_config(tmp_path, dataset, srv.base_url)
    cfg["models"] = ["unpriced-model"]
    cfg["budget"] = {"max_cost": 1.0}
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 2 and "needs a price for every model" in r.err and "unpriced-model" in r.err
    assert srv.requests == []


def test_plan_estimates_cost(tmp_path, dataset, cli) -> None:
    cfg = base_config(tmp_path, dataset)
    cfg["models"] = ["m"]
    cfg["providers"]["sim"]["extra_models"] = ["m"]  # a name of its own on the simulator
    cfg["params"] = {"max_tokens": 100}
    cfg["prices"] = {"models": {"m": {"input": 1.0, "output": 10.0}}}
    report = orjson.loads(cli("plan", write_config(tmp_path, cfg), "--json").out)
    per_req_in = report["est_input_tokens"] / 5
    assert report["cost_worst_case"] == pytest.approx(5 * (per_req_in * 1.0 + 100 * 10.0) / M, rel=0.01)
    assert report["cost_expected"] == pytest.approx(5 * (per_req_in * 1.0 + 25 * 10.0) / M, rel=0.01)
    assert report["currency"] == "USD"
