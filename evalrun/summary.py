"""Per-cell summary of a finished run: results.parquet → summary.parquet and a table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalrun.errors import ConfigError
from evalrun.params import PARAM_COLUMN
from evalrun.pricing import COST_COLUMNS
from evalrun.stats import wilson_interval
from evalrun.store import RESULTS, SUMMARY

if TYPE_CHECKING:
    import pandas as pd

    from evalrun.pricing import Pricing

TOKEN_COLUMNS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "total_tokens")


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per cell. Requests are counted once (their choice-0 or error row), so n>1
    choices never double the request count, the latency or the tokens."""
    import pandas as pd

    if results.empty:
        return pd.DataFrame()
    req = results[results["choice_index"].isna() | (results["choice_index"] == 0)]
    # a cell's own parameters: constant within each cell, different across cells (a per-row
    # parameter such as tools from a dataset column varies inside a cell and is not one)
    by_cell_params = results.groupby("cell_id", sort=False)
    varying = [p for p in PARAM_COLUMN.values() if p in results and results[p].nunique(dropna=False) > 1
               and by_cell_params[p].nunique(dropna=False).max() == 1]  # fmt: skip
    keys = ["cell_id"]
    agg = req.groupby(keys, sort=False).agg(
        provider=("provider", "first"),
        model=("model", "first"),
        prompt_id=("prompt_id", "first"),
        requests=("status", "size"),  # one choice-0 or error row per request
        errors=("status", lambda s: int((s == "error").sum())),
        attempts=("attempts", "sum"),
        # attempts beyond the first; requests never sent (a dead model) have 0 attempts
        retries=("attempts", lambda s: int((s - 1).clip(lower=0).sum())),
        # min_count=1: a cell whose answers carried no usage sums to null, not to 0
        **{t: (t, lambda s: s.sum(min_count=1)) for t in TOKEN_COLUMNS},
        latency_p50_s=("latency_s", lambda s: s.quantile(0.50)),
        latency_p95_s=("latency_s", lambda s: s.quantile(0.95)),
        latency_p99_s=("latency_s", lambda s: s.quantile(0.99)),
        started=("started_at", "min"),
    )
    for t in TOKEN_COLUMNS:
        agg[t] = agg[t].astype("Int64")
    agg["visible_output_tokens"] = agg["completion_tokens"] - agg["reasoning_tokens"].fillna(0).astype("Int64")
    agg["reasoning_share"] = (agg["reasoning_tokens"] / agg["completion_tokens"]).astype("Float64")
    if "cost_total" in req:
        for c in COST_COLUMNS:
            agg[c] = req.groupby("cell_id", sort=False)[c].sum(min_count=1)
        agg["cost_per_request"] = agg["cost_total"] / agg["requests"]
    agg["rows"] = results.groupby("cell_id", sort=False).size()
    for p in varying:
        agg[p] = req.groupby("cell_id", sort=False)[p].first()
    # scores are per row (every choice); an error row counts as not passed
    by_cell = results.groupby("cell_id", sort=False)
    for name in scorer_names(results):
        passes = by_cell[f"pass_{name}"].sum()
        rows = by_cell.size()
        agg[f"pass_rate_{name}"] = passes / rows
        ci = [wilson_interval(int(k), int(n)) for k, n in zip(passes, rows)]
        agg[f"pass_ci_low_{name}"] = pd.Series([c[0] for c in ci], index=passes.index)
        agg[f"pass_ci_high_{name}"] = pd.Series([c[1] for c in ci], index=passes.index)
        agg[f"mean_score_{name}"] = by_cell[f"score_{name}"].mean()
        if "cost_total" in agg:
            # what one correct answer costs: the cell's whole cost over its passes
            agg[f"cost_per_pass_{name}"] = agg["cost_total"] / passes.where(passes > 0)
    agg["error_rate"] = agg["errors"] / agg["requests"]
    agg = agg.reset_index().sort_values(["model", *varying, "prompt_id"], kind="stable").drop(columns="started")
    lead = ["cell_id", "provider", "model", *varying, "prompt_id"]
    return agg[lead + [c for c in agg.columns if c not in lead]].reset_index(drop=True)


def scorer_names(results: pd.DataFrame) -> list[str]:
    return [c[len("pass_"):] for c in results.columns if c.startswith("pass_") and f"score_{c[5:]}" in results]


# Columns the summary never reads: the big ones (logprobs alone can be most of the file)
UNSUMMARIZED = ("logprobs", "messages", "content", "tool_calls", "error_message", "response_id", "base_url",
                "run_id", "experiment", "response_model", "retry_types")  # fmt: skip


def read_for_summary(path: Path) -> pd.DataFrame:
    """results.parquet without its large text and nested columns: memory stays proportional
    to a few numbers per row, not to the answers and their logprobs."""
    import pyarrow.parquet as pq

    names = [n for n in pq.read_schema(path).names if n not in UNSUMMARIZED and not n.startswith("data_")]
    return pq.read_table(path, columns=names).to_pandas()


