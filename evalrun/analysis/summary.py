"""Per-cell summary of a finished run: results.parquet → summary.parquet and a table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalrun.analysis.rowstats import class_counts, pass_k_columns, row_rate
from evalrun.config.params import PARAM_COLUMN
from evalrun.config.prices import COST_COLUMNS
from evalrun.quantiles import quantile
from evalrun.run.store import RESULTS, SUMMARY

if TYPE_CHECKING:
    import pandas as pd

EMPTY = "_empty_answer"  # a flag summary_from_file computes in Arrow instead of reading the text
TOKEN_COLUMNS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "total_tokens")


class SummaryBuilder:
    """Per-cell aggregates, fed batch by batch with report rows (dicts) — from the pass that
    writes results.parquet, or from reading it — so no whole-file frame is ever built.

    Requests are counted once (their choice-0 or error row), so n>1 choices never double the
    request count, the latency, the tokens or the cost. Pass rates are per dataset row: each
    row's answers (repeats × choices) are counted per row, and rates, intervals and classes are
    taken over rows (rowstats.py says why)."""

    def __init__(self) -> None:
        self._cells: dict[str, dict[str, Any]] = {}
        self._params: dict[str, dict[str, Any]] = {}  # cell → its first value of each parameter
        self._not_cell_level: set[str] = set()  # parameters that vary inside a cell (per-row ones)
        self.scorers: list[str] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if not self.scorers and any(k.startswith("pass_") for k in row):
                self.scorers = [k[5:] for k in row if k.startswith("pass_") and f"score_{k[5:]}" in row]
            c = self._cell(row)
            c["rows"] += 1
            c["items"].add(row.get("row_id"))
            if row.get("response_model"):  # what the server says it served: `history` marks a change
                c["served"].add(row["response_model"])
            if row.get("status") == "ok":
                # answers that say nothing: cut at max_tokens (thinking can eat the whole budget), or empty
                c["truncated"] += row.get("finish_reason") == "length"
                c["empty"] += _empty(row)
            self._count_grades(c, row)
            if row.get("choice_index") in (None, 0):  # the request's own numbers sit on its first row
                _count_request(c, row)

    def _cell(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row's cell's aggregates, opened on its first row; later rows check which
        parameters vary inside the cell."""
        cid = row["cell_id"]
        c = self._cells.get(cid)
        if c is not None:
            first = self._params[cid]
            for p in PARAM_COLUMN.values():
                if p not in self._not_cell_level and row.get(p) != first[p]:
                    self._not_cell_level.add(p)
            return c
        c = self._cells[cid] = {
            "provider": row.get("provider"),
            "model": row.get("model"),
            "prompt_id": row.get("prompt_id"),
            "requests": 0,
            "errors": 0,
            "attempts": 0,
            "retries": 0,
            "rows": 0,
            "items": set(),  # the dataset rows the cell answered: the unit of its pass rates
            "served": set(),  # the response_model values of its answers
            "truncated": 0,
            "empty": 0,
            "latency": [],
            "started": row.get("started_at"),
            **{t: None for t in (*TOKEN_COLUMNS, *COST_COLUMNS)},
            **{f"passes_{n}": 0 for n in self.scorers},
            **{f"graded_{n}": 0 for n in self.scorers},
            **{f"scores_{n}": [] for n in self.scorers},
            **{f"by_row_{n}": {} for n in self.scorers},  # row id → [passes, graded]
            "judge_cost": None,
        }
        self._params[cid] = {p: row.get(p) for p in PARAM_COLUMN.values()}
        return c

    def _count_grades(self, c: dict[str, Any], row: dict[str, Any]) -> None:
        """Every scorer's pass, score and judge cost of one answer."""
        for n in self.scorers:
            passed = row.get(f"pass_{n}")
            # a judge that could not grade (it failed, or this is the pairwise baseline) leaves
            # pass null: that row is not graded, and not counted as a failure
            c[f"graded_{n}"] += passed is not None
            c[f"passes_{n}"] += bool(passed)
            counts = c[f"by_row_{n}"].setdefault(row.get("row_id"), [0, 0])
            counts[0] += bool(passed)
            counts[1] += passed is not None
            jc = row.get(f"judge_cost_{n}")
            if jc is not None:
                c["judge_cost"] = jc if c["judge_cost"] is None else c["judge_cost"] + jc
            score = row.get(f"score_{n}")
            if score is not None:
                c[f"scores_{n}"].append(score)

    def rows(self) -> list[dict[str, Any]]:
        """One summary row per cell, sorted by model, the varying parameters and prompt."""
        firsts = list(self._params.values())
        varying = [
            p for p in PARAM_COLUMN.values() if p not in self._not_cell_level and len({repr(f[p]) for f in firsts}) > 1
        ]
        out = []
        for cid, c in self._cells.items():
            lat = sorted(c["latency"])
            row: dict[str, Any] = {
                "cell_id": cid,
                "provider": c["provider"],
                "model": c["model"],
                **{p: self._params[cid][p] for p in varying},
                "prompt_id": c["prompt_id"],
                "requests": c["requests"],
                "errors": c["errors"],
                "attempts": c["attempts"],
                "retries": c["retries"],
            }
            row.update({t: c[t] for t in TOKEN_COLUMNS})
            comp, reasoning = c["completion_tokens"], c["reasoning_tokens"]
            row["visible_output_tokens"] = None if comp is None else comp - (reasoning or 0)
            row["reasoning_share"] = None if not comp or reasoning is None else reasoning / comp
            row.update({f"latency_p{q}_s": quantile(lat, q / 100) for q in (50, 95, 99)})
            row.update({t: c[t] for t in COST_COLUMNS})
            row["cost_per_request"] = None if c["cost_total"] is None else c["cost_total"] / c["requests"]
            row["rows"], row["items"] = c["rows"], len(c["items"])
            row["truncated_answers"], row["empty_answers"] = c["truncated"], c["empty"]
            row["judge_cost"] = c["judge_cost"]  # what grading this cell's answers cost (model judges)
            costs = [v for v in (c["cost_total"], c["judge_cost"]) if v is not None]
            row["cost_with_judges"] = sum(costs) if costs else None  # the cell's share of the run's spend
            for n in self.scorers:
                passes, scores, graded = c[f"passes_{n}"], c[f"scores_{n}"], c[f"graded_{n}"]
                row.update(_row_level(n, c[f"by_row_{n}"]))
                if graded < c["rows"]:
                    row[f"ungraded_{n}"] = c["rows"] - graded
                row[f"mean_score_{n}"] = sum(scores) / len(scores) if scores else None
                # what one correct answer costs: the cell's whole cost over its passes
                row[f"cost_per_pass_{n}"] = None if c["cost_total"] is None or not passes else c["cost_total"] / passes
            row["error_rate"] = c["errors"] / c["requests"] if c["requests"] else None
            row["response_models"] = ", ".join(sorted(c["served"])) or None
            out.append(row)
        key = ["model", *varying, "prompt_id"]
        out.sort(
            key=lambda r: tuple((r[k] is None, str(r[k]) if not isinstance(r[k], (int, float)) else r[k]) for k in key)
        )
        return out


