"""`evalrun compare` as a CI gate, on real simulator runs: a degraded cell is flagged and
nothing else; identical runs compare equal; one-sided cells and usage errors are clear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from conftest import Reply, base_config, completion, read_results, write_config

ROWS = 120


def _rows(tmp_path: Path) -> Path:
    p = tmp_path / "arith.jsonl"
    p.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "id": f"a{i}",
                    "question": f"{i * 7 % 97 + 3} + {i * 13 % 89 + 2}",
                    "answer": (i * 7 % 97 + 3) + (i * 13 % 89 + 2),
                }
            )
            + b"\n"
            for i in range(ROWS)
        )
    )
    return p


def _config(tmp_path: Path, *, guess_in_b: bool = False, temps: list[float] | None = None) -> dict[str, Any]:
    cfg = base_config(tmp_path, _rows(tmp_path))
    cfg["models"] = ["gemini-3-pro-preview"]
    cfg["params"] = {"max_tokens": 1024, "temperature": 0.0, "reasoning_effort": "low"}
    hint = " Just guess." if guess_in_b else ""
    cfg["prompts"] = {
        "a": [{"role": "user", "content": "What is {question}? Only the number."}],
        "b": [{"role": "user", "content": "Compute {question}." + hint + " Only the number."}],
    }
    if temps:
        cfg["grid"] = {"temperature": temps}
    cfg["scorers"] = [{"name": "correct", "type": "numeric"}, {"type": "regex", "pattern": r"^\d+$"}]
    return cfg


def _run(cli, tmp_path: Path, cfg: dict[str, Any], name: str) -> Path:
    r = cli("run", write_config(tmp_path, cfg, f"{name}.yaml"), "--no-progress")
    assert r.code == 0, r.err
    return r.run_dir


def test_a_degraded_prompt_is_flagged_and_nothing_else(tmp_path, cli) -> None:
    base = _run(cli, tmp_path, _config(tmp_path), "base")
    new = _run(cli, tmp_path, _config(tmp_path, guess_in_b=True), "new")
    junit = tmp_path / "junit.xml"
    r = cli("compare", base, new, "--junit", junit)
    assert r.code == 1, r.err
    cells = pd.read_parquet(new / "compare.parquet")
    verdicts = dict(zip(cells.cell.str.split(" · ").str[1], cells.verdict))
    assert verdicts == {"a": "no change", "b": "regressed"}
    b = cells[cells.verdict == "regressed"].iloc[0]
    assert b.matched == ROWS and b.delta < -0.15 and b.p_value < 0.001
    assert b.delta_ci_low <= b.delta <= b.delta_ci_high < 0
    assert b.pass_to_fail > b.fail_to_pass
    a = cells[cells.verdict == "no change"].iloc[0]
    assert a.delta == 0 and a.pass_to_fail == 0 and a.fail_to_pass == 0 and a.p_value == 1
    md = (new / "compare.md").read_text()
    assert "**FAIL**: 1 cell(s) regressed" in md and "pass→fail" in md
    flips = pd.read_parquet(new / "compare_flips.parquet")
    assert set(flips.cell.str.split(" · ").str[1]) == {"b"}
    assert len(flips) == b.pass_to_fail + b.fail_to_pass
    assert (flips.base_content != flips.new_content).all()  # both answers are there
    xml = junit.read_text()
    assert 'tests="2" failures="1"' in xml and xml.count("<failure") == 1


def test_identical_runs_compare_equal(tmp_path, cli) -> None:
    base = _run(cli, tmp_path, _config(tmp_path), "base")
    new = _run(cli, tmp_path, _config(tmp_path), "new")
    r = cli("compare", base, new)
    assert r.code == 0, r.err
    assert "**PASS**" in r.out
    cells = pd.read_parquet(new / "compare.parquet")
    assert set(cells.verdict) == {"no change"} and (cells.delta == 0).all()
    assert len(pd.read_parquet(new / "compare_flips.parquet")) == 0


def test_one_sided_cells_are_named_and_fail_a_strict_gate(tmp_path, cli) -> None:
    first = _run(cli, tmp_path, _config(tmp_path, temps=[0.0]), "first")
    second = _run(cli, tmp_path, _config(tmp_path, temps=[0.0, 1.0]), "second")
    r = cli("compare", first, second)
    assert r.code == 0, r.err
    cells = pd.read_parquet(second / "compare.parquet")
    assert (cells.verdict == "only in new").sum() == 2  # temperature 1.0 × prompts a, b
    assert (cells.verdict == "no change").sum() == 2
    assert "2 cell(s) only in new, not compared" in r.err and "temperature: base 0.0, new 0.0, 1.0" in r.err
    assert "> ⚠️ 2 cell(s) only in new" in r.out
    assert cli("compare", first, second, "--strict").code == 1
    # --baseline latest never picks a run whose grid is not the new one's
    r = cli("compare", "--baseline", "latest", second)
    assert r.code == 2 and "no earlier completed run of 't' with the same grid" in r.err
    assert f"the latest, {first.name}, has other cells" in r.err


def test_gate_thresholds_from_flags(tmp_path, cli) -> None:
    base = _run(cli, tmp_path, _config(tmp_path), "base")
    new = _run(cli, tmp_path, _config(tmp_path, guess_in_b=True), "new")
    assert cli("compare", base, new, "--fail-on-drop", "0.9").code == 0  # a huge drop allowed
    assert cli("compare", base, new, "--alpha", "1e-12").code == 0  # impossibly strict evidence
    assert cli("compare", base, new, "--scorer", "regex").code == 0  # format still fine


@pytest.mark.parametrize(
    "args, message",
    [
        (["/nonexistent/a", "/nonexistent/b"], "not a finished run"),
        (["--fail-on-drop", "2", "RUN", "RUN"], "--fail-on-drop must be between 0 and 1"),
        (["--baseline", "latest", "RUN"], "no earlier completed run"),
        (["RUN"], "BASE_RUN NEW_RUN"),
        (["--scorer", "nope", "RUN", "RUN"], "no scorer 'nope'"),
    ],
)
def test_compare_usage_errors_exit_2(tmp_path, cli, args, message) -> None:
    run = _run(cli, tmp_path, _config(tmp_path), "base")
    r = cli("compare", *[str(run) if a == "RUN" else a for a in args])
    assert r.code == 2 and message in r.err and "Traceback" not in r.err


def test_score_recomputes_without_requests(tmp_path, dataset, scripted, cli) -> None:
    srv = scripted(default=lambda p: Reply(json=completion("The answer is 6.")))
    cfg = base_config(tmp_path, dataset, srv.base_url)
    run = _run(cli, tmp_path, cfg, "plain")
    sent = len(srv.requests)
    assert not any(c.startswith("score_") for c in read_results(run).columns)
    cfg["scorers"] = [
        {"name": "says6", "type": "exact_match", "expected": "the answer is 6", "normalize": ["case", "punctuation"]},
        {"type": "numeric", "expected": "{answer}"},
    ]
    other = write_config(tmp_path, cfg, "with_scorers.yaml")
    r = cli("score", run, "--config", other)
    assert r.code == 0, r.err
    assert len(srv.requests) == sent
    df = read_results(run)
    assert df.pass_says6.all() and df.score_says6.eq(1.0).all()
    assert list(df.sort_values("row_id").pass_numeric) == [False, True, False, False, False]  # q2: 2 + 4 = 6
    summary = pd.read_parquet(run / "summary.parquet")
    assert summary.pass_rate_says6.iloc[0] == 1.0 and summary.pass_rate_numeric.iloc[0] == 0.2


def test_compare_after_score_gates_on_the_scorers_the_results_now_hold(tmp_path, dataset, scripted, cli) -> None:
    """Two runs configured without scorers, scored afterwards with `evalrun score`: compare
    needs no --scorer, it takes the one score wrote (recorded in the manifest)."""
    answers = iter(["6", "6", "6", "6", "6", "6", "7", "7", "7", "7"])
    srv = scripted(default=lambda p: Reply(json=completion(next(answers))))
    cfg = base_config(tmp_path, dataset, srv.base_url)
    base, new = _run(cli, tmp_path, cfg, "base"), _run(cli, tmp_path, cfg, "new")
    cfg["scorers"] = [{"name": "six", "type": "exact_match", "expected": "6"}]
    scored = write_config(tmp_path, cfg, "scored.yaml")
    for run in (base, new):
        assert cli("score", run, "--config", scored).code == 0
    r = cli("compare", base, new)
    assert r.code == 0, r.err  # without the manifest's scorers: "the run has no scorers", exit 2
    assert "| 100.0% | 20.0% |" in r.out  # 5 of 5 said 6, then 1 of 5 (too few items to be significant)


@pytest.mark.parametrize(
    "fmt, marker", [("markdown", "|"), ("csv", "pass_rate_correct"), ("json", '"pass_rate_correct"')]
)
def test_summary_formats(tmp_path, cli, fmt, marker) -> None:
    run = _run(cli, tmp_path, _config(tmp_path), "base")
    r = cli("summary", run, "--format", fmt)
    assert r.code == 0 and marker in r.out


def test_runs_with_no_cell_in_common_fail_the_gate_instead_of_passing_it(tmp_path, cli) -> None:
    # two runs of the same experiment at other temperatures share no cell: compare used to end
    # in a traceback (AttributeError in the coverage warnings); a verdict of PASS would be worse
    first = _run(cli, tmp_path, _config(tmp_path, temps=[0.0]), "first")
    second = _run(cli, tmp_path, _config(tmp_path, temps=[1.0]), "second")
    junit = tmp_path / "junit.xml"
    r = cli("compare", first, second, "--junit", junit)
    assert r.code == 1, r.err
    assert "Traceback" not in r.err
    assert r.out.startswith("## evalrun compare: **FAIL**: no cell in common with matched rows, nothing was compared")
    assert "2 cell(s) only in base, not compared" in r.err and "2 cell(s) only in new, not compared" in r.err
    assert orjson.loads((second / "compare.json").read_bytes())["verdict"] == "fail"
    assert 'failures="1"' in junit.read_text() and 'name="cells compared"' in junit.read_text()
