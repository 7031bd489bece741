"""The summary and the cost breakdown as a person reads them: a terminal table that fits its
width, and Markdown short enough for a pull-request comment.

A table that does not fit drops its least important columns (and says which) instead of
cutting names: `gemin…` three times is no summary. CSV and JSON keep every column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evalrun.config.prices import COST_COLUMNS

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

NEVER_DROPPED = 100


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: its key in the rows, header, how long it stays when space is short."""

    key: str
    label: str
    keep: int  # higher stays longer; NEVER_DROPPED always stays
    left: bool = False


def terminal_width() -> int:
    """The terminal's width; off a terminal $COLUMNS, else 120 (a CI log, a pipe)."""
    import os
    import shutil
    import sys

    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return int(os.environ.get("COLUMNS", "") or 0) or 120


def missing(v: Any) -> bool:
    """None, NaN or pandas' NA — without importing pandas."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ == "NAType"


def money(v: Any) -> str:
    if missing(v):
        return "–"
    return f"{v:.4f}" if v >= 0.01 else f"{v:.6f}"


def rate(r: dict[str, Any], name: str) -> str:
    v, lo, hi = r.get(f"pass_rate_{name}"), r.get(f"pass_ci_low_{name}"), r.get(f"pass_ci_high_{name}")
    if missing(v):
        return "–"
    return f"{v:.0%} [{lo:.0%}–{hi:.0%}]"


def value(v: Any, seconds: bool = False) -> str:
    if missing(v):
        return "–"
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return "true" if v else "false"
    if isinstance(v, float):
        if seconds:
            return f"{v:.3f}"
        if v.is_integer() and abs(v) >= 1e6:
            return f"{v:,.0f}"
        return f"{v:g}"
    if isinstance(v, int) or (hasattr(v, "__int__") and not isinstance(v, str)):
        try:
            return f"{int(v):,}"
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def fit(columns: list[Column], cells: list[list[str]], width: int) -> tuple[list[int], list[Column]]:
    """Indices of the columns that fit `width` (a rich box table: 3 characters per column and
    one more for the border), and the ones dropped, least important first."""
    widths = [max([len(c.label), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    kept = list(range(len(columns)))
    dropped: list[Column] = []
    for i in sorted(kept, key=lambda i: (columns[i].keep, -i)):
        if 1 + sum(widths[k] + 3 for k in kept) <= width or columns[i].keep >= NEVER_DROPPED:
            break
        kept.remove(i)
        dropped.append(columns[i])
    return kept, dropped


def table(
    title: str,
    columns: list[Column],
    rows: list[dict[str, str]],
    width: int,
    notes: list[str],
    whole: str = "--format csv or json has all",
) -> Any:
    """A rich Table of string cells that fits `width` (unless the never-dropped columns alone
    do not), names whole; `whole` says where the dropped columns are."""
    from rich.table import Table

    cells = [[r[c.key] for c in columns] for r in rows]
    kept, dropped = fit(columns, cells, width)
    caption = list(notes)
    if dropped:
        caption.append(f"not shown for want of width: {', '.join(c.label for c in dropped)} ({whole})")
    t = Table(title=title or None, caption="\n".join(caption) or None, caption_justify="left")
    for i in kept:
        c = columns[i]
        longest = max([len(c.label), *(len(row[i]) for row in cells)])
        t.add_column(c.label, justify="left" if c.left else "right", no_wrap=True, min_width=longest)
    for row in cells:
        t.add_row(*(row[i] for i in kept))
    return t


# --------------------------------------------------------------------------- the summary

IDENTITY = ("cell_id", "provider", "model", "prompt_id")
SCORED = (
    "pass_rate_",
    "pass_ci_",
    "mean_score_",
    "cost_per_pass_",
    "ungraded_",
    "stable_pass_",
    "flaky_",
    "stable_fail_",
    "pass_at_",
    "pass_pow_",
    "eff_rows_",
)
NOT_PARAMS = {
    "requests",
    "errors",
    "attempts",
    "retries",
    "rows",
    "items",
    "error_rate",
    "truncated_answers",
    "empty_answers",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "visible_output_tokens",
    "reasoning_share",
    "cost_per_request",
    "judge_cost",
    "cost_with_judges",
    "response_models",
    *COST_COLUMNS,
}


def _params(summary: list[dict[str, Any]]) -> list[str]:
    first = summary[0]
    return [c for c in first if c not in IDENTITY and c not in NOT_PARAMS and not c.startswith(("latency", *SCORED))]


def summary_columns(summary: list[dict[str, Any]], short: bool = False) -> list[Column]:
    """What a person reads first, in order; `short` (Markdown) keeps the few a PR comment needs."""
    first = summary[0]
    cols = [Column("model", "model", NEVER_DROPPED, True)]
    if len({r.get("provider") for r in summary}) > 1:  # one model on two providers: two rows to tell apart
        cols.append(Column("provider", "provider", NEVER_DROPPED, True))
    cols += [Column(p, p, NEVER_DROPPED, True) for p in _params(summary)]
    if len({r["prompt_id"] for r in summary}) > 1:
        cols.append(Column("prompt_id", "prompt", NEVER_DROPPED, True))
    scorers = [c[len("pass_rate_") :] for c in first if c.startswith("pass_rate_")]
    cols += [Column(f"pass_rate_{s}", f"pass {s}", 90 - i) for i, s in enumerate(scorers)]
    if scorers and any((r.get("rows") or 0) > (r.get("items") or r.get("rows") or 0) for r in summary):
        # several answers per row: how many rows passed only sometimes
        cols.append(Column(f"flaky_{scorers[0]}", "flaky rows" + (f" {scorers[0]}" if len(scorers) > 1 else ""), 55))
    cols += [Column("requests", "requests", 60), Column("errors", "errors", 70)]
    if any(r.get("truncated_answers") for r in summary):
        cols.append(Column("truncated_answers", "cut at max", 85))
    if any(r.get("empty_answers") for r in summary):
        cols.append(Column("empty_answers", "empty", 84))
    priced = any(not missing(r.get("cost_total")) for r in summary)
    if priced:
        cols.append(Column("cost_total", "cost", 80))
        if any(not missing(r.get("judge_cost")) for r in summary):
            cols.append(Column("judge_cost", "judge cost", 75))
        if scorers:
            label = "cost/pass" + (f" {scorers[0]}" if len(scorers) > 1 else "")  # one scorer: no doubt which
            cols.append(Column(f"cost_per_pass_{scorers[0]}", label, 50))
    cols.append(Column("latency_p50_s", "p50 s", 40))
    if short:
        return cols
    cols += [
        Column("retries", "retries", 30),
        Column("latency_p95_s", "p95 s", 20),
        Column("prompt_tokens", "prompt tok", 15),
        Column("completion_tokens", "completion tok", 14),
        Column("reasoning_tokens", "reasoning tok", 13),
    ]
    return cols


def summary_cells(summary: list[dict[str, Any]], columns: list[Column]) -> list[dict[str, str]]:
    out = []
    for r in summary:
        row = {}
        for c in columns:
            if c.key.startswith("pass_rate_"):
                row[c.key] = rate(r, c.key[len("pass_rate_") :])
            elif c.key.startswith("cost"):
                row[c.key] = money(r.get(c.key))
            else:
                row[c.key] = value(r.get(c.key), c.key.endswith("_s"))
        out.append(row)
    return out


def summary_table(summary: list[dict[str, Any]], title: str, width: int, notes: list[str] | None = None) -> Any:
    """The summary as a terminal table that fits `width`."""
    from rich.table import Table

    if not summary:
        t = Table(title=title or None)
        t.add_column("no results")
        return t
    columns = summary_columns(summary)
    return table(title, columns, summary_cells(summary, columns), width, notes or [])


def summary_markdown(summary: list[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table for a PR comment: the few columns that matter, rounded."""
    if not summary:
        return "_no results_\n"
    columns = summary_columns(summary, short=True)
    rows = summary_cells(summary, columns)
    head = "| " + " | ".join(c.label for c in columns) + " |"
    rule = "|" + "|".join("---" if c.left else "---:" for c in columns) + "|"
    body = ["| " + " | ".join(r[c.key].replace("|", "\\|") for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


# --------------------------------------------------------------------------- cost


# the cost table's columns: (label, how long it stays when space is short)
COST_VIEW = {
    "requests": ("requests", 60),
    "prompt_tokens": ("prompt tok", 44),
    "cached_tokens": ("cached tok", 35),
    "visible_output_tokens": ("output tok", 45),
    "reasoning_tokens": ("reasoning tok", 46),  # thinking is most of a reasoning model's output
    "cost_input": ("cost input", 22),
    "cost_cached": ("cost cached", 21),
    "cost_output": ("cost output", 24),
    "cost_reasoning": ("cost reasoning", 23),
    "cost_total": ("cost", 90),
    "cost_per_request": ("cost/req", 70),
    "reasoning_share": ("reasoning %", 30),
}


def cost_table(frame: pd.DataFrame, by: list[str], title: str, width: int, notes: list[str]) -> Any:
    columns = [
        Column(c, c, NEVER_DROPPED, True) if c in by else Column(c, *COST_VIEW.get(c, (c, 20))) for c in frame.columns
    ]
    rows = [
        {
            c: money(v)
            if c.startswith("cost")
            else "–"
            if missing(v)
            else f"{v:.0%}"
            if c == "reasoning_share"
            else value(v)
            for c, v in r.items()
        }
        for r in frame.to_dict("records")
    ]
    return table(title, columns, rows, width, notes)


def cost_note(summary: list[dict[str, Any]]) -> list[str]:
    """The run's spend in one line when judges graded it: the answers' cost and the judges'."""
    judged = [r["judge_cost"] for r in summary if not missing(r.get("judge_cost"))]
    if not judged:
        return []
    answers = sum(r["cost_total"] for r in summary if not missing(r.get("cost_total")))
    return [
        f"cost {money(answers + sum(judged))}: answers {money(answers)} + judges {money(sum(judged))} "
        "(evalrun cost RUN_DIR breaks it down)"
    ]


def answer_notes(summary: list[dict[str, Any]], shown: int = 4) -> list[str]:
    """One line per cell whose answers were cut at max_tokens or empty, and what to change: a
    0 % that is really "the model had no room to answer" must not pass for a bad model."""
    params = _params(summary) if summary else []
    lines = []
    for r in summary:
        cut, empty = r.get("truncated_answers") or 0, r.get("empty_answers") or 0
        if not cut and not empty:
            continue
        name = " · ".join([str(r["model"]), *(f"{p}={value(r[p])}" for p in params)])
        what = [f"{cut:,} of {r['rows']:,} answers cut at max_tokens"] if cut else []
        what += [f"{empty:,}{'' if cut else ' of ' + format(r['rows'], ',') + ' answers'} empty"] if empty else []
        lines.append(f"{name}: {', '.join(what)}")
    if not lines:
        return []
    more = [f"…and {len(lines) - shown} more cells"] if len(lines) > shown else []
    hint = (
        "finish_reason=length: raise max_tokens (thinking tokens count against it) or lower reasoning_effort"
        if any(r.get("truncated_answers") for r in summary)
        else "see content and finish_reason in results.parquet"
    )
    return [*lines[:shown], *more, hint]


def console() -> Console:
    """A rich console as wide as terminal_width(), that never wraps a table's lines."""
    from rich.console import Console

    return Console(soft_wrap=False, width=terminal_width())


def print_summary(summary: list[dict[str, object]] | None, title: str) -> None:
    """The per-cell summary table with its notes (cost, answers cut or empty), on stdout."""
    if summary is None:
        return
    notes = cost_note(summary) + answer_notes(summary)
    console().print(summary_table(summary, title, terminal_width(), notes))
