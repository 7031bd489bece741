"""The retry policy on tenacity (`Attempts._policy`), through `evalrun run` against a scripted
server on 127.0.0.1: each test would fail if one piece of the policy were wired wrong — the wait
read from another failure than the current one, the deadline or the run's stop not asked, the
before_sleep line logged at a stop, attempts miscounted, the slot of an immediate retry let go."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Reply, base_config, read_results, write_config


def _config(tmp_path: Path, dataset: Path, url: str, retry: dict[str, Any], **provider: object) -> Path:
    cfg = base_config(tmp_path, dataset, url)
    cfg["providers"]["sim"].update(provider)
    cfg["retry"] = retry
    return write_config(tmp_path, cfg)


def _question(payload: dict[str, Any]) -> str:
    return str(payload["messages"][-1]["content"])


@pytest.mark.real_waits
def test_each_retry_waits_what_its_own_failure_asked(tmp_path, dataset, scripted, cli) -> None:
    # a backoff of 3 s (2.25 s at the least) would be told from every Retry-After asked here
    srv = scripted(
        [
            Reply(503, headers={"Retry-After": "0.2"}),
            Reply(500, headers={"retry-after-ms": "900"}),
            Reply(503, headers={"Retry-After": "0.4"}),
        ]
    )
    retry = {"max_attempts": 5, "backoff_initial_s": 3, "backoff_max_s": 3}
    cfg = _config(tmp_path, dataset, srv.base_url, retry, max_concurrency=1)
    r = cli("run", cfg, "--no-progress", "--limit", "1")
    assert r.code == 0, r.err
    gaps = [b - a for a, b in itertools.pairwise(srv.times)]
    assert len(gaps) == 3
    for gap, asked in zip(gaps, [0.2, 0.9, 0.4]):
        assert asked - 0.02 <= gap < 2.0, (gaps, asked)  # each its own Retry-After, none the backoff
    row = read_results(r.run_dir).iloc[0]
    assert row.status == "ok" and row.attempts == 4 and list(row.retry_types) == ["server_error"] * 3


@pytest.mark.real_waits
def test_the_request_deadline_stops_retrying_before_a_wait_that_would_pass_it(tmp_path, dataset, scripted, cli) -> None:
    # t ≈ 0, 0.5, 1.0 fail; a 4th attempt would start after 1.5 s, past max_total_s = 1.5
    srv = scripted(default=lambda p: Reply(503, headers={"Retry-After": "0.5"}))
    retry = {"max_attempts": 10, "max_total_s": 1.5, "backoff_initial_s": 3, "backoff_max_s": 3}
    cfg = _config(tmp_path, dataset, srv.base_url, retry, max_concurrency=1)
    t0 = time.monotonic()
    r = cli("run", cfg, "--no-progress", "--limit", "1")
    assert r.code == 1 and "every request ended in error" in r.err
    assert len(srv.requests) == 3
    assert time.monotonic() - t0 < 1.5 + 5.0  # start-up and the end, but no 4th wait
    row = read_results(r.run_dir).iloc[0]
    assert row.status == "error" and row.error_type == "server_error" and row.http_status == 503
    assert row.attempts == 3 and list(row.retry_types) == ["server_error"] * 2


@pytest.mark.real_waits
def test_a_stop_during_a_retry_wait_ends_the_request_with_no_row_and_resume_sends_it(
    tmp_path, dataset, scripted, cli
) -> None:
    healed = False

    def answer(p: dict[str, Any]) -> Reply:
        if healed:
            return Reply()
        if "1 + 2" in _question(p):  # q1: asked to wait 30 s
            return Reply(503, headers={"Retry-After": "30"})
        return Reply(401, delay=0.5, json={"error": {"message": "bad key", "type": "authentication_error"}})

    srv = scripted(default=answer)
    cfg = _config(tmp_path, dataset, srv.base_url, {"max_attempts": 4}, max_concurrency=2)
    t0 = time.monotonic()
    r = cli("run", cfg, "--no-progress", "--limit", "2")
    assert r.code == 1 and "rejected" in r.err
    assert time.monotonic() - t0 < 15.0  # the 30 s wait was cut short by the provider's stop
    df = read_results(r.run_dir)
    assert list(df.error_type) == ["authentication"]  # q1 was interrupted while waiting: no row
    assert sorted("1 + 2" in _question(p) for p in srv.requests) == [False, True]  # q1 sent once
    healed = True
    again = cli("run", "--resume", r.run_dir, "--no-progress")
    assert again.code == 0, again.err
    df = read_results(r.run_dir)  # the resume sends q1 again (and q2, stopped by the provider's stop)
    assert len(df) == 2 and df.request_id.is_unique and list(df.status) == ["ok", "ok"]
    assert list(df.attempts) == [1, 1] and sum("1 + 2" in _question(p) for p in srv.requests) == 2


def test_a_failure_that_comes_back_after_the_provider_stopped_is_not_retried_nor_logged(
    tmp_path, dataset, scripted, cli
) -> None:
    def answer(p: dict[str, Any]) -> Reply:
        if "1 + 2" in _question(p):  # q1's 503 comes back after q2's 401 stopped the provider
            return Reply(503, delay=0.6, headers={"Retry-After": "1"})
        return Reply(401, delay=0.1, json={"error": {"message": "bad key", "type": "authentication_error"}})

    srv = scripted(default=answer)
    cfg = _config(tmp_path, dataset, srv.base_url, {"max_attempts": 4}, max_concurrency=2)
    r = cli("-v", "run", cfg, "--no-progress", "--limit", "2")
    assert r.code == 1
    assert len(srv.requests) == 2
    assert "retry: request" not in r.err  # no "next attempt in 1.00 s" for an attempt that never comes
    assert list(read_results(r.run_dir).error_type) == ["authentication"]


@pytest.mark.real_waits
def test_before_sleep_logs_each_retry_at_v_and_nothing_when_the_policy_stops(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted(default=lambda p: Reply(503, headers={"Retry-After": "0.1"}))
    cfg = _config(tmp_path, dataset, srv.base_url, {"max_attempts": 3}, max_concurrency=1)
    r = cli("-v", "run", cfg, "--no-progress", "--limit", "1")
    assert r.code == 1 and "every request ended in error" in r.err
    lines = [ln for ln in r.err.splitlines() if "retry: request" in ln]
    assert len(lines) == 2 and len(srv.requests) == 3  # the 3rd failure ends the request: no line
    for n, line in enumerate(lines, 1):
        assert f"got server_error on attempt {n}/3 from {srv.base_url}; next attempt in 0.10 s" in line


def test_attempts_and_retry_types_are_counted_in_the_row(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted(
        [
            Reply(body=b'{"id": "x", "choices": [{"ind'),  # malformed: its own cap is 3 attempts
            Reply(500),
            Reply(429, headers={"Retry-After": "0"}),
        ]
    )
    cfg = _config(tmp_path, dataset, srv.base_url, {"max_attempts": 5}, max_concurrency=1)
    r = cli("run", cfg, "--no-progress", "--limit", "2")
    assert r.code == 0, r.err
    df = read_results(r.run_dir).sort_values("attempts")
    assert list(df.status) == ["ok", "ok"]
    assert list(df.attempts) == [1, 4] and int(df.attempts.sum()) == len(srv.requests)
    assert df.retry_types.iloc[0] is None  # answered at once
    assert list(df.retry_types.iloc[1]) == ["malformed_response", "server_error", "rate_limit"]


def test_an_immediate_retry_keeps_its_slot_ahead_of_a_waiting_first_attempt(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted([Reply(500)])  # retry waits are zero here (conftest): the retry goes at once
    cfg = _config(tmp_path, dataset, srv.base_url, {"max_attempts": 3}, max_concurrency=1)
    r = cli("run", cfg, "--no-progress", "--limit", "3")
    assert r.code == 0, r.err
    asked = [_question(p) for p in srv.requests]
    assert len(asked) == 4 and asked[0] == asked[1] and len(set(asked[1:])) == 3


@pytest.mark.real_waits
def test_another_providers_stop_does_not_cut_this_providers_retry_wait(tmp_path, dataset, scripted, cli) -> None:
    waits = scripted([Reply(503, headers={"Retry-After": "0.6"})])  # then answers
    rejects = scripted(
        default=lambda p: Reply(401, delay=0.1, json={"error": {"message": "bad key", "type": "authentication_error"}})
    )
    cfg = base_config(tmp_path, dataset)
    del cfg["provider"]
    cfg["providers"] = {"a": {"base_urls": [waits.base_url]}, "b": {"base_urls": [rejects.base_url]}}
    cfg["models"] = [
        {"name": "gemini-2.5-flash-lite", "provider": "a"},
        {"name": "gemini-3.1-pro-preview", "provider": "b"},
    ]
    r = cli("-v", "run", write_config(tmp_path, cfg), "--no-progress", "--limit", "1")
    assert r.code == 1 and "provider 'b' rejected" in r.err
    assert len(waits.requests) == 2 and waits.times[1] - waits.times[0] >= 0.58  # waited, then sent again
    rows = read_results(r.run_dir).set_index("model")
    a, b = rows.loc["gemini-2.5-flash-lite"], rows.loc["gemini-3.1-pro-preview"]
    assert a.status == "ok" and a.attempts == 2 and list(a.retry_types) == ["server_error"]
    assert b.error_type == "authentication" and b.attempts == 1
    assert sum("retry: request" in ln for ln in r.err.splitlines()) == 1
