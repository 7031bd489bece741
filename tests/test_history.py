"""`evalrun history`: real nights made by the simulator (and a scripted server for what the
simulator cannot vary), the step test's error rate and power on seeded synthetic histories, drift
markers exactly where something changed, s3://, skipped runs, bad input, the page in Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import Reply, base_config, completion, write_config
from many import S3Server, s3_server
from test_report import _browser_page

from evalrun.analysis.history import (
    Point,
    adjust,
    bh_adjust,
    build_history,
    step_p,
    two_proportion_p,
)
from evalrun.analysis.history_text import markdown, to_csv
from evalrun.analysis.rowstats import row_rate
from evalrun.analysis.stats import student_t_p
from evalrun.report.history_html import write_history

__all__ = ["s3_server"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["gemini-2.5-flash-lite", "gemini-3-pro-preview"]
PROMPT_A = [{"role": "user", "content": "What is {question}? Only the number."}]
PROMPT_B = [{"role": "user", "content": "Compute {question}. Reply with the number only."}]
# night → what changes: seeds vary every night; night 2 rewrites the prompt; night 3 cuts the
# reasoning model's own max_tokens so its answers are cut off (a real drop, explained by drift)
NIGHTS = [
    {"seed": 1, "prompt": PROMPT_A, "pro_max_tokens": None},
    {"seed": 2, "prompt": PROMPT_A, "pro_max_tokens": None},
    {"seed": 3, "prompt": PROMPT_B, "pro_max_tokens": None},
    {"seed": 4, "prompt": PROMPT_B, "pro_max_tokens": 64},
]


def _night_config(tmp: Path, night: dict[str, Any], name: str) -> Path:
    cfg = base_config(tmp, ROOT / "datasets" / "arithmetic.jsonl")
    cfg["experiment"] = "nightly"
    pro = night["pro_max_tokens"]
    cfg["models"] = [MODELS[0], {"name": MODELS[1], "params": {"max_tokens": pro}} if pro else MODELS[1]]
    cfg["providers"]["sim"]["simulator"]["seed"] = night["seed"]
    cfg["params"] = {"max_tokens": 4096, "reasoning_effort": "low", "temperature": 1.0}
    cfg["prompts"] = {"p": night["prompt"]}
    cfg["dataset"] = {"path": str(ROOT / "datasets" / "arithmetic.jsonl"), "limit": 20}
    cfg["repeats"] = 2
    cfg["prices"] = str(ROOT / "configs" / "prices.yaml")
    cfg["scorers"] = [{"name": "correct", "type": "numeric", "expected": "{answer}"}]
    return write_config(tmp, cfg, name)


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """reports/nightly/ with four completed nights (n0…n3), a stopped run, a run whose manifest
    still says running, and one whose manifest is cut short."""
    from evalrun.cli import main

    tmp = tmp_path_factory.mktemp("nights")
    exp = tmp / "reports" / "nightly"
    for i, night in enumerate(NIGHTS):
        assert (
            main(
                ["run", str(_night_config(tmp, night, f"n{i}.yaml")), "--no-progress", "--run-dir", str(exp / f"n{i}")]
            )
            == 0
        )
    stopped = _night_config(tmp, NIGHTS[-1], "stopped.yaml")
    assert (
        main(["run", str(stopped), "--no-progress", "--run-dir", str(exp / "n4-stopped"), "--max-requests", "3"]) == 1
    )
    shutil.copytree(exp / "n3", exp / "n5-running")
    m = orjson.loads((exp / "n3" / "manifest.json").read_bytes())
    m.update(status="running", run_id="n5-running", started_at="2999-01-01T00:00:00Z")
    (exp / "n5-running" / "manifest.json").write_bytes(orjson.dumps(m))
    shutil.copytree(exp / "n3", exp / "n6-damaged")
    (exp / "n6-damaged" / "manifest.json").write_bytes((exp / "n3" / "manifest.json").read_bytes()[:200])
    return exp


def test_nights_on_the_simulator_show_the_step_and_the_drift_where_they_happened(nights: Path) -> None:
    h = build_history(str(nights))
    assert [r.run_id for r in h.runs] == [
        orjson.loads((nights / f"n{i}" / "manifest.json").read_bytes())["run_id"] for i in range(4)
    ]
    # left out, each with why: the stopped run, the one still running, the damaged manifest
    assert len(h.skipped) == 3
    assert any(s.startswith("n4-stopped: status stopped") for s in h.skipped)
    assert any(s.startswith("n5-running: status running") for s in h.skipped)
    assert any(s.startswith("n6-damaged: ") and "not valid JSON" in s for s in h.skipped)
    # drift exactly where something changed: the prompt on night 2, max_tokens on night 3, per cell
    got = sorted((d.index, d.kind, d.label) for d in h.drift)
    assert got == sorted([(2, "prompt", m) for m in MODELS] + [(3, "params", MODELS[1])])
    params = next(d for d in h.drift if d.kind == "params")
    assert (params.before, params.after) == ("max_tokens=4096", "max_tokens=64")
    by_model = {s.label: s for s in h.series}
    assert set(by_model) == set(MODELS)
    pro = by_model["gemini-3-pro-preview"]
    assert pro.step is not None and pro.step.flagged and pro.step.delta < -0.5  # cut at max_tokens: a real drop
    assert pro.points[-1] is not None and pro.points[-1].rate == 0.0
    lite = by_model["gemini-2.5-flash-lite"]
    assert lite.step is not None and not lite.step.flagged  # only its seed changed
    # the figures are the summary's own, night by night
    summary = pq.read_table(nights / "n1" / "summary.parquet").to_pylist()
    row = next(r for r in summary if r["model"] == "gemini-2.5-flash-lite")
    p = lite.points[1]
    assert p is not None and p.rate == row["pass_rate_correct"] and p.low == row["pass_ci_low_correct"]
    assert p.eff_rows == row["eff_rows_correct"] and row["eff_rows_correct"] >= row["items"]
    assert p.cost_per_pass == row["cost_per_pass_correct"] and p.error_rate == row["error_rate"]
    assert p.tokens_per_request == row["total_tokens"] / row["requests"]
    assert row["response_models"] == "gemini-2.5-flash-lite"


def test_the_cli_alerts_on_a_flagged_step_and_only_then(nights: Path, cli: Any, tmp_path: Path) -> None:
    res = cli("history", nights, "--alert")
    assert res.code == 1, res.err
    assert "evalrun: skipped n4-stopped: status stopped" in res.err
    assert re.search(r"gemini-3-pro-preview .*DROP", res.out)
    assert "1 significant step(s)" in res.out
    assert cli("history", nights).code == 0  # without --alert a step is shown, not an error
    quiet = cli("history", str(nights / "n[012]"), "--alert", "--out", tmp_path / "h.md")
    assert quiet.code == 0, quiet.err
    md = (tmp_path / "h.md").read_text()
    assert "✅ no significant step" in md and "prompt changed" in md and "params" not in md
    assert "3 completed run(s)" in md
    assert cli("history", nights, "--last", "2", "--alert").code == 1  # n2 vs n3 alone


def test_a_narrow_terminal_says_where_the_dropped_columns_are(nights: Path, cli: Any, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    res = cli("history", nights)
    assert res.code == 0 and "not shown for want of width" in res.out
    assert "(--out FILE.csv or .json has all)" in res.out  # history has no --format


def test_every_out_format_says_the_same(nights: Path, cli: Any, tmp_path: Path) -> None:
    for ext in ("json", "csv", "md", "html"):
        res = cli("history", nights, "--out", tmp_path / f"h.{ext}")
        assert res.code == 0 and f"wrote {tmp_path / f'h.{ext}'}" in res.err
    data = orjson.loads((tmp_path / "h.json").read_bytes())
    assert data["flagged"] == 1 and len(data["runs"]) == 4 and len(data["drift"]) == 3
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 * 2  # a header, then night × cell × scorer
    flagged = [line for line in lines if line.endswith(",True")]
    assert len(flagged) == 1 and "gemini-3-pro-preview" in flagged[0] and ",params," in flagged[0]
    (tmp_path / "a-file").write_text("")
    res = cli("history", nights, "--out", tmp_path / "a-file" / "h.html")
    assert res.code == 2 and res.err.count("\n") == 4 and "cannot write it" in res.err  # 3 skipped lines first
    md = (tmp_path / "h.md").read_text()
    assert (
        md.index("⚠️ 1 significant step") < md.index("| cell |") < md.index("### Drift") < md.index("### Skipped runs")
    )


def test_the_page_loads_in_chromium(nights: Path, tmp_path: Path) -> None:
    h = build_history(str(nights))
    out = write_history(h, tmp_path / "history.html")
    html = out.read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    with _browser_page(out) as (page, problems, urls):
        assert problems == []
        assert all(u.startswith(("file:", "data:", "about:")) for u in urls)  # offline: nothing fetched
        assert page.locator("svg.trend").count() == len(h.series) == 2
        assert page.locator("#history-table tr.flagged").count() == 1
        assert "gemini-3-pro-preview" in page.locator("#history-table tr.flagged").inner_text()
        assert page.locator("svg.trend circle.last.flagged").count() == 1
        assert page.locator("svg.trend line.drift").count() == 3  # the prompt on both cells, max_tokens on one
        assert page.locator("#drift-table tbody tr").count() == 3
        assert page.locator("#skipped li").count() == 3
        assert page.locator(".banner.bad").count() == 1
        box = page.locator("svg.trend").first.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 30
        page.locator("#history-table thead th").nth(4).click()  # sort by Δ: the drop first
        assert "gemini-3-pro-preview" in page.locator("#history-table tbody tr").first.inner_text()


# ---------------------------------------------------------------- served model, dataset, prices


def test_served_model_dataset_and_price_drift_on_a_scripted_server(
    tmp_path: Path, dataset: Path, cli: Any, scripted: Any
) -> None:
    """The simulator always serves the model asked for; a scripted server answers as another."""
    served = {"model": "gemini-2.5-flash-lite-001"}
    server = scripted(default=lambda p: Reply(json=completion("3", model=served["model"])))
    prices = {n: tmp_path / f"prices{n}.yaml" for n in (1, 2)}
    for n, path in prices.items():
        table = {"currency": "USD", "models": {"gemini-2.5-flash-lite": {"input": 0.1 * n, "output": 0.4}}}
        path.write_text(yaml.safe_dump(table))
    other = tmp_path / "data2.jsonl"
    other.write_bytes(
        dataset.read_bytes().replace(b'"answer": 3', b'"answer": 4').replace(b'"answer":3', b'"answer":4')
    )
    assert other.read_bytes() != dataset.read_bytes()
    plan = [  # (served model, dataset, prices): one change a night
        ("gemini-2.5-flash-lite-001", dataset, prices[1]),
        ("gemini-2.5-flash-lite-002", dataset, prices[1]),
        ("gemini-2.5-flash-lite-002", other, prices[1]),
        ("gemini-2.5-flash-lite-002", other, prices[2]),
        ("gemini-2.5-flash-lite-002", other, prices[2]),
    ]
    reports = tmp_path / "reports" / "t"
    for i, (model, data, table) in enumerate(plan):
        served["model"] = model
        cfg = base_config(tmp_path, data, server.base_url, prices=str(table))
        cfg["scorers"] = [{"name": "exact", "type": "exact_match", "expected": "{answer}"}]
        res = cli("run", write_config(tmp_path, cfg), "--no-progress", "--run-dir", reports / f"n{i}")
        assert res.code == 0, res.err
    h = build_history(str(reports))
    assert sorted((d.index, d.kind) for d in h.drift) == [(1, "served model"), (2, "dataset"), (3, "prices")]
    model = next(d for d in h.drift if d.kind == "served model")
    assert (model.before, model.after) == ("gemini-2.5-flash-lite-001", "gemini-2.5-flash-lite-002")
    assert next(d for d in h.drift if d.kind == "dataset").label == ""  # the whole run's


# ---------------------------------------------------------------- object storage


def test_history_reads_runs_on_s3(tmp_path: Path, dataset: Path, cli: Any, s3_server: S3Server) -> None:
    cfg = base_config(tmp_path, dataset, reports_dir="s3://evals/team")  # type: ignore[arg-type]
    cfg["scorers"] = [{"name": "exact", "type": "exact_match", "expected": "{answer}"}]
    config = write_config(tmp_path, cfg)
    urls = []
    for _ in range(2):
        res = cli("run", config, "--no-progress")
        assert res.code == 0, res.err
        urls.append(res.out.strip().splitlines()[-1])
    stopped = cli("run", config, "--no-progress", "--max-requests", "1")
    assert stopped.code == 1
    res = cli("history", "s3://evals/team/t", "--out", tmp_path / "h.json")
    assert res.code == 0, res.err
    data = orjson.loads((tmp_path / "h.json").read_bytes())
    assert [r["run_id"] for r in data["runs"]] == [u.rsplit("/", 1)[-1] for u in urls]
    assert "status stopped" in res.err
    name = urls[0].rsplit("/", 1)[-1]
    one = cli("history", f"s3://evals/team/t/{name[:-1]}[{name[-1]}]", "--out", tmp_path / "g.json")  # a glob
    assert one.code == 0, one.err
    assert [r["run_id"] for r in orjson.loads((tmp_path / "g.json").read_bytes())["runs"]] == [name]
    nothing = cli("history", "s3://evals/team/none")
    assert nothing.code == 2 and nothing.err.count("\n") == 1 and "matches no run directory" in nothing.err


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["{tmp}/nope"], "no such directory"),
        (["{tmp}/empty/*"], "matches no run directory"),
        (["{tmp}/empty"], "matches no run directory"),
        (["{tmp}/junk"], "no completed run to show (1 skipped: x: no manifest.json"),
        (["{tmp}/empty", "--last", "0"], "--last: must be at least 1, got 0"),
        (["{tmp}/empty", "--out", "{tmp}/h.txt"], "the extension says the format"),
        (["{tmp}/empty", "--alpha", "1.5"], "--alpha 1.5: must be between 0 and 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    from evalrun.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "junk" / "x").mkdir(parents=True)
    try:
        code = main(["history", *(a.format(tmp=tmp_path) for a in args)])
    except SystemExit as exc:  # argparse's own refusals (--last 0) exit from inside parse_args
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and said in err and "Traceback" not in err
    assert not (tmp_path / "h.txt").exists()


# ---------------------------------------------------------------- the step test


def _point(rate: float, eff: float, rows: int | None = None, answers: int | None = None) -> Point:
    return Point("r", rate, None, None, eff, rows, answers, None, None, None, None, None)


def test_two_proportion_test_against_hand_computed_values() -> None:
    # 40/100 vs 60/100: pooled 0.5, se = sqrt(0.25 · 0.02) = 0.0707, z = 2.828, p = 0.00468
    assert two_proportion_p(0.4, 100, 0.6, 100) == pytest.approx(0.004678, abs=1e-5)
    assert two_proportion_p(1.0, 10, 1.0, 50) == 1.0
    # the pooled earlier rate is weighted by effective rows: (0.5·10 + 0.8·30) / 40 = 0.725
    last, before, p = step_p([_point(0.5, 10), _point(0.8, 30), _point(0.7, 20)])  # type: ignore[misc]
    assert (last, before) == (0.7, pytest.approx(0.725))
    assert p == pytest.approx(two_proportion_p(0.7, 20, 0.725, 40))
    # with repeats the last night's variance comes from its 20 rows: t with 19 df, divisor rows − 1
    _, _, p_rep = step_p([_point(0.8, 30), _point(0.7, 25, rows=20, answers=60)])  # type: ignore[misc]
    assert p_rep == pytest.approx(two_proportion_p(0.7, 25 * 19 / 20, 0.8, 30, df=19))
    assert p_rep > two_proportion_p(0.7, 25, 0.8, 30)  # the z-test would claim more
    _, _, p_one = step_p([_point(0.8, 30), _point(0.7, 20, rows=20, answers=20)])  # type: ignore[misc]
    assert p_one == two_proportion_p(0.7, 20, 0.8, 30)  # one answer per row: the textbook z-test
    assert step_p([None, _point(0.5, 10)]) is None  # nothing before to compare with
    assert step_p([_point(0.5, 10), None]) is None  # the last night lacks the cell


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [(2.0, 10, 0.073388), (2.228139, 10, 0.05), (-3.0, 4, 0.039942), (12.706205, 1, 0.05), (1.959964, 1e7, 0.05),
     (0.0, 5, 1.0), (1e-12, 59, 1.0), (40.0, 59, 1.89e-44)],
)  # fmt: skip
def test_student_t_against_table_values(t: float, df: float, p: float) -> None:
    assert student_t_p(t, df) == pytest.approx(p, rel=1e-4, abs=1e-12)


def test_benjamini_hochberg_against_hand_computed_values() -> None:
    # p = 0.01, 0.04, 0.03, 0.20 (m = 4): sorted 0.01, 0.03, 0.04, 0.20 → 0.04, 0.0533, 0.0533, 0.20
    assert bh_adjust([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.20])
    steps = adjust([(0.2, 0.5, 0.01), None, (0.5, 0.5, 0.9)], 0.05)
    assert steps[1] is None and steps[0] is not None and steps[0].flagged and steps[0].q_value == pytest.approx(0.02)
    assert steps[2] is not None and not steps[2].flagged


ROWS, REPEATS = 60, 5


def _row_chances(rng: np.random.Generator, p: float, spread: float = 0.3) -> np.ndarray:
    """Each dataset row's own chance of passing, around p: a strong row effect (Beta, variance
    spread · p(1 − p)), as hard and easy questions give."""
    return rng.beta(p * (1 / spread - 1), (1 - p) * (1 / spread - 1), size=ROWS)


def _night(rng: np.random.Generator, chances: np.ndarray, naive: bool = False) -> Point:
    """One night of one cell as its summary says it: REPEATS answers per row, then the project's
    own repeat-aware rate and effective rows (naive: every answer counted as a row)."""
    passes = rng.binomial(REPEATS, chances)
    r = row_rate(passes.tolist(), [REPEATS] * ROWS)
    return _point(r.rate, ROWS * REPEATS if naive else r.effective_rows, ROWS, ROWS * REPEATS)


def _history_flags(
    rng: np.random.Generator, cells: int, nights: int, drop: float = 0.0, fresh: bool = False, naive: bool = False
) -> list[bool]:
    """Which cells' last-night step is flagged in one seeded history. The same dataset rows every
    night (as a nightly job has), or `fresh` rows each night (no shared row effect: the least
    favourable case for the test); cell 0 drops by `drop` on the last night."""
    tests = []
    for c in range(cells):
        p = rng.uniform(0.3, 0.85)
        fixed = _row_chances(rng, p)
        points = []
        for n in range(nights):
            shift = drop if c == 0 and n == nights - 1 else 0.0
            chances = _row_chances(rng, p) if fresh else fixed
            points.append(_night(rng, np.clip(chances - shift, 0, 1), naive))
        tests.append(step_p(points))
    return [s is not None and s.flagged for s in adjust(tests, 0.05)]


def test_noise_across_many_cells_raises_no_more_false_flags_than_alpha() -> None:
    """200 seeded histories of 12 cells × 10 nights where nothing changed: at most alpha of them
    flag any step."""
    rng = np.random.default_rng(20261206)
    false = sum(any(_history_flags(rng, 12, 10)) for _ in range(200))
    assert false <= 0.05 * 200, f"{false} of 200 quiet histories flagged a step"


def test_noise_on_fresh_rows_each_night_stays_at_alpha() -> None:
    """The least favourable case: new rows every night (nothing shared makes the test
    conservative). Over 500 histories the false-flag rate must not be significantly above alpha
    (one-sided binomial at 1 %: ≤ 36 of 500; measured 4.3 % over 3,000 seeded histories)."""
    rng = np.random.default_rng(99)
    false = sum(any(_history_flags(rng, 12, 10, fresh=True)) for _ in range(500))
    assert false <= 36, f"{false} of 500 quiet histories flagged a step"
    # had repeats been counted as independent answers, the row effect would flag noise
    rng = np.random.default_rng(99)
    naive = sum(any(_history_flags(rng, 12, 10, fresh=True, naive=True)) for _ in range(100))
    assert naive > 0.05 * 100 * 4, naive


def test_a_real_drop_is_flagged_among_many_cells() -> None:
    """One cell of 12 drops 20 points on the last night (60 rows × 5 repeats): measured power
    95 % over 200 seeded histories (66 % at 15 points, 14 % at 10)."""
    rng = np.random.default_rng(7)
    runs = [_history_flags(rng, 12, 10, drop=0.2) for _ in range(100)]
    caught = sum(flags[0] for flags in runs)
    assert caught >= 88, f"a 20-point drop flagged in only {caught} of 100 histories"
    assert sum(any(flags[1:]) for flags in runs) <= 0.05 * 100  # the quiet cells stay quiet


def test_a_summary_without_eff_rows_counts_its_rows(nights: Path, tmp_path: Path) -> None:
    """Summaries written before eff_rows existed: the test counts rows (never more than n_eff)."""
    old = tmp_path / "old"
    for i in range(4):
        shutil.copytree(nights / f"n{i}", old / f"n{i}")
        t = pq.read_table(old / f"n{i}" / "summary.parquet")
        pq.write_table(
            t.drop([c for c in t.column_names if c.startswith("eff_rows_")]), old / f"n{i}" / "summary.parquet"
        )
    h = build_history(str(old))
    assert {p.eff_rows for s in h.series for p in s.points if p} == {20.0}  # the 20 dataset rows
    assert [s.label for s in h.flagged] == ["gemini-3-pro-preview"]
    assert "gemini-3-pro-preview" in markdown(h) and to_csv(h).count("\n") == 9


def test_two_providers_workers_a_shard_and_a_single_run_dir(tmp_path: Path, dataset: Path, cli: Any) -> None:
    """Cells of one model on two providers stay apart (the label names the provider); a run
    merged from --workers is a night; one shard of a sharded run is not; a run directory alone is
    a history of one night."""
    sim = {"kind": "simulator", "simulator": {"latency_scale": 0}}
    cfg = base_config(tmp_path, dataset)
    cfg.pop("provider")
    cfg["providers"] = {"east": sim, "west": sim}
    cfg["models"] = [{"name": MODELS[0], "provider": "east"}, {"name": MODELS[0], "provider": "west"}]
    cfg["scorers"] = [{"name": "exact", "type": "exact_match", "expected": "{answer}"}]
    config = write_config(tmp_path, cfg)
    exp = tmp_path / "reports" / "t"
    for name, extra in (("n0", []), ("n1", ["--workers", "2"]), ("n2-shard", ["--shard", "1/2"])):
        assert cli("run", config, "--no-progress", "--run-dir", exp / name, *extra).code == 0
    h = build_history(str(exp))
    assert len(h.runs) == 2 and h.drift == ()  # a merged --workers run is one night, like any other
    assert h.skipped == ("n2-shard: one shard of a sharded run (merge the shards first)",)
    assert sorted(s.label for s in h.series) == [f"east · {MODELS[0]}", f"west · {MODELS[0]}"]
    assert all(s.step is not None and not s.step.flagged for s in h.series)
    one = build_history(str(exp / "n1"))
    assert len(one.runs) == 1 and all(s.step is None for s in one.series)
    assert "no step tested" in markdown(one)


def test_check_models_marks_a_model_the_provider_no_longer_lists(
    tmp_path: Path, dataset: Path, cli: Any, loop_thread: Any
) -> None:
    """A fake OpenAI-compatible server on 127.0.0.1 whose GET /v1/models list the test edits."""
    from aiohttp import web

    listed = {"ids": [MODELS[0], "another-model"], "models": 0}

    async def chat(request: web.Request) -> web.Response:
        return web.json_response(completion("3", model=MODELS[0]))

    async def models(request: web.Request) -> web.Response:
        listed["models"] += 1
        return web.json_response({"object": "list", "data": [{"id": i, "object": "model"} for i in listed["ids"]]})

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    runner, port = loop_thread.call(start())
    try:
        cfg = base_config(tmp_path, dataset, f"http://127.0.0.1:{port}/v1")
        cfg["scorers"] = [{"name": "exact", "type": "exact_match", "expected": "{answer}"}]
        exp = tmp_path / "reports" / "t"
        for name in ("n0", "n1"):
            assert cli("run", write_config(tmp_path, cfg), "--no-progress", "--run-dir", exp / name).code == 0
        assert cli("history", exp, "--out", tmp_path / "a.json").code == 0
        assert listed["models"] == 0  # not asked unless --check-models
        res = cli("history", exp, "--check-models", "--out", tmp_path / "b.json")
        assert res.code == 0 and listed["models"] == 1
        assert orjson.loads((tmp_path / "b.json").read_bytes())["drift"] == []
        listed["ids"] = ["another-model"]  # the provider retired the model
        res = cli("history", exp, "--check-models", "--out", tmp_path / "c.json")
        assert res.code == 0, res.err
        drift = orjson.loads((tmp_path / "c.json").read_bytes())["drift"]
        assert [(d["index"], d["kind"], d["label"], d["before"]) for d in drift] == [
            (1, "model list", MODELS[0], MODELS[0])
        ]
        assert f"not listed at http://127.0.0.1:{port}/v1/models" in drift[0]["after"]
        assert "model list changed" in res.out
    finally:
        loop_thread.call(runner.cleanup())


def test_runs_without_a_scorer_still_show_cost_latency_and_errors(tmp_path: Path, dataset: Path, cli: Any) -> None:
    config = write_config(tmp_path, base_config(tmp_path, dataset))
    exp = tmp_path / "reports" / "t"
    for name in ("n0", "n1"):
        assert cli("run", config, "--no-progress", "--run-dir", exp / name).code == 0
    h = build_history(str(exp))
    assert [(s.label, s.scorer, s.step) for s in h.series] == [(MODELS[0], "", None)]
    assert all(p is not None and p.rate is None and p.latency_p50_s is not None for p in h.series[0].points)
    res = cli("history", exp, "--alert")
    assert res.code == 0 and "the runs have no scorer" in res.out
