"""`evalrun run` end to end on the simulator: the report's files, schema and contents."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import base_config, read_results, write_config

from evalrun.run.store.store import results_schema

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
FAST = "providers.simulator.simulator.latency_scale=0"


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    tmp = tmp_path_factory.mktemp("qs")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "evalrun",
            "run",
            str(QUICKSTART),
            "--set",
            FAST,
            "--set",
            f"reports_dir={tmp}",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp,
        env={**os.environ, "COLUMNS": "160"},  # the table fits the terminal: give it a wide one
    )
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1]), out.stdout, out.stderr


def test_quickstart_writes_the_three_files_and_prints_the_run_dir(quickstart_run) -> None:
    run_dir, out, _ = quickstart_run
    assert run_dir.is_dir() and run_dir.parent.name == "quickstart"
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", run_dir.name)
    for name in ("results.parquet", "summary.parquet", "manifest.json"):
        assert (run_dir / name).is_file(), name
    assert "gemini-3.1-pro-preview" in out and "│ p50 s" in out.replace("┃", "│")  # the summary table


def test_results_schema_is_the_declared_one(quickstart_run) -> None:
    run_dir, _, _ = quickstart_run
    schema = pq.read_schema(run_dir / "results.parquet")
    expected = results_schema(("id", "question", "answer"), ["correct"])
    assert schema.remove_metadata().equals(expected), schema
    required = {
        "run_id",
        "request_id",
        "cell_id",
        "experiment",
        "provider",
        "base_url",
        "model",
        "response_model",
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "reasoning_effort",
        "prompt_id",
        "row_id",
        "repeat",
        "messages",
        "choice_index",
        "content",
        "finish_reason",
        "tool_calls",
        "logprobs",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "latency_s",
        "started_at",
        "attempts",
        "status",
        "http_status",
        "error_type",
        "error_message",
        "response_id",
    }
    assert required <= set(schema.names)


def test_quickstart_contents(quickstart_run) -> None:
    run_dir, _, _ = quickstart_run
    df = read_results(run_dir)
    assert len(df) == 3 * 2 * 20 and df.request_id.is_unique
    assert set(df.status) == {"ok"}
    assert set(df.model) == {"gemini-2.5-flash-lite", "gemini-3-pro-preview", "gemini-3.1-pro-preview"}
    assert set(df.temperature) == {0.0, 1.0}
    assert (df.reasoning_tokens <= df.completion_tokens).all()
    assert (df.cached_tokens <= df.prompt_tokens).all()
    assert (df.total_tokens == df.prompt_tokens + df.completion_tokens).all()
    assert set(df.response_model) == set(df.model)
    # logprobs: one entry per visible token, five alternatives each, sorted
    for tokens in df.logprobs:
        assert len(tokens) >= 1
        for t in tokens:
            tops = [a["logprob"] for a in t["top_logprobs"]]
            assert len(tops) == 5 and tops == sorted(tops, reverse=True) and t["logprob"] <= 0
    messages = orjson.loads(df.messages.iloc[0])
    assert messages[0]["role"] == "system" and "What is" in messages[1]["content"]
    # the models really differ: accuracy on arithmetic follows their skill
    df["correct"] = df.content.str.strip() == df.data_answer
    acc = df.groupby("model").correct.mean()
    assert acc["gemini-3.1-pro-preview"] > acc["gemini-2.5-flash-lite"]


def test_manifest_and_summary(quickstart_run) -> None:
    run_dir, _, _ = quickstart_run
    m = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert m["status"] == "completed" and m["experiment"] == "quickstart"
    assert m["grid"] == {"cells": 6, "rows": 20, "repeats": 1, "requests": 120, "dataset": m["grid"]["dataset"]}
    assert m["counts"]["requests"] == m["counts"]["recorded"] == 120 and m["counts"]["missing"] == 0
    assert m["started_at"] <= m["finished_at"]
    assert {"evalrun", "python", "aiohttp", "pyarrow"} <= set(m["versions"])
    assert m["providers"]["evolink"]["api_key_env"] == "EVOLINK_API_KEY"
    summary = pq.read_table(run_dir / "summary.parquet").to_pandas()
    assert len(summary) == 6
    assert set(summary.requests) == {20} and set(summary.errors) == {0}
    assert (summary.latency_p95_s >= summary.latency_p50_s).all()


def test_plan_counts_equal_rows_written(tmp_path, dataset, cli) -> None:
    cfg = base_config(tmp_path, dataset)
    cfg["models"] = ["gemini-2.5-flash-lite", "gemini-3-pro-preview"]
    cfg["params"] = {"max_tokens": 512, "n": 2}
    cfg["grid"] = {"temperature": [0, 1], "exclude": [{"model": "gemini-3-pro-preview", "temperature": 1}]}
    cfg["repeats"] = 2
    path = write_config(tmp_path, cfg)
    plan = cli("plan", path, "--json")
    assert plan.code == 0, plan.err
    report = orjson.loads(plan.out)
    assert report["requests"] == 3 * 5 * 2 and report["cells"] == 3
    r = cli("run", path, "--no-progress")
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    assert df.request_id.nunique() == report["requests"]
    assert len(df) == report["requests"] * 2  # n=2: one row per choice
    # usage sits on choice 0 only, so a plain sum counts every request once
    assert df[df.choice_index == 1].prompt_tokens.isna().all()
    assert df[df.choice_index == 0].prompt_tokens.notna().all()


def test_run_dir_limit_and_set(tmp_path, dataset, cli) -> None:
    path = write_config(tmp_path, base_config(tmp_path, dataset))
    target = tmp_path / "exactly-here"
    r = cli("run", path, "--no-progress", "--run-dir", target, "--limit", "2", "--set", "params.temperature=0.3")
    assert r.code == 0, r.err
    assert r.run_dir == target and (target / "results.parquet").is_file()
    df = read_results(target)
    assert len(df) == 2 and set(df.temperature) == {0.3}
    again = cli("run", path, "--no-progress", "--run-dir", target)
    assert again.code == 2 and "--resume" in again.err


def test_validate_and_plan_text(cli) -> None:
    r = cli("validate", QUICKSTART)
    assert r.code == 0 and "120 requests" in r.out
    r = cli("plan", QUICKSTART)
    assert r.code == 0 and "6 cells × 20 rows × 1 repeats = 120 requests" in r.out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_any_openai_compatible_server_via_base_urls(tmp_path, dataset, cli) -> None:
    """The standalone simulator (`evalrun serve-sim`) stands in for any other server."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalrun", "serve-sim", "--port", str(port), "--latency-scale", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}/v1" in line, line
        cfg = base_config(tmp_path, dataset, f"http://127.0.0.1:{port}/v1")
        r = cli("run", write_config(tmp_path, cfg), "--no-progress")
        assert r.code == 0, r.err
        df = read_results(r.run_dir)
        assert set(df.status) == {"ok"} and set(df.base_url) == {f"http://127.0.0.1:{port}/v1"}
    finally:
        proc.terminate()
        proc.wait(10)


def test_help_is_fast_and_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "evalrun", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for cmd in ("validate", "plan", "run", "summary", "serve-sim"):
        assert cmd in out.stdout
