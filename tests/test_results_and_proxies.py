"""pandas reads token and status columns as integers (nullable where an error row has none);
requests honour HTTPS_PROXY/HTTP_PROXY/NO_PROXY, and loopback never goes through a proxy."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import Reply, base_config, completion, write_config

from evalrun.analysis.results import read_results
from evalrun.config.proxy import proxy_for


def test_token_and_status_columns_stay_integers_with_an_error_row(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted(
        default=lambda p: Reply(status=400, json={"error": {"message": "no"}}) if "1 + 2" in str(p) else Reply()
    )
    cfg = base_config(tmp_path, dataset, srv.base_url, scorers=[{"type": "numeric"}])
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 0, r.err
    plain = pd.read_parquet(r.run_dir / "results.parquet")
    assert plain.prompt_tokens.dtype == "float64"  # what pandas does by itself: the reason for the loader
    df = read_results(r.run_dir)
    for col in ("prompt_tokens", "completion_tokens", "http_status", "attempts", "max_tokens", "repeat"):
        assert df[col].dtype == "Int64", col
    err = df[df.status == "error"].iloc[0]
    assert err.http_status == 400 and err.prompt_tokens is pd.NA
    assert df[df.status == "ok"].prompt_tokens.tolist() == [13] * 4
    assert df.pass_numeric.dtype == "boolean" and df.temperature.dtype == "float64"
    assert read_results(r.run_dir / "results.parquet", columns=["row_id", "total_tokens"]).total_tokens.dtype == "Int64"


@pytest.mark.parametrize(
    "env, url, proxy",
    [
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.evolink.ai/v1", "http://proxy:3128"),
        ({"https_proxy": "http://proxy:3128"}, "https://api.evolink.ai/v1", "http://proxy:3128"),
        ({"HTTP_PROXY": "http://proxy:3128"}, "https://api.evolink.ai/v1", None),  # http only
        ({"ALL_PROXY": "http://proxy:3128"}, "https://api.evolink.ai/v1", "http://proxy:3128"),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "evolink.ai"}, "https://api.evolink.ai/v1", None),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, "https://api.evolink.ai/v1", None),
        ({"HTTP_PROXY": "http://proxy:3128", "ALL_PROXY": "http://proxy:3128"}, "http://127.0.0.1:8089/v1", None),
        ({"HTTP_PROXY": "http://proxy:3128"}, "http://localhost:8089/v1", None),
        ({"HTTP_PROXY": "http://proxy:3128"}, "http://[::1]:8089/v1", None),
        ({}, "https://api.evolink.ai/v1", None),
    ],
)
def test_proxy_for(monkeypatch, env, url, proxy) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert proxy_for(url) == proxy


def test_requests_go_through_the_proxy_the_environment_names(tmp_path, dataset, scripted, cli, monkeypatch) -> None:
    # the "proxy" is a loopback server that answers whatever it is asked: a forward proxy
    # receives the full target URL, so the target host is never resolved or contacted
    proxy = scripted(default=lambda p: Reply(json=completion("3")))
    monkeypatch.setenv("HTTP_PROXY", proxy.base_url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    cfg = base_config(tmp_path, dataset, "http://api.example.test/v1")
    cfg["providers"]["sim"]["allow_insecure_http"] = True
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 0, r.err
    assert len(proxy.requests) == 5 and {h["Host"] for h in proxy.headers} == {"api.example.test"}
    # the simulator (loopback) never goes through it, whatever the environment says
    r = cli("run", write_config(tmp_path, base_config(tmp_path, dataset), "sim.yaml"), "--no-progress")
    assert r.code == 0 and len(proxy.requests) == 5, r.err
