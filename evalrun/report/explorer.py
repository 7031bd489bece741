"""The report's item explorer: every dataset row of the run, the answers of its cells side by side.

A reader who sees a pass rate drop wants the rows behind it: which failed, which flipped since the
base run, which pass only sometimes (flaky over repeats), which errored — and what the models and
the judges actually said. The page holds the rows as one JSON block and assets/explorer.js draws
only the rows in view (a list of 20,000 items as DOM rows took seconds to lay out and scroll).
Answers, questions and judge reasoning are cut to EXPLORER_CHARS: the page stays a few MB at
20,000 items; the whole text is in results.parquet.

Everything here is untrusted text (dataset rows, model answers): it goes into the page as JSON
whose `<` are escaped, and the script puts it on screen with textContent only.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson

from evalrun.report.format import esc, is_missing
from evalrun.run.store import RESULTS

if TYPE_CHECKING:
    import pandas as pd

    from evalrun.analysis.compare import Comparison
    from evalrun.report.data import Run

EXPLORER_CHARS = 600
BASE_COLUMNS = ("row_id", "cell_id", "repeat", "choice_index", "content", "status", "error_type", "error_message")
NUMBERS = ("cost_total", "latency_s")


def explorer(run: Run, comparison: Comparison | None = None) -> tuple[str, str]:
    """The explorer's section body (controls, list, detail pane) and its data block; the data
    goes after <main>: the page's content holds no script."""
    data = explorer_data(run, comparison)
    if not data["items"]:
        return '<p class="empty">No rows were recorded.</p>', ""
    flips = (
        '<option value="flips">rows that went pass→fail since the base run</option>'
        if comparison is not None and data["flips"]
        else ""
    )
    # JSON inside <script>: only "</script>" or "<!--" could end it early, and both need a "<"
    payload = orjson.dumps(data).decode().replace("<", "\\u003c")
    body = (
        '<div class="xp-controls">'
        '<label>show <select id="xp-filter" aria-label="which rows">'
        '<option value="all">all rows</option><option value="failing">rows with a failing answer</option>'
        '<option value="flaky">flaky rows (pass in some answers of a cell, fail in others)</option>'
        f'<option value="errors">rows with an error</option>{flips}</select></label>'
        '<input id="xp-search" type="search" placeholder="search row id, question, answers" aria-label="search">'
        '<span id="xp-count" class="sub"></span></div>'
        '<div id="xp-cells" class="xp-cells" aria-label="cells side by side"></div>'
        '<div id="xp-list" class="xp-list" tabindex="0"><div class="xp-space"></div></div>'
        '<div id="xp-detail" class="xp-detail"><p class="sub">Click a row to see its answers side by side.</p></div>'
    )
    return body, f'<script type="application/json" id="xp-data">{payload}</script>'


def explorer_data(run: Run, comparison: Comparison | None = None) -> dict[str, Any]:
    """{cells: [[id, label, colour]], scorer, items: [[row_id, question, [[cell, answers]…]]],
    flips: {row_id: [[compared cell, direction, classes, base answer]…]}}, items in row-id order
    (numbers in ids as numbers). An answer is [pass (1/0/None), text, cost, latency, error,
    [[judge, label, reasoning]…]]."""
    frame = _read(run)
    cells = [] if run.cells.empty else run.cells[["cell_id", "label", "model"]].to_dict("records")
    index = {c["cell_id"]: i for i, c in enumerate(cells)}
    judges = sorted(c[len("judge_reasoning_") :] for c in frame.columns if c.startswith("judge_reasoning_"))
    questions = _questions(frame)
    items: dict[str, list[list[Any]]] = {}
    frame = frame[frame.cell_id.isin(index)].sort_values(["repeat", "choice_index"], kind="stable")
    for r in frame.to_dict("records"):
        answers = items.setdefault(str(r["row_id"]), [[] for _ in cells])[index[r["cell_id"]]]
        answers.append(_answer(r, run.scorer, judges))
    flips: dict[str, list[list[str]]] = {}
    if comparison is not None and not comparison.flips.empty:
        for f in comparison.flips.to_dict("records"):
            said = [f["cell"], f["direction"], f"{f['base_class']} → {f['new_class']}", _cut(_text(f["base_content"]))]
            flips.setdefault(str(f["row_id"]), []).append(said)
    return {
        "cells": [[c["cell_id"], c["label"], run.colours.get(c["model"], "#888")] for c in cells],
        "scorer": run.scorer,
        "items": [
            [row, questions.get(row, ""), [[i, a] for i, a in enumerate(per_cell) if a]]
            for row, per_cell in sorted(items.items(), key=lambda kv: _natural(kv[0]))
        ],
        "flips": flips,
    }


def _read(run: Run) -> pd.DataFrame:
    import pyarrow.parquet as pq

    names = set(pq.read_schema(run.dir / RESULTS).names)
    wanted = [*BASE_COLUMNS, *NUMBERS, "messages", *([f"pass_{run.scorer}"] if run.scorer else [])]
    wanted += sorted(n for n in names if n.startswith(("judge_reasoning_", "judge_label_")))
    return pq.read_table(run.dir / RESULTS, columns=[c for c in wanted if c in names]).to_pandas()


def _questions(frame: pd.DataFrame) -> dict[str, str]:
    """Each row's question: the last user message of its first request (prompts vary by cell;
    the first is enough to recognise the row)."""
    if "messages" not in frame:
        return {}
    out = {}
    for row, raw in frame.drop_duplicates("row_id")[["row_id", "messages"]].itertuples(index=False):
        out[str(row)] = _cut(_last_user_text(raw))
    return out


def _last_user_text(raw: Any) -> str:
    try:
        messages = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        return ""
    for m in reversed(messages if isinstance(messages, list) else []):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):  # parts: keep the text ones
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return "" if content is None else str(content)
    return ""


def _answer(r: dict[str, Any], scorer: str | None, judges: list[str]) -> list[Any]:
    passed = r.get(f"pass_{scorer}") if scorer else None
    error = ""
    if r.get("status") == "error":
        error = _cut(f"{r.get('error_type') or 'error'}: {r.get('error_message') or ''}")
    said = [
        [j, _text(r.get(f"judge_label_{j}")), _cut(_text(r.get(f"judge_reasoning_{j}")))]
        for j in judges
        if not is_missing(r.get(f"judge_reasoning_{j}")) or not is_missing(r.get(f"judge_label_{j}"))
    ]
    return [
        None if is_missing(passed) else int(bool(passed)),
        _cut(_text(r.get("content"))),
        *(None if is_missing(r.get(n)) else round(float(r[n]), 8) for n in NUMBERS),
        error,
        said,
    ]


def _natural(row_id: str) -> list[tuple[int, int | str]]:
    """arith-2 before arith-10: digit runs compare as numbers."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", row_id)]


def _text(v: Any) -> str:
    return "" if is_missing(v) else str(v)


def _cut(s: str) -> str:
    return s if len(s) <= EXPLORER_CHARS else s[:EXPLORER_CHARS] + "…"


def explorer_note(run: Run) -> str:
    """The sentence under the section's title."""
    scorer = f"<code>{esc(run.scorer)}</code>" if run.scorer else "no scorer (pass/fail is blank)"
    return (
        f"Every dataset row of the run; pass/fail by {scorer}. Filter, search, choose the cells to put "
        f"side by side, and click a row. Texts are cut at {EXPLORER_CHARS} characters (whole in results.parquet)."
    )