def write_summary(run_dir: Path) -> pd.DataFrame:
    summary = summarize(read_for_summary(run_dir / RESULTS))
    summary.to_parquet(run_dir / SUMMARY, index=False)
    return summary


def render_table(summary: pd.DataFrame, title: str = "") -> Any:
    """A rich Table of the summary, only the columns a person reads first."""
    from rich.table import Table

    table = Table(title=title or None, show_lines=False)
    if summary.empty:
        table.add_column("no results")
        return table
    fixed = {"cell_id", "provider", "requests", "errors", "attempts", "retries", "rows", "error_rate", *TOKEN_COLUMNS,
             "visible_output_tokens", "reasoning_share", "cost_per_request", *COST_COLUMNS}  # fmt: skip
    scored = ("pass_rate_", "pass_ci_", "mean_score_", "cost_per_pass_")
    head = [c for c in summary.columns if c not in fixed and not c.startswith(("latency", *scored))]
    rates = [c for c in summary.columns if c.startswith("pass_rate_")]
    if summary["prompt_id"].nunique() == 1:
        head.remove("prompt_id")
    costs = []
    if "cost_total" in summary and summary["cost_total"].notna().any():
        costs = ["cost_total", *[c for c in summary.columns if c.startswith("cost_per_pass_")][:1]]
    cols = head + ["requests", "errors", "retries", *rates, "prompt_tokens", "completion_tokens",
                   "reasoning_tokens", *costs, "latency_p50_s", "latency_p95_s"]  # fmt: skip
    for c in cols:
        label = (c.replace("pass_rate_", "pass ").replace("cost_per_pass_", "cost/pass ").replace("cost_total", "cost")
                 .replace("_tokens", " tok").replace("latency_", "").replace("_s", " s"))  # fmt: skip
        table.add_column(label, justify="left" if c in head else "right")
    for _, r in summary.iterrows():
        table.add_row(*(_rate(r, c) if c in rates else _money(r[c]) if c in costs else _fmt(r[c], c.endswith("_s"))
                        for c in cols))  # fmt: skip
    return table


def _money(v: Any) -> str:
    import pandas as pd

    if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)):
        return "–"
    return f"{v:.4f}" if v >= 0.01 else f"{v:.6f}"


def _rate(r: Any, col: str) -> str:
    name = col[len("pass_rate_"):]
    lo, hi = r[f"pass_ci_low_{name}"], r[f"pass_ci_high_{name}"]
    return f"{r[col]:.0%} [{lo:.0%}–{hi:.0%}]"


def _fmt(v: Any, seconds: bool = False) -> str:
    import pandas as pd

    if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)):
        return "–"
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return "true" if v else "false"
    if isinstance(v, float):
        if seconds:
            return f"{v:.3f}"
        return f"{v:g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int) or hasattr(v, "__int__") and not isinstance(v, str):
        try:
            return f"{int(v):,}"
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def cost_breakdown(results: pd.DataFrame, by: list[str], pricing: Pricing | None = None) -> pd.DataFrame:
    """Cost and tokens grouped by any report columns. With `pricing`, cost is recomputed from
    the recorded usage (other prices, no requests)."""
    import pandas as pd

    req = results[results["choice_index"].isna() | (results["choice_index"] == 0)].copy()
    if pricing is not None:
        usage_cols = ["prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "prompt_audio_tokens"]
        recomputed = [pricing.cost(m, u) for m, u in zip(req["model"], req[usage_cols].to_dict("records"))]
        for c in COST_COLUMNS:
            req[c] = [r[c] for r in recomputed]
    missing = [c for c in by if c not in req]
    if missing:
        raise ConfigError(f"--by {','.join(by)}: no column {missing[0]!r} in results.parquet")
    for t in ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens"):
        req[t] = req[t].astype("Float64")
    req["visible_output_tokens"] = req["completion_tokens"] - req["reasoning_tokens"].fillna(0)
    agg = req.groupby(by, dropna=False).agg(
        requests=("request_id", "nunique"),
        prompt_tokens=("prompt_tokens", "sum"), cached_tokens=("cached_tokens", "sum"),
        visible_output_tokens=("visible_output_tokens", "sum"), reasoning_tokens=("reasoning_tokens", "sum"),
        **{c: (c, lambda s: s.sum(min_count=1)) for c in COST_COLUMNS},
    )  # fmt: skip
    agg["cost_per_request"] = agg["cost_total"] / agg["requests"]
    agg["reasoning_share"] = agg["reasoning_tokens"] / (agg["visible_output_tokens"] + agg["reasoning_tokens"])
    total = agg.sum(numeric_only=True).to_frame().T
    total[by] = "(all)"
    total["cost_per_request"] = total["cost_total"] / total["requests"]
    total["reasoning_share"] = total["reasoning_tokens"] / (total["visible_output_tokens"] + total["reasoning_tokens"])
    return pd.concat([agg.reset_index(), total], ignore_index=True)
