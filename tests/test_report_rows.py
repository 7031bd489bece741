"""The report leads with the comparison's verdict, and its row explorer stays usable at 20,000 rows.

Real simulator runs; the 20,000-row run is a real run's results.parquet with its rows repeated
under new ids (the report reads nothing else). In headless Chromium: the verdict is the first
thing under the title, the list draws only the rows in view, filters and search agree with the
Parquet file, a row shows the answers of the chosen cells side by side, judge reasoning included,
and untrusted text stays text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import arithmetic_rows, base_config, write_config
from test_report import HOSTILE, _browser_page

from evalrun.cli import main
from evalrun.report.data import load_run
from evalrun.report.explorer import EXPLORER_CHARS, explorer_data
from evalrun.report.html import write_report

MODELS = ["gemini-2.5-flash-lite", "gemini-3-pro-preview"]
ROWS = 20_000


def _dataset(tmp: Path, n: int = 40) -> Path:
    return arithmetic_rows(tmp / "rows.jsonl", n)


def _run(tmp: Path, name: str, **sim: Any) -> Path:
    cfg = base_config(tmp, _dataset(tmp), models=MODELS, params={"max_tokens": 2048, "reasoning_effort": "low"})
    cfg["scorers"] = [{"name": "correct", "type": "numeric", "expected": "{answer}"}]
    cfg["providers"]["sim"]["simulator"].update(sim)
    cfg["retry"]["max_attempts"] = 1  # injected 500s end as errors: a regression to find
    run_dir = tmp / "reports" / "t" / name
    code = main(["run", str(write_config(tmp, cfg, f"{name}.yaml")), "--no-progress", "--run-dir", str(run_dir)])
    assert code == 0
    return run_dir


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base: a clean run; new: the same experiment later, half its requests failing."""
    tmp = tmp_path_factory.mktemp("rows")
    return {"tmp": tmp, "base": _run(tmp, "a-base"), "new": _run(tmp, "b-new", rate_500=0.6, status_5xx=500)}


def _repeat_rows(run_dir: Path, out: Path, copies: int) -> Path:
    """The run's results with every row repeated `copies` times under new ids (a hostile one
    among them), and its manifest."""
    out.mkdir(parents=True)
    table = pq.read_table(run_dir / "results.parquet")
    parts = []
    for k in range(copies):
        suffix = pa.scalar(f"-{k}" if k else f"-0{HOSTILE}")
        part = table.set_column(
            table.schema.get_field_index("row_id"), "row_id", pc.binary_join_element_wise(table["row_id"], suffix, "")
        )
        i = part.schema.get_field_index("request_id")
        parts.append(part.set_column(i, "request_id", pc.binary_join_element_wise(part["request_id"], suffix, "")))
    big = pa.concat_tables(parts)
    content = big.schema.get_field_index("content")
    big = big.set_column(content, "content", pc.binary_join_element_wise(big["content"], pa.scalar(HOSTILE), ""))
    pq.write_table(big, out / "results.parquet")
    (out / "manifest.json").write_bytes((run_dir / "manifest.json").read_bytes())
    return out