def _count_request(c: dict[str, Any], row: dict[str, Any]) -> None:
    """A request's own numbers (its first row): outcome, attempts, latency, tokens, cost."""
    c["requests"] += 1
    c["errors"] += row.get("status") == "error"
    attempts = row.get("attempts") or 0
    c["attempts"] += attempts
    c["retries"] += max(0, attempts - 1)  # never-sent requests (a dead model) have 0
    if row.get("latency_s") is not None:
        c["latency"].append(row["latency_s"])
    for t in (*TOKEN_COLUMNS, *COST_COLUMNS):
        v = row.get(t)
        if v is not None:  # a cell whose answers carried no usage stays null, not 0
            c[t] = v if c[t] is None else c[t] + v
    started = row.get("started_at")
    if started is not None and (c["started"] is None or started < c["started"]):
        c["started"] = started


def _row_level(name: str, by_row: dict[Any, list[int]]) -> dict[str, Any]:
    """A scorer's per-row figures for one cell: the pass rate over rows with its interval, the
    rows that always / sometimes / never passed, pass@k and pass^k."""
    passes, graded = [c for c, _ in by_row.values()], [g for _, g in by_row.values()]
    r = row_rate(passes, graded)
    out: dict[str, Any] = {
        f"pass_rate_{name}": r.rate if r.rows else None,
        f"pass_ci_low_{name}": r.low if r.rows else None,
        f"pass_ci_high_{name}": r.high if r.rows else None,
        # the interval's sample size, so a later test (`evalrun history`) weighs the rate as it did
        f"eff_rows_{name}": r.effective_rows if r.rows else None,
    }
    classes = class_counts(passes, graded)
    out.update({f"{cls.replace('-', '_')}_{name}": count for cls, count in classes.items()})
    for k, (at_k, hat_k) in pass_k_columns(passes, graded).items():
        out[f"pass_at_{k}_{name}"], out[f"pass_pow_{k}_{name}"] = at_k, hat_k
    return out


def _empty(row: dict[str, Any]) -> bool:
    """An answer with no text and no tool call. From summary_from_file the flag comes precomputed
    (it reads neither content nor tool_calls, the big columns)."""
    if EMPTY in row:
        return bool(row[EMPTY])
    if "content" not in row:
        return False  # a frame read without its text cannot tell
    return not (row.get("content") or "").strip() and not row.get("tool_calls")


def scorer_names(results: pd.DataFrame) -> list[str]:
    return [c[len("pass_") :] for c in results.columns if c.startswith("pass_") and f"score_{c[5:]}" in results]


# Columns the summary never reads: the big ones (logprobs alone can be most of the file)
UNSUMMARIZED = (
    "logprobs",
    "messages",
    "content",
    "tool_calls",
    "error_message",
    "response_id",
    "base_url",
    "run_id",
    "experiment",
    "retry_types",
)


def summary_from_file(path: Path) -> list[dict[str, Any]]:
    """Summary rows of a results.parquet, read in batches and only its small columns."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    schema = source.schema_arrow.names
    names = [n for n in schema if n not in UNSUMMARIZED and not n.startswith(("data_", "judge_reasoning_"))]
    text = [n for n in ("content", "tool_calls") if n in schema]
    builder = SummaryBuilder()
    for batch in source.iter_batches(batch_size=16_384, columns=names + text):
        empty = None
        for n in text:  # no text (blank counts as none) and no tool call
            col = batch.column(n)
            blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True)
            empty = blank if empty is None else pc.and_(empty, blank)
        small = batch.select(names)
        if empty is not None:
            small = small.append_column(EMPTY, empty)
        builder.add(small.to_pylist())
    return builder.rows()


def write_summary(run_dir: Path, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """summary.parquet from summary rows (computed from results.parquet when not given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows is None:
        rows = summary_from_file(run_dir / RESULTS)
    pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({}), run_dir / SUMMARY)
    return rows
