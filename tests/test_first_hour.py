"""What a new user hits in the first hour, each as a test: output that fits the terminal and
says what went wrong with the answers, the simulator's blind spots, scorers filled from the
row, one-line errors for small mistakes, pipes, and the quickstart after `pip install`."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
import yaml
from conftest import Reply, base_config, completion, read_results, write_config

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["gemini-2.5-flash-lite", "gemini-3-pro-preview", "gemini-3.1-pro-preview"]


def _arith(tmp_path: Path, rows: int = 12) -> Path:
    p = tmp_path / "arith.jsonl"
    p.write_bytes(
        b"".join(orjson.dumps({"id": f"q{i}", "question": f"{i} + {i}", "answer": 2 * i}) + b"\n" for i in range(rows))
    )
    return p


@pytest.fixture
def wide_run(tmp_path, cli) -> Path:
    """Three long model names × two temperatures, two scorers, priced: the table that used to cut names."""
    cfg = base_config(tmp_path, _arith(tmp_path))
    cfg["models"] = MODELS
    cfg["grid"] = {"temperature": [0.0, 1.0]}
    cfg["params"] = {"max_tokens": 1024, "reasoning_effort": "low"}
    cfg["scorers"] = [{"name": "correct", "type": "numeric"}, {"name": "bare", "type": "regex", "pattern": r"^\d+$"}]
    cfg["prices"] = {"models": {m: {"input": 1.0, "output": 10.0} for m in MODELS}}
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 0, r.err
    return r.run_dir


def _chars(text: str) -> int:
    return max(len(line.rstrip()) for line in text.splitlines())


# --------------------------------------------------------------------------- output that fits


@pytest.mark.parametrize("width", [80, 100, 120])
def test_summary_and_cost_fit_the_terminal_and_never_cut_a_name(wide_run, cli, monkeypatch, width) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    for args in (["summary", wide_run], ["cost", wide_run, "--by", "model,temperature"]):
        r = cli(*args)
        assert r.code == 0, r.err
        assert _chars(r.out) <= width, r.out
        assert "…" not in r.out
        for model in MODELS:  # every row names its model whole
            assert len(re.findall(rf"│ {re.escape(model)} +│", r.out)) == (2 if "temperature" in r.out else 1), r.out
    r = cli("summary", wide_run)
    assert "pass correct" in r.out and "pass bare" in r.out  # the scores stay; less important columns go
    if width < 120:
        assert "not shown for want of width:" in r.out and "reasoning tok" in r.out


def test_markdown_summary_fits_a_pr_comment(wide_run, cli) -> None:
    r = cli("summary", wide_run, "--format", "markdown")
    assert r.code == 0, r.err
    head, _rule, *rows = r.out.strip().splitlines()
    assert head.startswith("| model | temperature | pass correct | pass bare | requests | errors | cost |")
    assert head.count("|") - 1 <= 12 and len(rows) == 6
    assert not re.search(r"\d\.\d{7,}", r.out)  # rounded, no 0.000651234567
    assert re.search(r"\| \d+% \[\d+%–\d+%\] \|", rows[0])


def test_cost_counts_are_integers_in_csv_and_json(wide_run, cli) -> None:
    records = orjson.loads(cli("cost", wide_run, "--format", "json").out)
    assert records[-1]["model"] == "(all)" and records[-1]["requests"] == 72
    for r in records:
        for k in ("requests", "prompt_tokens", "visible_output_tokens", "reasoning_tokens"):
            assert isinstance(r[k], int), (k, r[k])
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(cli("cost", wide_run, "--format", "csv").out)))
    assert rows[-1]["requests"] == "72"
    assert all(re.fullmatch(r"\d+", r[k]) for r in rows for k in ("requests", "prompt_tokens", "reasoning_tokens"))


def test_cost_by_a_typo_suggests_the_column(wide_run, cli) -> None:
    r = cli("cost", wide_run, "--by", "modle")
    assert r.code == 2 and r.err.count("\n") == 1
    assert "no column 'modle' in results.parquet — did you mean 'model'?" in r.err
    assert "columns to group by: provider, model, response_model, prompt_id, temperature" in r.err


def test_cost_at_prices_missing_a_model_says_the_total_is_partial(wide_run, cli, tmp_path) -> None:
    prices = tmp_path / "some.yaml"
    prices.write_text(yaml.safe_dump({"models": {"gemini-2.5-flash-lite": {"input": 1.0, "output": 2.0}}}))
    r = cli("cost", wide_run, "--prices", prices, "--format", "json")
    assert r.code == 0, r.err
    total = orjson.loads(r.out)[-1]
    assert total["model"] == "(all, partial)"
    assert f"the total is partial: no price in {prices} for gemini-3-pro-preview, gemini-3.1-pro-preview" in r.err
    lite = orjson.loads(r.out)[0]
    assert total["cost_total"] == pytest.approx(lite["cost_total"])  # the priced model only
    table = cli("cost", wide_run, "--prices", prices)
    assert "the total is partial" in table.out and "(all, partial)" in table.out and table.err == ""  # said once


# --------------------------------------------------------------------------- what a run says


def test_answers_cut_at_max_tokens_are_counted_and_explained(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted(
        default=lambda p: (
            Reply(json=completion("", finish_reason="length"))
            if "q1" not in str(p) and "1 + 2" in str(p)
            else Reply(json=completion("3"))
        )
    )
    cfg = base_config(tmp_path, dataset, srv.base_url)
    cfg["scorers"] = [{"type": "numeric"}]
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 0, r.err
    assert "cut at max" in r.out and "empty" in r.out  # columns of the run's own summary
    assert "gemini-2.5-flash-lite: 1 of 5 answers cut at max_tokens, 1 empty" in r.out
    assert "raise max_tokens (thinking tokens count against it) or lower reasoning_effort" in r.out
    summary = pd.read_parquet(r.run_dir / "summary.parquet").iloc[0]
    assert summary.truncated_answers == 1 and summary.empty_answers == 1
    s = cli("summary", r.run_dir)
    assert "1 of 5 answers cut at max_tokens" in s.out
    md = cli("summary", r.run_dir, "--format", "markdown").out
    assert "> ⚠️ gemini-2.5-flash-lite: 1 of 5 answers cut at max_tokens, 1 empty" in md


def test_tool_call_answers_are_not_empty(tmp_path, dataset, scripted, cli) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = completion("", finish_reason="tool_calls")
    body["choices"][0]["message"]["tool_calls"] = [call]
    srv = scripted(default=lambda p: Reply(json=body))
    cfg = base_config(tmp_path, dataset, srv.base_url)
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 0, r.err
    row = pd.read_parquet(r.run_dir / "summary.parquet").iloc[0]
    assert row.empty_answers == 0 and row.truncated_answers == 0 and "empty" not in r.out


def _capitals(tmp_path: Path) -> Path:
    p = tmp_path / "capitals.jsonl"
    rows = [
        {"id": "fr", "country": "France", "continent": "Europe", "code": "F.R."},
        {"id": "jp", "country": "Japan", "continent": "Asia", "code": "J.P."},
    ]
    p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return p


def test_plan_and_run_say_when_the_simulator_cannot_answer_the_prompts(tmp_path, cli) -> None:
    cfg = base_config(tmp_path, _capitals(tmp_path))
    cfg["prompts"] = {"capital": [{"role": "user", "content": "What is the capital of {country}?"}]}
    path = write_config(tmp_path, cfg)
    r = cli("plan", path)
    assert r.code == 0 and _chars(r.out) <= 120
    note = " ".join(r.out.split())
    assert "prompt capital matches none of the simulator's tasks (arithmetic, multiple choice" in note
    assert orjson.loads(cli("plan", path, "--json").out)["notes"]
    r = cli("run", path, "--no-progress")
    assert r.code == 0 and "evalrun: note: prompt capital matches none of the simulator's tasks" in " ".join(
        r.err.split()
    )
    # the same questions sent to any other server: nothing to say
    cfg2 = base_config(tmp_path, _arith(tmp_path))
    assert "note" not in cli("plan", write_config(tmp_path, cfg2, "arith.yaml")).out


def test_a_json_or_tool_prompt_is_a_simulator_task(tmp_path, cli) -> None:
    cfg = base_config(tmp_path, _capitals(tmp_path))
    cfg["prompts"] = {"capital": [{"role": "user", "content": "The capital of {country} as JSON."}]}
    cfg["params"] = {"max_tokens": 256, "response_format": {"type": "json_object"}}
    assert "note" not in cli("plan", write_config(tmp_path, cfg)).out


def test_run_says_there_are_no_prices(tmp_path, dataset, cli) -> None:
    r = cli("run", write_config(tmp_path, base_config(tmp_path, dataset)), "--no-progress")
    said = " ".join(r.err.split())
    assert r.code == 0 and "evalrun: note: no price table: the cost columns stay empty" in said
    assert f"put prices.yaml beside it in {tmp_path}" in said


def test_regex_scorers_are_filled_from_the_row_like_contains(tmp_path, scripted, cli) -> None:
    answers = {"France": "Paris, in EUROPE (FxRx).", "Japan": "Tokyo, in Asia (J.P.)."}
    srv = scripted(default=lambda p: Reply(json=completion(answers[p["messages"][0]["content"].split()[-1][:-1]])))
    cfg = base_config(tmp_path, _capitals(tmp_path), srv.base_url)
    cfg["prompts"] = {"capital": [{"role": "user", "content": "What is the capital of {country}?"}]}
    cfg["scorers"] = [
        {"name": "rx", "type": "regex", "pattern": "(?i)in {continent}\\b"},
        {"name": "has", "type": "contains", "value": "{continent}", "normalize": ["case"]},
        {"name": "literal", "type": "regex", "pattern": "\\({code}\\)"},  # the row's "F.R." is text: FxRx is not it
        {"name": "picked", "type": "exact_match", "expected": "{continent}", "extract": "(?i)in ({continent})"},
    ]
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 0, r.err
    df = read_results(r.run_dir).set_index("row_id")
    assert df.pass_rx.to_dict() == {"fr": True, "jp": True} == df.pass_has.to_dict()
    assert df.pass_literal.to_dict() == {"fr": False, "jp": True}
    assert df.pass_picked.to_dict() == {"fr": False, "jp": True}  # extract is filled too; EUROPE ≠ Europe
    cfg["scorers"] = [{"type": "regex", "pattern": "{capital_city}"}]
    bad = cli("validate", write_config(tmp_path, cfg, "bad.yaml"))
    assert bad.code == 2 and "the dataset has no column 'capital_city'" in bad.err


# --------------------------------------------------------------------------- small mistakes


def test_a_typo_in_a_price_file_names_its_line_and_the_key(tmp_path, dataset, cli) -> None:
    (tmp_path / "prices.yaml").write_text("currency: USD\nmodels:\n  m:\n    input: 1.0\n    ouptut: 2.0\n")
    cfg = base_config(tmp_path, dataset)
    r = cli("plan", write_config(tmp_path, cfg))
    assert r.code == 2 and r.err.count("\n") == 1
    assert f"{tmp_path / 'prices.yaml'}:5: models.m.ouptut: unknown key — did you mean 'output'?" in r.err


def test_an_unknown_scorer_type_suggests_the_right_one(tmp_path, dataset, cli) -> None:
    cfg = base_config(tmp_path, dataset)
    cfg["scorers"] = [{"type": "regexp", "pattern": "x"}]
    r = cli("validate", write_config(tmp_path, cfg))
    assert r.code == 2 and "scorers[0]: unknown type 'regexp' — did you mean 'regex'?; allowed: exact_match" in r.err


def test_set_on_a_string_dataset(tmp_path, dataset, cli) -> None:
    cfg = base_config(tmp_path, dataset)
    cfg["dataset"] = str(tmp_path / "nowhere.jsonl")  # `dataset: PATH`, the short form
    path = write_config(tmp_path, cfg)
    r = cli("validate", path, "--set", f"dataset.path={dataset}", "--set", "dataset.limit=2")
    assert r.code == 0 and "× 2 rows" in r.out, r.err
    r = cli("validate", path, "--set", "prompts.p.role=user")
    assert r.code == 2 and "prompts.p in" in r.err and "is a list" in r.err and "--set prompts.p=…" in r.err


def test_max_cost_below_one_requests_worst_case_fails_before_sending(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted()
    cfg = base_config(tmp_path, dataset, srv.base_url)
    cfg["models"] = ["m"]
    cfg["params"] = {"max_tokens": 2048}
    cfg["prices"] = {"models": {"m": {"input": 1.0, "output": 10.0}}}
    r = cli("run", write_config(tmp_path, cfg), "--no-progress", "--max-cost", "0.01")
    assert r.code == 2 and srv.requests == []
    assert "--max-cost 0.01: one request of m may cost up to 0.0205 USD" in r.err
    assert "all 2,048 output tokens of max_tokens" in r.err and "raise --max-cost above 0.0205" in r.err
    assert cli("run", write_config(tmp_path, cfg), "--no-progress", "--max-cost", "1").code == 0


def _evalrun(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evalrun", *args], capture_output=True, text=True, timeout=60, **kw)


def test_serve_sim_on_a_taken_port_or_a_bad_knob_is_one_line(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _evalrun("serve-sim", "--port", str(port))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert f"serve-sim --port {port}: cannot listen on 127.0.0.1:{port}" in out.stderr
    for args, says in (
        (["--latency-ms", "-5"], "--latency-ms"),
        (["--port", "70000"], "0–65535"),
    ):
        out = _evalrun("serve-sim", *args)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and says in out.stderr, out.stderr


@pytest.mark.parametrize(
    "args", [["summary", "RUN"], ["summary", "RUN", "--format", "json"], ["cost", "RUN", "--format", "json"]]
)
def test_a_closed_pipe_is_not_a_traceback(wide_run, args) -> None:
    # the reading end is closed before evalrun starts, so its first write always hits a broken pipe
    read, write = os.pipe()
    os.close(read)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "evalrun", *[str(wide_run) if a == "RUN" else a for a in args]],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert out.returncode == 1 and out.stderr == "", out.stderr  # 1, as Python's docs (and rich) do on EPIPE


# --------------------------------------------------------------------------- after pip install


def test_init_writes_a_quickstart_that_runs(tmp_path, cli, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("init", "qs")
    assert r.code == 0, r.err
    written = [Path(line) for line in r.out.split()]
    assert [p.as_posix() for p in written] == [
        "qs/configs/quickstart.yaml",
        "qs/configs/prices.yaml",
        "qs/datasets/arithmetic.jsonl",
    ]
    assert "next: evalrun run qs/configs/quickstart.yaml" in r.err
    run = cli(
        "run", written[0], "--limit", "2", "--set", "providers.simulator.simulator.latency_scale=0", "--no-progress"
    )
    assert run.code == 0, run.err
    assert read_results(run.run_dir).cost_total.notna().all()  # the prices came along
    again = cli("init", "qs")
    assert again.code == 2 and "already exists; nothing was written" in again.err
    assert cli("init", "qs", "--force").code == 0


def test_the_packaged_quickstart_is_the_repository_s() -> None:
    from evalrun.config.starter import FILES

    for name in FILES:
        packaged = ROOT / "evalrun" / "config" / "starter" / name
        assert packaged.read_bytes() == (ROOT / name).read_bytes(), f"{packaged} differs from {name}: copy it over"


def test_runtime_dependencies_cover_what_shipped_configs_use() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[<>=;\[ ]", d)[0] for d in project["dependencies"]}
    assert "jsonschema" in runtime  # configs/json_extraction.yaml's json_schema scorer
    data = project.get("optional-dependencies", {})
    assert not {re.split(r"[<>=;\[ ]", d)[0] for d in data.get("test", [])} & runtime


def test_the_readme_and_configs_point_at_files_in_the_repository() -> None:
    texts = {p: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "configs").glob("*.yaml"))]}
    # the layout diagram names a placeholder (configs/x.yaml ─load─▶ …), not a file
    texts = {p: "\n".join(line for line in t.splitlines() if "▶" not in line) for p, t in texts.items()}
    for path, text in texts.items():
        assert "shared/api" not in text, path
        for ref in re.findall(r"(?<![\w./])((?:configs|datasets|docs|tests|evalrun)/[\w./-]+\.\w+)", text):
            if re.search(rf"> {re.escape(ref)}", text):
                continue  # a file the recipe writes (git show … > configs/base.yaml)
            assert (ROOT / ref).exists(), f"{path.name} points at {ref}, which is not in the repository"


def test_one_model_on_two_providers_is_two_rows_told_apart() -> None:
    from evalrun.analysis.views import summary_markdown

    rows = [
        {"cell_id": c, "provider": p, "model": "m", "prompt_id": "x", "requests": 1, "errors": 0, "rows": 1}
        for c, p in (("a", "sim"), ("b", "evolink"))
    ]
    head, _rule, *body = summary_markdown(rows).splitlines()
    assert head.startswith("| model | provider |") and body[0].startswith("| m | sim |")
    assert "provider" not in summary_markdown(rows[:1])
