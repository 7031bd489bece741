"""`evalrun report`: one self-contained HTML page per run, opened in headless Chromium.

The runs are real simulator runs (two models × two temperatures × streamed or not, logprobs,
scorers, injected 500s for errors and retries). In the browser: no console or page error, no
request leaves the file, every chart has one mark per cell or model, the table sorts, and
untrusted text (row ids, answers, the description) stays text.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import base_config, write_config

from evalrun.analysis.compare import Gate, compare_runs
from evalrun.cli import main
from evalrun.report.charts import pareto_front
from evalrun.report.html import write_report

CHROMIUM = os.environ.get("EVALRUN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MODELS = ["gemini-2.5-flash-lite", "gemini-3-pro-preview"]
CELLS = 8  # 2 models × 2 temperatures × stream on/off
HOSTILE = '<img src=x onerror="window.__pwned=1">'
PRICES = {
    "gemini-2.5-flash-lite": {"input": 0.1, "output": 0.4},
    "gemini-3-pro-preview": {"input": 2.0, "output": 12.0, "cached_input": 0.2},
}


def _config(tmp: Path, seed: int, priced: bool, scorers: bool = True) -> dict[str, Any]:
    data = tmp / "rows.jsonl"
    data.write_bytes(
        b"".join(
            orjson.dumps({"id": f"q{i}{HOSTILE}", "question": f"{i * 7 + 3} + {i * 5 + 2}", "answer": i * 12 + 5})
            + b"\n"
            for i in range(12)
        )
    )
    cfg = base_config(tmp, data)
    cfg["description"] = f"<script>window.__pwned=2</script> {HOSTILE}"
    cfg["providers"]["sim"]["simulator"].update(seed=seed, rate_500=0.08, status_5xx=500)
    cfg["models"] = MODELS
    cfg["params"] = {"max_tokens": 512, "reasoning_effort": "low", "logprobs": True, "top_logprobs": 2}
    cfg["grid"] = {"temperature": [0.0, 1.0], "stream": [False, True]}
    cfg["retry"]["max_attempts"] = 2  # some 500s are retried, some end as errors
    if scorers:
        cfg["scorers"] = [
            {"name": "correct", "type": "numeric", "expected": "{answer}"},
            {"name": "digits", "type": "regex", "pattern": r"^\d+$"},
        ]
    if priced:
        cfg["prices"] = {"models": PRICES}
    return cfg


def _run(tmp: Path, cfg: dict[str, Any], name: str) -> Path:
    run_dir = tmp / "reports" / name
    assert main(["run", str(write_config(tmp, cfg, f"{name}.yaml")), "--no-progress", "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base: no prices; new: priced, another simulator seed (items flip), hostile answers."""
    tmp = tmp_path_factory.mktemp("report")
    base = _run(tmp, _config(tmp, seed=0, priced=False), "base")
    new = _run(tmp, _config(tmp, seed=1, priced=True), "new")
    table = pq.read_table(new / "results.parquet")  # answers are untrusted too: make them hostile
    i = table.schema.get_field_index("content")
    table = table.set_column(i, "content", pc.binary_join_element_wise(table["content"], pa.scalar(HOSTILE), ""))
    pq.write_table(table, new / "results.parquet")
    return {"tmp": tmp, "base": base, "new": new}