def test_twenty_thousand_rows_are_drawn_in_view_only_and_filter_as_the_file_says(pair) -> None:
    big = _repeat_rows(pair["new"], pair["tmp"] / "big", ROWS // 40)
    out = write_report(big)
    results = pd.read_parquet(big / "results.parquet")
    failing = results[(results.pass_correct != True) | (results.status == "error")].row_id.nunique()  # noqa: E712
    errors = results[results.status == "error"].row_id.nunique()
    assert 0 < errors <= failing < ROWS
    last = f"q39-{ROWS // 40 - 1}"  # ids sort with their numbers as numbers: q0-0 … q0-499, q1-0 … q39-499
    with _browser_page(out) as (page, problems, _):
        assert problems == []
        assert page.inner_text("#xp-count") == f"{ROWS:,} of {ROWS:,} rows"
        assert page.locator("#xp-list .xp-row").count() < 100  # only the rows in view
        page.locator("#xp-list").evaluate(
            "l => { l.scrollTop = l.scrollHeight; l.dispatchEvent(new Event('scroll')); }"
        )
        assert page.locator("#xp-list .xp-row").last.get_attribute("data-row") == last
        assert page.locator("#xp-list .xp-row").count() < 100
        page.select_option("#xp-filter", "failing")
        assert page.inner_text("#xp-count") == f"{failing:,} of {ROWS:,} rows"
        page.select_option("#xp-filter", "errors")
        assert page.inner_text("#xp-count") == f"{errors:,} of {ROWS:,} rows"
        page.select_option("#xp-filter", "all")
        page.fill("#xp-search", "q3-123")
        page.wait_for_function("document.getElementById('xp-count').textContent.startsWith('1 of')", timeout=5000)
        page.locator("#xp-list .xp-row").first.click()
        columns = page.locator("#xp-detail .xp-col")
        assert columns.count() == len(MODELS)  # every cell, side by side
        answers = results[results.row_id == "q3-123"].set_index("model")
        for i, model in enumerate(MODELS):
            text = columns.nth(i).inner_text()
            assert model in text
            r = answers.loc[model]
            assert (r.content if r.status == "ok" else r.error_type) in text
        page.locator("#xp-cells input").first.uncheck()  # one cell fewer side by side
        assert columns.count() == len(MODELS) - 1
        # hostile row ids and answers were shown as text, never run
        page.fill("#xp-search", "q0-0")
        page.wait_for_function(
            "document.querySelector('#xp-list .xp-row').dataset.row.startsWith('q0-0')", timeout=5000
        )
        assert page.inner_text("#xp-count").startswith("1 of")
        assert HOSTILE in page.locator("#xp-list .xp-row").first.inner_text()
        assert page.evaluate("window.__pwned") is None and page.locator("img").count() == 0
        assert problems == []


def test_a_regression_is_the_first_thing_on_the_page(pair, capsys) -> None:
    # --compare latest: the latest completed earlier run of the experiment (a-base), found by itself
    assert main(["report", str(pair["new"]), "--compare", "latest"]) == 0
    out = pair["new"] / "report.html"
    html = out.read_text()
    assert "<title>FAIL · " in html
    flips = pd.read_parquet(pair["new"] / "results.parquet")
    with _browser_page(out) as (page, problems, _):
        assert problems == []
        verdict = page.locator("header .verdict.bad")
        assert verdict.count() == 1
        assert "a-base" in verdict.inner_text() and "regressed" in verdict.inner_text()
        first = page.evaluate(
            "() => [...document.querySelectorAll('header ~ *, header .verdict')].map(e => e.className)[0]"
        )
        assert first == "verdict bad"  # above the key figures and every chart
        regressed = page.locator("#compare-table tr.regressed").count()
        assert regressed >= 1 and verdict.locator("li").count() == regressed
        # the rows that went pass→fail, one filter away
        page.select_option("#xp-filter", "flips")
        shown = int(page.inner_text("#xp-count").split(" of ")[0].replace(",", ""))
        failed_now = flips[(flips.status == "error")].row_id.nunique()
        assert 1 <= shown <= failed_now
        page.locator("#xp-list .xp-row").first.click()
        assert "pass→fail" in page.inner_text("#xp-detail")
        assert "the base run answered" in page.inner_text("#xp-detail")


def test_a_passing_comparison_says_so_in_green(pair) -> None:
    out = write_report(pair["base"], compare_base=pair["base"], out=pair["tmp"] / "same.html")
    html = out.read_text()
    assert 'class="verdict good"' in html and "<title>FAIL" not in html
    assert html.index('class="verdict good"') < html.index('class="kpis"')
    plain = write_report(pair["base"], out=pair["tmp"] / "plain.html").read_text()
    assert 'class="verdict' not in plain  # no comparison, no verdict


def test_compare_latest_without_an_earlier_run_is_one_line(pair, capsys) -> None:
    assert main(["report", str(pair["base"]), "--compare", "latest"]) == 2
    err = capsys.readouterr().err
    assert "no earlier" in err and "Traceback" not in err


def test_the_rows_data_is_cut_escaped_and_complete(pair) -> None:
    run = load_run(pair["new"])
    data = explorer_data(run)
    results = pd.read_parquet(pair["new"] / "results.parquet")
    assert [r[0] for r in data["items"]] == sorted(results.row_id.unique(), key=lambda r: int(r[1:]))
    assert sum(len(a) for item in data["items"] for _, a in item[2]) == len(results)
    assert all(len(a[1]) <= EXPLORER_CHARS + 1 for item in data["items"] for _, answers in item[2] for a in answers)
    page = write_report(pair["new"], out=pair["tmp"] / "rows.html").read_text()
    block = page.split('<script type="application/json" id="xp-data">')[1].split("</script>")[0]
    assert "<" not in block  # nothing in the data can close its script element
    assert orjson.loads(block)["items"] == orjson.loads(orjson.dumps(data["items"]))


def test_judge_reasoning_is_shown_beside_the_answer(tmp_path) -> None:
    run_dir = tmp_path / "judged"
    config = Path(__file__).parent.parent / "configs" / "judged.yaml"
    args = ["run", str(config), "--limit", "2", "--no-progress", "--run-dir", str(run_dir)]
    assert main([*args, "--set", "providers.simulator.simulator.latency_scale=0"]) == 0
    results = pd.read_parquet(run_dir / "results.parquet")
    reasoning = results.judge_reasoning_factual.dropna()
    assert len(reasoning)
    with _browser_page(write_report(run_dir)) as (page, problems, _):
        page.locator("#xp-list .xp-row").first.click()
        judge = page.locator("#xp-detail details.xp-judge").first
        assert "judge factual" in page.inner_text("#xp-detail")
        judge.locator("summary").click()
        assert judge.inner_text().split("\n", 1)[1].strip()[:40] in "\n".join(reasoning)
        assert problems == []
