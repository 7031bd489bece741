"""A finished run as the report reads it: the manifest, one row per request, per-cell figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from evalrun.analysis.summary import scorer_names, summary_from_file
from evalrun.config.params import PARAM_COLUMN
from evalrun.report.format import fmt_val
from evalrun.run.store import DATA_PREFIX, RESULTS, Manifest, request_rows, require_finished

if TYPE_CHECKING:
    import pandas as pd

HEAVY = {"logprobs", "messages", "content", "tool_calls", "base_url", "response_id"}  # unused here, and big
SHORT = {"temperature": "T", "reasoning_effort": "effort", "request_logprobs": "logprobs"}
# Observable's 10-colour palette: distinct in hue and lightness, readable on white
PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e", "#9498a0")


@dataclass(frozen=True)
class Run:
    """A finished run as the report reads it."""

    dir: Path
    manifest: Manifest
    requests: pd.DataFrame  # one row per request: its choice-0 row or its error row (usage sits there)
    cells: pd.DataFrame  # summary_from_file() + label, tokens and cost per cell
    scorer: str | None  # the primary scorer: the first pass_<name> column
    scorers: list[str]  # all of them, in column order (the reader picks one for the score chart)
    params: list[str]  # request-parameter columns whose value differs between cells
    has_cost: bool
    colours: dict[str, str]  # model → colour, the same in every chart


def load_run(run_dir: Path) -> Run:
    import pandas as pd
    import pyarrow.parquet as pq

    manifest = require_finished(run_dir)
    names = [n for n in pq.read_schema(run_dir / RESULTS).names if n not in HEAVY and not n.startswith(DATA_PREFIX)]
    rows = pd.read_parquet(run_dir / RESULTS, columns=names)
    requests = request_rows(rows)
    # the summary from the file itself: it tells empty answers by their text, which `rows` leaves out
    cells, scorers = pd.DataFrame(summary_from_file(run_dir / RESULTS)), scorer_names(rows)
    scorer = scorers[0] if scorers else None
    params = [c for c in cells.columns if c in set(PARAM_COLUMN.values())]
    has_cost = "cost_total" in rows and bool(rows.cost_total.notna().any())
    colours: dict[str, str] = {}
    if not cells.empty:
        for m in cells.model:
            colours.setdefault(m, PALETTE[len(colours) % len(PALETTE)])
        by = requests.groupby("cell_id")
        cells["label"] = _labels(cells, params)
        cells["tokens_per_request"] = cells.cell_id.map(by.total_tokens.mean())
        if scorer:
            cells["passes"] = cells.cell_id.map(rows.groupby("cell_id")[f"pass_{scorer}"].sum()).astype(float)
        if has_cost:  # the summary computes these; a summary.py older than pricing did not
            if "cost_total" not in cells:
                cells["cost_total"] = cells.cell_id.map(by.cost_total.sum(min_count=1))
            if "cost_per_request" not in cells:
                cells["cost_per_request"] = cells.cost_total / cells.requests
            if scorer and f"cost_per_pass_{scorer}" not in cells:
                cells[f"cost_per_pass_{scorer}"] = cells.cost_total / cells.passes.where(cells.passes > 0)
            if "judge_cost" in cells and cells.judge_cost.notna().any():  # one ledger: judging included
                cells["cost_per_graded_request"] = (
                    cells.cost_total.fillna(0) + cells.judge_cost.fillna(0)
                ) / cells.requests
    return Run(run_dir, manifest, requests, cells, scorer, scorers, params, has_cost, colours)


def _labels(cells: pd.DataFrame, params: list[str]) -> list[str]:
    """model · [provider] · [prompt] · the parameters that differ between cells."""
    extra = [c for c in ("provider", "prompt_id") if cells[c].nunique() > 1]
    return [
        " · ".join([r["model"], *(r[c] for c in extra), *(f"{SHORT.get(p, p)}={fmt_val(r[p])}" for p in params)])
        for r in cells.to_dict("records")
    ]


# --------------------------------------------------------------------------- tables
