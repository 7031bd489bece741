"""Model names are checked against what a named provider serves: a misspelt name is a usage
error before anything is sent; `evalrun models` asks the server itself."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import base_config, read_results, serve_loopback, write_config

from evalrun.sim import SimOptions, start_simulator

ROOT = Path(__file__).resolve().parent.parent
FLASH, PRO3 = "gemini-2.5-flash-lite", "gemini-3-pro-preview"
KEY = "sk-listing-0123456789abcdef"


def _config(tmp_path: Path, dataset: Path, models: list[Any], **provider: Any) -> Path:
    cfg = base_config(tmp_path, dataset)
    cfg["models"] = models
    cfg["providers"]["sim"].update(provider)
    return write_config(tmp_path, cfg)


def test_a_misspelt_model_is_refused_with_did_you_mean_before_anything_is_sent(tmp_path, dataset, cli) -> None:
    config = _config(tmp_path, dataset, [FLASH, "gemini-3-pro"])
    for cmd in ("validate", "plan", "run"):
        r = cli(cmd, config)
        assert r.code == 2 and r.err.count("\n") == 1, (cmd, r.err)
        assert re.search(
            r"exp\.yaml:\d+: models\[1\]: 'gemini-3-pro' is not a model of provider 'sim' — did you mean "
            r"'gemini-3-pro-preview'\? The embedded simulator serves .*gemini-2\.5-flash-lite; a model it does not "
            r"list yet goes in providers\.sim\.extra_models",
            r.err,
        ), r.err
    assert not (tmp_path / "reports").exists()  # no run was started


def test_the_evolink_preset_knows_its_models_without_a_key(tmp_path, dataset, cli, monkeypatch) -> None:
    monkeypatch.delenv("EVOLINK_API_KEY", raising=False)
    cfg = base_config(tmp_path, dataset, provider="evolink", providers={})
    cfg["models"] = [{"name": "gemini-3.1-pro"}]
    r = cli("validate", write_config(tmp_path, cfg))
    assert r.code == 2 and re.search(
        r"exp\.yaml:\d+: models\[0\]\.name: 'gemini-3.1-pro' is not a model of provider 'evolink' — did you mean "
        r"'gemini-3.1-pro-preview'\? The evolink preset serves",
        r.err,
    ), r.err
    # a model the preset does not list yet: named on the provider, it validates
    cfg["providers"] = {"evolink": {"extra_models": ["gemini-3.1-pro"]}}
    assert cli("validate", write_config(tmp_path, cfg)).code == 0
    # a generic provider (its own base_urls, no preset) serves what its server says: unchecked
    cfg["providers"] = {"gateway": {"base_urls": ["https://gateway.example/v1"]}}
    cfg["provider"] = "gateway"
    assert cli("validate", write_config(tmp_path, cfg)).code == 0


def test_a_judge_model_is_checked_too(tmp_path, dataset, cli) -> None:
    cfg = base_config(tmp_path, dataset)
    cfg["scorers"] = [{"name": "j", "type": "label_model", "model": "gemini-3.1-pro", "rubric": "be kind"}]
    r = cli("validate", write_config(tmp_path, cfg))
    assert r.code == 2 and re.search(r"exp\.yaml:\d+: scorers\[0\]\.model: 'gemini-3.1-pro' is not a model", r.err)


def test_a_retired_model_is_a_warning_on_a_real_endpoint_only(tmp_path, dataset, cli, monkeypatch) -> None:
    on_sim = cli("validate", _config(tmp_path, dataset, [PRO3]))
    assert on_sim.code == 0 and on_sim.err == ""  # the simulator simulates it as documented
    cfg = base_config(tmp_path, dataset, provider="evolink", providers={})
    cfg["models"] = [PRO3, FLASH]
    config = write_config(tmp_path, cfg)
    r = cli("validate", config)
    assert r.code == 0 and r.err.count("evalrun: warning:") == 1, r.err
    assert "'gemini-3-pro-preview' (provider 'evolink') was retired by Google on 2026-03-09" in r.err
    assert "Use 'gemini-3.1-pro-preview'" in r.err
    plan = cli("plan", config)
    assert plan.code == 0 and "was retired by Google on 2026-03-09" in plan.out


def test_extra_models_reach_the_embedded_simulator_and_strict_models_false_answers_any(tmp_path, dataset, cli) -> None:
    r = cli("run", _config(tmp_path, dataset, [FLASH, "my-finetune"], extra_models=["my-finetune"]), "--no-progress")
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    assert (df.status == "ok").all() and set(df.model) == {FLASH, "my-finetune"}
    lenient = _config(tmp_path, dataset, ["anything-at-all"], simulator={"latency_scale": 0, "strict_models": False})
    r = cli("run", lenient, "--no-progress")
    assert r.code == 0 and (read_results(r.run_dir).status == "ok").all(), r.err


def test_a_generic_provider_is_not_checked_and_the_simulator_answers_404_model_not_found(
    tmp_path, dataset, cli, loop_thread
) -> None:
    sim = loop_thread.call(start_simulator(SimOptions(latency_scale=0)))
    try:
        cfg = base_config(tmp_path, dataset, sim.base_url)
        cfg["models"] = [FLASH, "gemini-3-pro"]
        r = cli("run", write_config(tmp_path, cfg), "--no-progress")
        df = read_results(r.run_dir)
        bad = df[df.model == "gemini-3-pro"]
        assert (df[df.model == FLASH].status == "ok").all() and len(bad) == 5
        assert set(bad.http_status) == {404} and set(bad.error_type) == {"not_found"}
        assert sim.stats.by_model["gemini-3-pro"] <= 4  # that model stopped at its 404s in flight
    finally:
        loop_thread.call(sim.close())


# ---- evalrun models ------------------------------------------------------------------------------


def test_models_lists_what_the_server_says_with_the_providers_key(tmp_path, dataset, cli, loop_thread, monkeypatch):
    sim = loop_thread.call(start_simulator(SimOptions(require_api_key=KEY, extra_models=("gemini-4-ultra",))))
    try:
        cfg = base_config(tmp_path, dataset, sim.base_url)
        cfg["providers"] = {"evolink": {"preset": "evolink", "base_urls": [sim.base_url], "api_key_env": "MY_KEY"}}
        cfg["provider"] = "evolink"
        config = write_config(tmp_path, cfg)
        monkeypatch.setenv("MY_KEY", KEY)
        r = cli("models", "evolink", "--config", config)
        assert r.code == 0, r.err
        assert r.out.split() == [PRO3, "gemini-3.1-pro-preview", FLASH, "gemini-4-ultra"]
        assert f"4 models listed by {sim.base_url}/models" in r.err
        assert "not in evalrun's list for this provider: gemini-4-ultra" in r.err
        assert "providers.evolink.extra_models" in r.err
        monkeypatch.setenv("MY_KEY", "sk-wrong-0123456789")
        r = cli("models", "evolink", "--config", config)
        assert r.code == 1 and "refused the request (the key from MY_KEY)" in r.err and "HTTP 401" in r.err
        assert "sk-wrong" not in r.err + r.out
        monkeypatch.delenv("MY_KEY")
        r = cli("models", "evolink", "--config", config)
        assert r.code == 2 and "providers.evolink.api_key_env: the environment variable MY_KEY is not set" in r.err
    finally:
        loop_thread.call(sim.close())


def test_models_says_when_the_server_has_no_list(tmp_path, dataset, cli, loop_thread) -> None:
    async def chat_only(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "no route"}}, status=404)

    url, runner = loop_thread.call(serve_loopback(chat_only))
    try:
        config = write_config(tmp_path, base_config(tmp_path, dataset, url))
        r = cli("models", "sim", "--config", config)
        assert r.code == 1 and r.out == ""
        assert f"provider 'sim' has no model list: GET {url}/models answered 404" in r.err
    finally:
        loop_thread.call(runner.cleanup())


def test_models_of_a_preset_and_of_an_unknown_name(cli) -> None:
    r = cli("models", "simulator")
    assert r.code == 0 and set(r.out.split()) == {PRO3, "gemini-3.1-pro-preview", FLASH}
    r = cli("models", "evolnk")
    assert r.code == 2 and "provider 'evolnk' is not a preset (evolink, simulator) — did you mean 'evolink'?" in r.err


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if p.name != "prices.yaml"))
def test_every_shipped_config_validates(config, cli) -> None:
    r = cli("validate", ROOT / "configs" / config)
    assert r.code == 0, r.err
