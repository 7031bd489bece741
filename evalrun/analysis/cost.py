"""`evalrun cost RUN_DIR`: cost and tokens grouped by any report columns, optionally at other
prices (recomputed from the recorded usage; nothing is sent).

One ledger: the experiment's requests (results.parquet) and its judges' (judge_journal.jsonl:
one row per judge request, its latest answer, an answer before a failure) are told apart by a
`kind` column, experiment or judge, with a subtotal for each when the run has judges and the
grand total last."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalrun.config.diagnostics import did_you_mean
from evalrun.config.params import PARAM_COLUMN
from evalrun.config.prices import COST_COLUMNS
from evalrun.errors import ConfigError
from evalrun.run.store import DATA_PREFIX, JUDGE_JOURNAL, read_journal, request_rows

if TYPE_CHECKING:
    import pandas as pd

    from evalrun.config.prices import Pricing

USAGE = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "prompt_audio_tokens")
COUNTS = ("requests", "prompt_tokens", "cached_tokens", "visible_output_tokens", "reasoning_tokens")
# what a breakdown can be grouped by: the request's dimensions, not its measurements
DIMENSIONS = (
    "provider",
    "model",
    "response_model",
    "prompt_id",
    *PARAM_COLUMN.values(),
    "cell_id",
    "row_id",
    "repeat",
    "status",
    "error_type",
    "http_status",
    "finish_reason",
    "kind",  # experiment or judge
)
KINDS = ("experiment", "judge")


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """The grouped table (its last row is the total) and the models the total leaves out."""

    table: pd.DataFrame
    unpriced: list[str]  # models with usage but no cost: the total is partial without them
    by: list[str]  # what it is grouped by: as asked, with kind first when the run has judges


def groupable(columns: list[str]) -> list[str]:
    return [c for c in (*DIMENSIONS, *(c for c in columns if c.startswith(DATA_PREFIX))) if c in columns]


def judge_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The run's judge requests as rows (usage and cost on each): per judge request id its
    latest answer, or its latest failure when it never got one."""
    chosen: dict[str, dict[str, Any]] = {}
    for entry in read_journal(run_dir / JUDGE_JOURNAL, report=False):
        rows = entry.get("rows") or []
        known = chosen.get(entry["id"])
        if rows and (known is None or entry["status"] == "ok" or known.get("status") != "ok"):
            chosen[entry["id"]] = {k: v for k, v in rows[0].items() if k not in ("logprobs", "messages", "content")}
    return list(chosen.values())


def ledger(results: pd.DataFrame, judges: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per request, the experiment's and its judges', with their `kind`."""
    import pandas as pd

    req = request_rows(results).assign(kind=KINDS[0])
    if not judges:
        return req
    extra = pd.DataFrame(judges).assign(kind=KINDS[1])
    return pd.concat([req, extra[[c for c in extra.columns if c in req.columns]]], ignore_index=True)


def cost_breakdown(
    results: pd.DataFrame, by: list[str], pricing: Pricing | None = None, judges: list[dict[str, Any]] | None = None
) -> CostBreakdown:
    """Cost and tokens grouped by `by` (and by kind when the run has judges). With `pricing`,
    cost is recomputed from the recorded usage (other prices, no requests)."""
    import pandas as pd

    req = ledger(results, judges or []).copy()
    if judges and "kind" not in by:
        by = ["kind", *by]
    missing = [c for c in by if c not in req]
    if missing:
        choices = groupable(list(req.columns))
        raise ConfigError(
            f"--by {','.join(by)}: no column {missing[0]!r} in results.parquet{did_you_mean(missing[0], choices)}; "
            f"columns to group by: {', '.join(choices)}"
        )
    if not by:
        raise ConfigError(
            f"--by: name at least one column, e.g. --by model; columns: {', '.join(groupable(list(req)))}"
        )
    if pricing is not None:
        usage = req.reindex(columns=list(USAGE)).astype(object).where(req.reindex(columns=list(USAGE)).notna(), None)
        recomputed = [pricing.cost(m, u) for m, u in zip(req["model"], usage.to_dict("records"))]
        for c in COST_COLUMNS:
            req[c] = pd.array([r[c] for r in recomputed], dtype="Float64")
    used = req.prompt_tokens.notna() | req.completion_tokens.notna()
    unpriced = sorted(set(req.model[used & req.cost_total.isna()])) if "cost_total" in req else []
    for t in ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens"):
        req[t] = req[t].astype("Float64")
    req["visible_output_tokens"] = req["completion_tokens"] - req["reasoning_tokens"].fillna(0)
    agg = _grouped(req, by)
    label = "(all, partial)" if unpriced else "(all)"
    parts = [agg.reset_index()]
    if judges and len(by) > 1:  # a subtotal per kind, under its rows
        parts = []
        for kind in KINDS:
            rows = agg[agg.index.get_level_values("kind") == kind]
            sub = _total(rows, by, label)
            sub["kind"] = kind
            parts += [rows.reset_index(), sub]
    table = pd.concat([*parts, _total(agg, by, label)], ignore_index=True)
    table["cost_per_request"] = table["cost_total"] / table["requests"]
    output = table["visible_output_tokens"] + table["reasoning_tokens"]
    table["reasoning_share"] = table["reasoning_tokens"] / output.where(output > 0)
    for c in COUNTS:  # counts are whole numbers in csv and json too
        table[c] = pd.array(table[c].round(), dtype="Float64").astype("Int64")
    return CostBreakdown(table, unpriced, by)


def _grouped(req: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return req.groupby(by, dropna=False).agg(
        requests=("request_id", "nunique"),
        prompt_tokens=("prompt_tokens", "sum"),
        cached_tokens=("cached_tokens", "sum"),
        visible_output_tokens=("visible_output_tokens", "sum"),
        reasoning_tokens=("reasoning_tokens", "sum"),
        **{c: (c, lambda s: s.sum(min_count=1)) for c in COST_COLUMNS},
    )


def _total(agg: pd.DataFrame, by: list[str], label: str) -> pd.DataFrame:
    total = agg.sum(numeric_only=True).to_frame().T
    for c in COST_COLUMNS:  # a total over no priced request is unknown, not 0
        total[c] = agg[c].sum(min_count=1)
    total[by] = label
    return total


def partial_note(b: CostBreakdown, prices: str | None) -> str | None:
    if not b.unpriced:
        return None
    where = f"in {prices}" if prices else "in the run's price table"
    return (
        f"the total is partial: no price {where} for {', '.join(b.unpriced)} "
        "(its requests are counted, their cost is not)"
    )
