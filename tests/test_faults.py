"""Every fault of the provider's error table, through `evalrun run` against a scripted
OpenAI-compatible server on 127.0.0.1. Each test asserts what the server received and what
the report holds: exactly one row per request, errors typed, nothing sent after a stop."""

from __future__ import annotations

import email.utils
import socket
import time
from pathlib import Path

import orjson
import pytest
from conftest import Reply, base_config, completion, read_results, write_config


def _config(tmp_path: Path, dataset: Path, url: str, **provider: object) -> Path:
    cfg = base_config(tmp_path, dataset, url)
    cfg["providers"]["sim"].update(provider)
    return write_config(tmp_path, cfg)


def test_429_then_success_is_retried_once(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted(
        [Reply(429, headers={"Retry-After": "0"}, json={"error": {"message": "slow down", "type": "rate_limit_error"}})]
    )
    r = cli("run", _config(tmp_path, dataset, srv.base_url, max_concurrency=1), "--no-progress")
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    assert len(df) == 5 and set(df.status) == {"ok"}
    assert len(srv.requests) == 6  # 5 requests + 1 retry
    retried = df[df.attempts == 2]
    assert len(retried) == 1 and list(retried.retry_types.iloc[0]) == ["rate_limit"]
    assert "retries by type: rate_limit 1" in r.err


@pytest.mark.real_waits
def test_retry_after_seconds_is_honoured(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted([Reply(429, headers={"Retry-After": "1"})])
    r = cli("run", _config(tmp_path, dataset, srv.base_url, max_concurrency=1), "--no-progress", "--limit", "1")
    assert r.code == 0, r.err
    assert len(srv.times) == 2
    assert srv.times[1] - srv.times[0] >= 0.95


@pytest.mark.real_waits
def test_retry_after_http_date_is_honoured(tmp_path, dataset, scripted, cli) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # 1–2 s away (whole seconds)
    srv = scripted([Reply(429, headers={"Retry-After": when})])
    r = cli("run", _config(tmp_path, dataset, srv.base_url, max_concurrency=1), "--no-progress", "--limit", "1")
    assert r.code == 0, r.err
    assert 0.9 <= srv.times[1] - srv.times[0] <= 3.0


def test_400_and_413_fail_without_retry_and_keep_the_server_message(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted(
        [
            Reply(400, json={"error": {"message": "temperature is weird", "type": "invalid_request_error"}}),
            Reply(413, json={"error": {"message": "too large", "type": "invalid_request_error"}}),
        ]
    )
    r = cli("run", _config(tmp_path, dataset, srv.base_url, max_concurrency=1), "--no-progress")
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    errors = df[df.status == "error"].sort_values("http_status")
    assert list(errors.http_status) == [400, 413]
    assert list(errors.error_type) == ["invalid_request", "request_too_large"]
    assert "temperature is weird" in errors.error_message.iloc[0]
    assert list(errors.attempts) == [1, 1]
    assert len(srv.requests) == 5
    assert "errors by type: invalid_request 1, request_too_large 1" in r.err


def test_5xx_switches_to_the_next_base_url(tmp_path, dataset, scripted, cli) -> None:
    bad = scripted(default=lambda p: Reply(503, json={"error": {"message": "down", "type": "service_unavailable"}}))
    good = scripted()
    r = cli(
        "run",
        _config(
            tmp_path,
            dataset,
            bad.base_url,
            base_urls=[bad.base_url, good.base_url],
            max_concurrency=1,
            fallback_after=2,
        ),
        "--no-progress",
    )
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    assert set(df.status) == {"ok"} and len(df) == 5
    assert set(df.base_url) == {good.base_url}
    assert len(bad.requests) == 2  # two failures, then the fallback is sticky
    assert "switching to" in r.err


def test_connection_refused_falls_back(tmp_path, dataset, scripted, cli) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # bound, not listening: refused
        good = scripted()
        r = cli(
            "run",
            _config(tmp_path, dataset, dead, base_urls=[dead, good.base_url], max_concurrency=1, fallback_after=1),
            "--no-progress",
        )
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    assert set(df.status) == {"ok"}
    first = df.sort_values("started_at").iloc[0]
    assert first.attempts == 2 and list(first.retry_types) == ["connection_error"]


def test_hang_times_out_and_retries(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted([Reply(hang=True)])
    r = cli("run", _config(tmp_path, dataset, srv.base_url, timeout_s=0.5, max_concurrency=1), "--no-progress")
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    assert set(df.status) == {"ok"}
    assert sorted(df.attempts)[-1] == 2
    assert "timeout" in [t for ts in df.retry_types.dropna() for t in ts]


def test_malformed_and_error_in_200_are_typed_and_retried_at_most_three_times(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted(default=lambda p: Reply(body=b'{"id": "x", "choices": [{"ind'))
    r = cli("run", _config(tmp_path, dataset, srv.base_url), "--no-progress", "--limit", "2")
    df = read_results(r.run_dir)
    assert list(df.error_type) == ["malformed_response"] * 2
    assert list(df.attempts) == [3, 3]
    srv2 = scripted([Reply(json={"error": {"message": "upstream overloaded", "type": "upstream_error"}})])
    r = cli("run", _config(tmp_path, dataset, srv2.base_url, max_concurrency=1), "--no-progress", "--limit", "1")
    df = read_results(r.run_dir)
    assert df.status.iloc[0] == "ok" and list(df.retry_types.iloc[0]) == ["error_in_200"]


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {},
        {"prompt_tokens": None, "completion_tokens": 3},
        {"input_tokens": 7, "output_tokens": 2},
        {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "total_tokens": 7,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
    ],
)
def test_missing_or_null_usage_is_a_success_with_nulls(tmp_path, dataset, scripted, cli, usage) -> None:
    body = completion(usage=usage)
    if usage is None:
        del body["usage"]
    srv = scripted(default=lambda p: Reply(json=body))
    r = cli("run", _config(tmp_path, dataset, srv.base_url), "--no-progress", "--limit", "1")
    assert r.code == 0, r.err
    row = read_results(r.run_dir).iloc[0]
    assert row.status == "ok"
    if usage and usage.get("input_tokens"):
        assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (7, 2, 9)
    if not usage:
        assr = row[["prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"]]
        assert assr.isna().all()


def test_401_stops_the_run_and_names_the_env_var(tmp_path, dataset, scripted, cli, monkeypatch) -> None:
    monkeypatch.setenv("TEST_EVAL_KEY", "sk-test-not-real-1234")
    srv = scripted(
        default=lambda p: Reply(401, json={"error": {"message": "invalid api key", "type": "authentication_error"}})
    )
    cfg = _config(tmp_path, dataset, srv.base_url, api_key_env="TEST_EVAL_KEY", max_concurrency=1)
    r = cli("run", cfg, "--no-progress")
    assert r.code == 1
    assert len(srv.requests) == 1  # the rest of the grid is not sent
    assert "TEST_EVAL_KEY" in r.err and "resume" in r.err
    df = read_results(r.run_dir)
    assert list(df.error_type) == ["authentication"]


def test_quota_exhausted_stops_cleanly_and_resume_finishes(tmp_path, dataset, scripted, cli) -> None:
    quota = {"error": {"code": "insufficient_quota", "type": "insufficient_quota", "message": "credits exhausted"}}
    state = {"left": 2}

    def answer(payload: dict) -> Reply:
        if state["left"] > 0:
            state["left"] -= 1
            return Reply()
        return Reply(429, json=quota)

    srv = scripted(default=answer)
    cfg = _config(tmp_path, dataset, srv.base_url, max_concurrency=1)
    r = cli("run", cfg, "--no-progress")
    assert r.code == 1
    assert "credits exhausted" in r.err
    assert len(srv.requests) == 3  # 2 ok, 1 quota error, then nothing more
    manifest = orjson.loads((r.run_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "stopped" and manifest["counts"]["missing"] == 2
    state["left"] = 100  # credits topped up
    r2 = cli("run", "--resume", r.run_dir, "--no-progress")
    assert r2.code == 0, r2.err
    df = read_results(r.run_dir)
    assert len(df) == 5 and df.request_id.is_unique and set(df.status) == {"ok"}
    assert len(srv.requests) == 6  # the quota-failed one and the two unsent ones; nothing twice


def test_404_model_fails_its_cells_without_more_requests(tmp_path, dataset, scripted, cli) -> None:
    def answer(payload: dict) -> Reply:
        if payload["model"] == "no-such-model":
            return Reply(404, json={"error": {"message": "model not found", "type": "not_found_error"}})
        return Reply()

    srv = scripted(default=answer)
    cfg = base_config(tmp_path, dataset, srv.base_url)
    cfg["providers"]["sim"]["max_concurrency"] = 1
    cfg["models"] = ["no-such-model", "gemini-2.5-flash-lite"]
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    assert len(df) == 10
    bad = df[df.model == "no-such-model"]
    assert set(bad.error_type) == {"not_found"} and len(bad) == 5
    assert sum(p["model"] == "no-such-model" for p in srv.requests) == 1
    assert set(df[df.model != "no-such-model"].status) == {"ok"}


def test_the_key_never_reaches_a_file_the_run_writes(tmp_path, dataset, scripted, cli, monkeypatch) -> None:
    key = "sk-test-SECRET-4242-never-log"
    monkeypatch.setenv("TEST_EVAL_KEY", key)

    def echo(payload: dict) -> Reply:  # a hostile server echoes what it got, key included
        return Reply(400, json={"error": {"message": f"bad request; you sent Bearer {key} ({key})"}})

    srv = scripted(default=echo)
    r = cli("-vv", "run", _config(tmp_path, dataset, srv.base_url, api_key_env="TEST_EVAL_KEY"), "--no-progress")
    assert r.code == 1 and "every request ended in error" in r.err
    assert srv.headers[0]["Authorization"] == f"Bearer {key}"  # it was sent…
    assert key not in r.out and key not in r.err  # …and is nowhere else
    files = [p for p in r.run_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"results.parquet", "manifest.json", "journal.jsonl", "summary.parquet"}
    for p in files:
        assert key.encode() not in p.read_bytes(), p
    assert "***" in read_results(r.run_dir).error_message.iloc[0]


def test_a_recording_failure_stops_the_run_instead_of_hanging(tmp_path, dataset, cli, monkeypatch) -> None:
    import evalrun.run.recorder as runner

    real, calls = runner.result_rows, {"n": 0}

    def failing(*args, **kwargs):  # the disk fills up on the third result
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "result_rows", failing)
    cfg = base_config(tmp_path, dataset)
    cfg["providers"]["sim"]["max_concurrency"] = 1
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 1
    assert "No space left on device" in r.err and "--resume" in r.err


@pytest.mark.real_waits
def test_one_provider_stopping_does_not_cut_another_providers_backoff(tmp_path, dataset, scripted, cli) -> None:
    bad_key = scripted(
        default=lambda p: Reply(401, json={"error": {"message": "bad key", "type": "authentication_error"}})
    )
    flaky = scripted([Reply(delay=0.2, status=500)])  # its first answer fails after provider a has stopped
    cfg = base_config(tmp_path, dataset, bad_key.base_url)
    cfg["providers"] = {
        "a": {"base_urls": [bad_key.base_url], "max_concurrency": 1},
        "b": {"base_urls": [flaky.base_url], "max_concurrency": 1},
    }
    cfg["provider"] = "a"
    cfg["models"] = ["m-a", {"name": "m-b", "provider": "b"}]
    cfg["retry"] = {"max_attempts": 3, "backoff_initial_s": 0.6, "backoff_max_s": 0.6}
    r = cli("run", write_config(tmp_path, cfg), "--no-progress", "--limit", "1")
    assert r.code == 1 and "'a' rejected" in r.err
    assert len(bad_key.requests) == 1
    assert len(flaky.requests) == 2
    assert flaky.times[1] - flaky.times[0] >= 0.2 + 0.3 * 0.99  # 0.2 s answer + backoff ≥ 0.6 × 0.5


def test_stale_failures_from_a_dead_url_do_not_push_the_healthy_one_aside(tmp_path, dataset, scripted, cli) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # bound, not listening: refused
        healthy1, healthy2 = scripted(), scripted()
        urls = [dead, healthy1.base_url, healthy2.base_url]
        # four requests fail on the dead URL at once; the first failure moves on to healthy1, and
        # the three late ones are the dead URL's, not healthy1's
        r = cli(
            "run",
            _config(tmp_path, dataset, dead, base_urls=urls, max_concurrency=4, fallback_after=1),
            "--no-progress",
        )
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    assert set(df.status) == {"ok"} and len(df) == 5
    assert len(healthy1.requests) == 5 and len(healthy2.requests) == 0
    assert set(df.base_url) == {healthy1.base_url}


def test_each_row_records_the_url_its_answer_or_last_failure_came_from(tmp_path, dataset, scripted, cli) -> None:
    down = scripted(default=lambda p: Reply(500, json={"error": {"message": "down", "type": "upstream_error"}}))
    up = scripted()
    cfg = base_config(tmp_path, dataset, down.base_url)
    cfg["providers"]["sim"].update(base_urls=[down.base_url, up.base_url], max_concurrency=1, fallback_after=2)
    cfg["retry"] = {"max_attempts": 1}
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    df = read_results(r.run_dir).sort_values("started_at")
    # the second failure is the one that switches URLs: its row still names the URL it failed on
    assert list(df.status) == ["error", "error", "ok", "ok", "ok"]
    assert list(df.base_url) == [down.base_url] * 2 + [up.base_url] * 3
    assert len(down.requests) == 2 and len(up.requests) == 3


def test_a_rejected_key_is_reported_once(tmp_path, dataset, scripted, cli, monkeypatch) -> None:
    monkeypatch.setenv("TEST_EVAL_KEY", "sk-test-not-real-5678")
    srv = scripted(
        default=lambda p: Reply(
            401, delay=0.1, json={"error": {"message": "invalid api key", "type": "authentication_error"}}
        )
    )
    r = cli(
        "run", _config(tmp_path, dataset, srv.base_url, api_key_env="TEST_EVAL_KEY", max_concurrency=4), "--no-progress"
    )
    assert r.code == 1
    assert len(srv.requests) == 4  # the four on the wire when the first 401 came back
    assert r.err.count("rejected the key in $TEST_EVAL_KEY") == 1


def test_every_retry_is_logged_at_v_with_type_attempt_wait_and_url_never_the_key(
    tmp_path, dataset, scripted, cli, monkeypatch
) -> None:
    key = "sk-test-SECRET-retry-log-99"
    monkeypatch.setenv("TEST_EVAL_KEY", key)
    srv = scripted([Reply(500), Reply(429, headers={"Retry-After": "0"})])
    cfg = _config(tmp_path, dataset, srv.base_url, api_key_env="TEST_EVAL_KEY", max_concurrency=1)
    r = cli("-v", "run", cfg, "--no-progress", "--limit", "1")
    assert r.code == 0, r.err
    lines = [ln for ln in r.err.splitlines() if "retry: request" in ln]
    assert len(lines) == 2
    assert "server_error on attempt 1/4" in lines[0] and "rate_limit on attempt 2/4" in lines[1]
    assert all(srv.base_url in ln and "next attempt in" in ln for ln in lines)
    assert key not in r.err
    quiet = cli("run", cfg, "--no-progress", "--limit", "1")
    assert "retry: request" not in quiet.err  # not without -v


def test_resume_of_a_completed_run_says_there_is_nothing_to_resume(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted()
    r = cli("run", _config(tmp_path, dataset, srv.base_url), "--no-progress")
    assert r.code == 0, r.err
    again = cli("run", "--resume", r.run_dir, "--no-progress")
    assert again.code == 0, again.err
    assert "nothing to resume" in again.err
    assert len(srv.requests) == 5
