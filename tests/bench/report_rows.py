"""The report's row explorer at scale: `python tests/bench/report_rows.py [ROWS]` runs a
40-row, two-model experiment on the simulator, repeats its rows under new ids up to ROWS
(default 20,000), writes the report, and times it in headless Chromium: page load to the list
drawn, a filter, a search, and a scroll to the end (the list draws only the rows in view)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))  # the tests' helpers

from test_report import _browser_page
from test_report_rows import _repeat_rows, _run

from evalrun.report.html import write_report


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        run = _run(Path(tmp), "new", rate_500=0.3, status_5xx=500)
        big = _repeat_rows(run, Path(tmp) / "big", rows // 40)
        t = time.perf_counter()
        out = write_report(big)
        written = time.perf_counter() - t
        print(f"{rows:,} rows: report written in {written:.2f} s, {out.stat().st_size / 1e6:.1f} MB")
        with _browser_page(out) as (page, problems, _):
            loaded = page.evaluate("performance.now()")
            t = time.perf_counter()
            page.select_option("#xp-filter", "failing")
            filtered = time.perf_counter() - t
            page.select_option("#xp-filter", "all")
            t = time.perf_counter()
            page.fill("#xp-search", "q3-12")
            page.wait_for_function("document.getElementById('xp-count').textContent.indexOf(' of ') < 6")
            searched = time.perf_counter() - t  # includes the 120 ms typing debounce
            page.fill("#xp-search", "")
            page.wait_for_function("document.getElementById('xp-count').textContent.startsWith('20')")
            t = time.perf_counter()
            page.locator("#xp-list").evaluate(
                "l => { l.scrollTop = l.scrollHeight; l.dispatchEvent(new Event('scroll')); }"
            )
            drawn = page.locator("#xp-list .xp-row").count()
            scrolled = time.perf_counter() - t
            assert problems == [], problems
        print(
            f"page loaded and drawn in {loaded / 1000:.2f} s; filter {filtered * 1000:.0f} ms; search "
            f"{searched * 1000:.0f} ms (120 ms of it debounce); scroll to the end {scrolled * 1000:.0f} ms, "
            f"{drawn} rows in the DOM"
        )


if __name__ == "__main__":
    main()