@contextmanager
def _browser_page(path: Path) -> Iterator[tuple[Any, list[str], list[str]]]:
    """(page, console/page errors, requested URLs) for the report at `path`, in headless Chromium."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the playwright Python package is not installed (pip install playwright; no browser download needed)"
    if reason is None and not Path(CHROMIUM).exists():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set EVALRUN_CHROMIUM)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the report's browser test")
        pytest.skip(reason)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            urls: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: urls.append(r.url))
            page.goto(path.as_uri())
            yield page, problems, urls
        finally:
            browser.close()


FREE_POINT = """() => {
  for (const c of document.querySelectorAll("#score-cost .by-scorer:not([hidden]) circle.pt")) {
    const r = c.getBoundingClientRect(), x = r.x + r.width / 2, y = r.y + r.height / 2;
    if (document.elementFromPoint(x, y) === c) return [x, y];
  }
}"""


def _column(page: Any, table: str, index: int) -> list[str]:
    return page.eval_on_selector_all(f"#{table} tbody tr", f"rows => rows.map(r => r.cells[{index}].dataset.sort)")


def test_report_renders_in_chromium(runs) -> None:
    new = runs["new"]
    out = write_report(new, compare_base=runs["base"])
    assert out == new / "report.html"
    results = pd.read_parquet(new / "results.parquet")
    req = results[results.choice_index.isna() | (results.choice_index == 0)]
    with _browser_page(out) as (page, problems, urls):
        assert problems == []  # the script ran without an error
        count = lambda sel: page.locator(sel).count()  # noqa: E731
        # one point per cell in the scatter (one scatter per scorer), some on the Pareto front
        assert count("#score-cost circle.pt") == 2 * CELLS
        assert count("#score-cost .by-scorer:not([hidden]) circle.pt") == CELLS
        assert 1 <= count("#score-cost .by-scorer:not([hidden]) circle.pt.front") <= CELLS
        assert "cost per request (USD)" in page.inner_text("#score-cost")
        # one latency box per model; streamed cells add a time-to-first-token box
        assert count("#latency rect.box-latency") == len(MODELS)
        assert count("#latency rect.box-ttft") == len(MODELS)
        # one token stack per cell, each with its prompt and reasoning segments
        assert count("#tokens g.tok-stack") == CELLS
        assert count("#tokens g.tok-stack rect.seg-prompt") == CELLS
        assert count("#tokens g.tok-stack rect.seg-reasoning") == CELLS
        # the timeline shows what happened: ok requests, the errors and the retries of the injected 500s
        assert count("#timeline rect.tl-ok") >= 1
        assert (count("#timeline rect.tl-err") > 0) == bool((req.status == "error").any())
        assert (count("#timeline circle.retry-pt") > 0) == bool((req.attempts > 1).any())
        for chart in ("score-cost .by-scorer:not([hidden])", "latency", "tokens", "timeline"):
            assert page.locator(f"#{chart} svg").bounding_box()["height"] > 100, chart
        # the summary: one row per cell; clicking a header sorts, clicking again reverses
        assert count("#summary-table tbody tr") == CELLS
        heads = page.locator("#summary-table thead th")
        rate = next(i for i in range(heads.count()) if heads.nth(i).inner_text().startswith("pass · correct"))
        before = _column(page, "summary-table", rate)
        heads.nth(rate).click()
        ascending = _column(page, "summary-table", rate)
        assert sorted(before, key=float) == ascending
        heads.nth(rate).click()
        assert _column(page, "summary-table", rate) == ascending[::-1]
        assert heads.nth(rate).get_attribute("aria-sort") == "descending"
        heads.nth(0).click()
        assert _column(page, "summary-table", 0) == sorted(MODELS * (CELLS // len(MODELS)))
        # hovering a point shows its tooltip (a point no other mark covers: identical cells coincide)
        page.locator("#score-cost .by-scorer:not([hidden]) svg").evaluate(
            "svg => svg.scrollIntoView({block: 'center'})"
        )
        page.mouse.move(*page.evaluate(FREE_POINT))
        page.wait_for_function("getComputedStyle(document.querySelector('.tip')).opacity === '1'", timeout=5000)
        assert "pass rate" in page.locator(".tip").inner_text()
        hostile = orjson.dumps(HOSTILE).decode()
        page.evaluate(f"document.querySelector('h1').dataset.tip = {hostile}")
        page.locator("h1").hover()  # any tooltip text, e.g. an error message, is set as text
        page.wait_for_function(f"document.querySelector('.tip').textContent === {hostile}", timeout=5000)
        # the compare view: one row per cell, flipped items with both answers
        assert count("#compare-table tbody tr") == CELLS
        verdicts = compare_runs(runs["base"], new, Gate(None, 0.02, 0.05)).cells.verdict
        for verdict in ("regressed", "improved", "no-change"):  # each row highlighted by its verdict
            assert count(f"#compare-table tr.{verdict}") == (verdicts == verdict.replace("-", " ")).sum(), verdict
        flips = count("#compare tr.flip")
        assert flips >= 1
        details = page.locator("#compare details.flips").first
        details.locator("summary").click()  # collapsed unless the cell regressed
        assert HOSTILE in details.locator("tr.flip").first.inner_text()  # row id and answers shown as text
        # untrusted text never became markup, and nothing was fetched
        assert page.evaluate("window.__pwned") is None
        assert count("img") == 0 and count("main script") == 0
        assert "<script>window.__pwned=2</script>" in page.inner_text("header")
        assert [u for u in urls if not u.startswith(("file:", "data:", "about:"))] == []
        assert problems == []


def test_report_of_an_unpriced_run_plots_tokens(runs) -> None:
    out = write_report(runs["base"], out=runs["tmp"] / "elsewhere" / "base.html")
    page = out.read_text()
    assert "total tokens per request instead of cost" in page
    assert page.count('class="pt') == 2 * CELLS and page.count('class="tok-stack"') == CELLS  # a scatter per scorer
    assert "cost / correct" not in page and "prices <b>" not in page
    assert HOSTILE not in page and "<script>window.__pwned" not in page  # escaped
    assert 'id="compare"' not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_report_without_scorers_says_so(runs) -> None:
    tmp = runs["tmp"]
    run = _run(tmp, _config(tmp, seed=0, priced=False, scorers=False), "plain")
    page = write_report(run).read_text()
    assert "This run has no scorers" in page and 'class="pt' not in page
    assert page.count('class="tok-stack"') == CELLS and page.count('class="box box-latency"') == len(MODELS)


def test_report_needs_a_finished_run(tmp_path) -> None:
    from evalrun.errors import ConfigError

    with pytest.raises(ConfigError, match="not a finished run"):
        write_report(tmp_path)


@pytest.mark.parametrize(
    "points, front",
    [
        ([(1, 0.5), (2, 0.7), (3, 0.6)], [0, 1]),  # dearer and worse: dominated
        ([(1, 0.5), (1, 0.5)], [0, 1]),  # ties dominate nothing
        ([(1, 0.5), (1, 0.6)], [1]),  # as cheap and better
        ([(1, 0.9), (2, 0.5), (3, 0.1)], [0]),
        ([(0.001, 0.2), (0.01, 0.5), (0.1, 0.9)], [0, 1, 2]),
    ],
)
def test_pareto_front(points, front) -> None:
    assert pareto_front(points) == front


def test_cli_report(runs, capsys) -> None:
    out = runs["tmp"] / "cli.html"
    assert main(["report", str(runs["new"]), "--compare", str(runs["base"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert 'id="compare-table"' in out.read_text()
    assert main(["report", str(runs["tmp"] / "nope")]) == 2
