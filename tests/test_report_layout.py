"""The report's layout in headless Chromium at 1400 and 800 px: crowded cells stay apart and
legible, the reader picks the scorer, the summary fits its card, the rate-limit panel appears
only when something waited, errors sit where they happened, cut answers are pointed out."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Reply, base_config, completion
from test_report import _browser_page, _config, _run

from evalrun.report.html import write_report

WIDTHS = (1400, 800)
TEMPS = [0.0, 0.5, 1.0, 1.5]


def _rows(tmp: Path, n: int = 12) -> Path:
    p = tmp / "crowd.jsonl"
    p.write_bytes(
        b"".join(orjson.dumps({"id": f"q{i}", "question": f"{i} + {i}", "answer": 2 * i}) + b"\n" for i in range(n))
    )
    return p


def _right(payload: dict[str, Any]) -> Reply:
    a, b = map(int, re.findall(r"\d+", payload["messages"][0]["content"])[:2])
    return Reply(json=completion(str(a + b)))


@pytest.fixture(scope="module")
def pages(tmp_path_factory, loop_module) -> dict[str, Path]:
    """crowd: 8 cells, all 100 % at one price, waiting on an rpm limit; scored: the report test's
    two-scorer run; late: one request fails long after the others ended."""
    tmp = tmp_path_factory.mktemp("layout")
    srv = loop_module(default=_right)
    cfg = base_config(tmp, _rows(tmp), srv.base_url)
    cfg["models"] = ["gemini-2.5-flash-lite", "gemini-3-pro-preview"]
    cfg["grid"] = {"temperature": TEMPS}
    cfg["providers"]["sim"]["rpm"] = 6000  # one request per 10 ms: the limiter makes them wait
    cfg["scorers"] = [{"name": "correct", "type": "numeric"}]
    same = {"input": 0.1, "output": 0.4}
    cfg["prices"] = {"models": {m: same for m in cfg["models"]}}
    crowd = _run(tmp, cfg, "crowd")
    scored = _run(tmp, _config(tmp, seed=1, priced=True), "scored")
    late_srv = loop_module(default=lambda p: Reply(status=400, delay=1.0) if "0 + 0" in str(p) else _right(p))
    late = base_config(tmp, _rows(tmp, 6), late_srv.base_url)
    late["scorers"] = [{"type": "numeric"}]
    late_run = _run(tmp, late, "late")
    cut_srv = loop_module(default=lambda p: Reply(json=completion("", finish_reason="length")))
    cut = _run(tmp, base_config(tmp, _rows(tmp, 4), cut_srv.base_url) | {"scorers": [{"type": "numeric"}]}, "cut")
    pages = {n: write_report(d) for n, d in (("crowd", crowd), ("scored", scored), ("late", late_run), ("cut", cut))}
    # the same cell on 4 rows against a base of 6: the comparison says the baseline differs
    pages["compared"] = write_report(cut, compare_base=late_run, out=tmp / "compared.html")
    return pages


@pytest.fixture(scope="module")
def loop_module():
    from conftest import LoopThread, _start_scripted

    lt, runners = LoopThread(), []

    def start(default):
        state, runner = lt.call(_start_scripted([], default))
        runners.append(runner)
        return state

    yield start
    for r in runners:
        lt.call(r.cleanup())
    lt.close()


BOXES = """sel => Array.from(document.querySelectorAll(sel)).map(e => {
  const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom, e.textContent];
})"""


def _overlap(a: list[float], b: list[float], slack: float = 0.5) -> bool:
    return a[0] < b[2] - slack and b[0] < a[2] - slack and a[1] < b[3] - slack and b[1] < a[3] - slack


@pytest.mark.parametrize("width", WIDTHS)
def test_crowded_cells_do_not_overlap(pages, width) -> None:
    with _browser_page(pages["crowd"]) as (page, problems, _):
        page.set_viewport_size({"width": width, "height": 900})
        dots = page.evaluate(BOXES, "#score-cost circle.pt")
        labels = page.evaluate(BOXES, "#score-cost text.lbl")
        assert len(dots) == 2 * len(TEMPS) and problems == []
        for i, a in enumerate(dots):  # eight cells at 100 % and one price: eight dots, side by side
            assert not any(_overlap(a, b, slack=2) for b in dots[i + 1 :]), (a, dots)
        for i, a in enumerate(labels):  # no label over another label or over a dot
            assert not any(_overlap(a, b) for b in labels[i + 1 :]), (a[4], labels)
            assert not any(_overlap(a, d) for d in dots), a[4]
        text = page.inner_text("#score-cost")
        assert "drawn side by side" in text
        shown = {lbl[4] for lbl in labels}
        missing = [f"{m} · T={t:g}" for m in ("gemini-2.5-flash-lite", "gemini-3-pro-preview") for t in TEMPS]
        missing = [m for m in missing if m not in shown]
        assert all(m in text for m in missing)  # a label with no room is listed, not dropped silently


@pytest.mark.parametrize("width", WIDTHS)
def test_the_reader_picks_the_scorer(pages, width) -> None:
    with _browser_page(pages["scored"]) as (page, problems, _):
        page.set_viewport_size({"width": width, "height": 900})
        visible = "#score-cost .by-scorer:not([hidden])"
        assert "pass rate · correct" in page.inner_text(visible)
        page.select_option("#scorer-pick", "digits")
        assert page.locator(visible).count() == 1
        assert "pass rate · digits" in page.inner_text(visible)
        assert page.locator(f"{visible} svg").bounding_box()["height"] > 100
        assert problems == []


@pytest.mark.parametrize("width", WIDTHS)
def test_the_summary_table_fits_its_card(pages, width) -> None:
    with _browser_page(pages["scored"]) as (page, problems, _):
        page.set_viewport_size({"width": width, "height": 900})
        table, wrap, card = page.evaluate(
            """() => { const t = document.querySelector('#summary-table'), c = t.closest('.card');
                 return [t.scrollWidth, t.parentElement.clientWidth, c.scrollWidth - c.clientWidth]; }"""
        )
        assert card == 0  # nothing sticks out of the card at any width (a narrow page scrolls the table)
        if width >= 1400:
            assert table <= wrap, "two scorers' summary overflows its card at 1400 px"
        assert page.locator("#summary-table thead th", has_text="pass · digits").count() == 1
        assert problems == []


def test_the_rate_limit_panel_only_when_something_waited(pages) -> None:
    with _browser_page(pages["scored"]) as (page, _, _):
        assert page.locator("#timeline rect.wait-bar").count() == 0
        assert "rate-limit wait (seconds" not in page.inner_text("#timeline")
        assert "No request waited for the rate limiter." in page.inner_text("#timeline")
    with _browser_page(pages["crowd"]) as (page, _, _):
        assert page.locator("#timeline rect.wait-bar").count() >= 1
        assert "rate-limit wait (seconds" in page.inner_text("#timeline")


def test_errors_are_placed_when_they_happened(pages) -> None:
    with _browser_page(pages["late"]) as (page, _, _):
        errs = page.eval_on_selector_all("#timeline rect.tl-err", "rs => rs.map(r => r.dataset.tip)")
        oks = page.eval_on_selector_all("#timeline rect.tl-ok", "rs => rs.map(r => r.dataset.tip)")
        assert len(errs) == 1 and "1 invalid_request" in errs[0]
        start = lambda tip: float(re.match(r"([\d.]+) (m?s)", tip).group(1)) / (1000 if " ms" in tip[:8] else 1)  # noqa: E731
        # it started with the others and failed a second later: drawn a second in, after every success
        assert start(errs[0]) >= 0.9 and all(start(t) < 0.5 for t in oks), (errs, oks)
        assert "time since the first request ended" in page.inner_text("#timeline")


def test_cut_answers_are_pointed_out(pages) -> None:
    with _browser_page(pages["cut"]) as (page, problems, _):
        note = page.inner_text("#answer-notes")
        assert "4 of 4 answers cut at max_tokens, 4 empty" in note and "raise max_tokens" in note
        heads = page.eval_on_selector_all("#summary-table thead th", "hs => hs.map(h => h.textContent)")
        assert "cut at max_tokens" in heads and "empty" in heads
        assert problems == []


def test_the_comparison_says_how_the_baseline_differs(pages) -> None:
    with _browser_page(pages["compared"]) as (page, problems, _):
        warnings = page.eval_on_selector_all("#compare .banner.warn", "bs => bs.map(b => b.textContent)")
        assert any("the dataset differs" in w and "(6 rows)" in w and "(4 rows)" in w for w in warnings), warnings
        assert any("2 item(s) only in base" in w for w in warnings), warnings
        assert problems == []
