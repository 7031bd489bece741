"""`evalrun plan`: what a run will send, in requests, tokens and time — without sending."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from evalrun.analysis.rubrics import RUBRICS
from evalrun.config.load import Experiment, model_warnings
from evalrun.config.params import clean_params, output_budget
from evalrun.config.prices import Pricing, load_pricing
from evalrun.config.scorers import LabelModel, PairwiseModel, ScoreModel
from evalrun.errors import ConfigError
from evalrun.run.grid import Plan, build_plan, estimate_tokens, iter_rows, render
from evalrun.run.records import Cell
from evalrun.run.store import RESULTS, request_rows
from evalrun.sim.tasks import find_arithmetic, find_multiple_choice
from evalrun.sim.tokens import message_text

# Without an earlier run to learn from, a request is assumed to use this share of its output
# budget (max_tokens × n): a rough prior, labelled as such in the output.
ASSUMED_OUTPUT_SHARE = 0.25
SAMPLE_ROWS = 20  # rows looked at for the checks below: enough to see what the prompts ask


def _observed_output(plan: Plan) -> tuple[dict[str, float], str | None]:
    """Mean completion tokens per cell in the latest finished run of this experiment."""
    folder = Path(plan.exp.config.reports_dir) / plan.exp.name
    runs = sorted((d for d in folder.glob("*") if (d / RESULTS).is_file()), key=lambda d: d.stat().st_mtime)
    if not runs:
        return {}, None
    import pandas as pd

    df = request_rows(pd.read_parquet(runs[-1] / RESULTS, columns=["cell_id", "choice_index", "completion_tokens"]))
    return df.groupby("cell_id").completion_tokens.mean().dropna().to_dict(), str(runs[-1])


def _prompt_tokens(plan: Plan) -> Counter[str]:
    """Prompt tokens per prompt variant, summed over rows (one pass over the dataset)."""
    prompt_tokens: Counter[str] = Counter()
    for _, row in iter_rows(plan.dataset):
        for name, templates in plan.templates.items():
            prompt_tokens[name] += estimate_tokens(render(templates, row))
    return prompt_tokens


@dataclass(slots=True)
class _CostTally:
    """The plan's cost estimates, added up cell by cell (the cells' judges included)."""

    pricing: Pricing
    observed: dict[str, float]  # mean completion tokens per cell of the latest run
    expected: float = 0.0
    worst: float = 0.0
    judge_requests: int = 0
    judge_expected: float = 0.0
    unpriced: set[str] = field(default_factory=set)

    def add(self, exp: Experiment, cell: Cell, reqs: int, tin: int) -> None:
        """One cell's `reqs` requests, `tin` prompt tokens in all."""
        pricing = self.pricing
        if not pricing.known(cell.model):
            self.unpriced.add(cell.model)
            return
        expected_out = self.observed.get(cell.cell_id, output_budget(cell.params) * ASSUMED_OUTPUT_SHARE) * reqs
        per_req_in = tin / reqs if reqs else 0
        self.expected += reqs * (
            pricing.cost(
                cell.model,
                {"prompt_tokens": round(per_req_in), "completion_tokens": round(expected_out / reqs)},
            )["cost_total"]
            or 0.0
        )
        self.worst += reqs * (pricing.worst_case(cell.model, round(per_req_in), output_budget(cell.params)) or 0.0)
        asked, expected, worst = _judging(exp, pricing, cell, reqs, per_req_in + expected_out / reqs, self.unpriced)
        self.judge_requests += asked
        self.judge_expected += expected
        self.expected += expected
        self.worst += worst


def _targets(
    exp: Experiment, per_target: dict[tuple[str, str], dict[str, float]]
) -> tuple[list[dict[str, Any]], float]:
    """Per provider × model: requests, limits and the shortest time its rpm/tpm allow; and the
    run's shortest duration (the slowest target's)."""
    targets = []
    shortest = 0.0
    for (provider, model), t in per_target.items():
        pcfg = exp.providers[provider]
        by_rpm = t["requests"] / pcfg.rpm * 60 if pcfg.rpm else 0.0
        by_tpm = t["tokens"] / pcfg.tpm * 60 if pcfg.tpm else 0.0
        bound = max(by_rpm, by_tpm)
        shortest = max(shortest, bound)
        targets.append(
            {
                "provider": provider,
                "model": model,
                "requests": int(t["requests"]),
                "rpm": pcfg.rpm,
                "tpm": pcfg.tpm,
                "max_concurrency": pcfg.max_concurrency,
                "shortest_s": round(bound, 1),
                "limited_by": "rpm" if bound and by_rpm >= by_tpm else "tpm" if bound else None,
            }
        )
    return targets, shortest


def plan_report(plan: Plan, no_cache: bool = False) -> dict[str, Any]:
    """Counts and estimates. Streams the dataset once; never materialises the requests."""
    exp = plan.exp
    repeats = plan.repeats
    prompt_tokens = _prompt_tokens(plan)
    per_target: dict[tuple[str, str], dict[str, float]] = {}
    est_in = 0
    est_out_max = 0
    out_bounded = True
    pricing = load_pricing(exp.config.prices, exp.path)
    observed, basis = _observed_output(plan)
    tally = _CostTally(pricing, observed) if pricing else None
    for cell in plan.cells:
        reqs = plan.dataset.rows * repeats
        tin = prompt_tokens[cell.prompt_id] * repeats
        has_cap = bool(cell.params.get("max_tokens") or cell.params.get("max_completion_tokens"))
        tout = output_budget(cell.params) * reqs
        out_bounded &= has_cap
        est_in += tin
        est_out_max += tout
        if tally is not None:
            tally.add(exp, cell, reqs, tin)
        t = per_target.setdefault((cell.provider, cell.model), {"requests": 0, "tokens": 0})
        t["requests"] += reqs
        t["tokens"] += tin + tout
    targets, shortest = _targets(exp, per_target)
    return {
        "experiment": exp.name,
        "config": str(exp.path),
        "dataset": str(plan.dataset.path),
        "cells": len(plan.cells),
        "rows": plan.dataset.rows,
        "repeats": repeats,
        "requests": plan.total_requests,
        "est_input_tokens": est_in,
        "est_output_tokens_max": est_out_max,
        "output_bounded": out_bounded,
        "shortest_duration_s": round(shortest, 1),
        "targets": targets,
        "currency": pricing.currency if pricing else None,
        "prices": pricing.source if pricing else None,
        "cost_expected": None if tally is None else round(tally.expected, 6),
        "cost_worst_case": None if tally is None else round(tally.worst, 6),
        "cost_basis": (f"mean output per cell of {basis}, else " if basis else "")
        + f"{ASSUMED_OUTPUT_SHARE:.0%} of max_tokens",
        "unpriced_models": sorted(tally.unpriced) if tally else [],
        "judge_requests": tally.judge_requests if tally else 0,  # counted when prices are known
        "judge_cost_expected": round(tally.judge_expected, 6) if tally else None,
        "notes": model_warnings(exp) + simulator_misses(plan),
        "cache": None if no_cache else cache_hits(plan),
    }


def _judging(
    exp: Experiment, pricing: Pricing, cell: Cell, reqs: int, graded_tokens: float, unpriced: set[str]
) -> tuple[int, float, float]:
    """(requests, expected cost, worst case) of the judges grading one cell's `reqs` answers: a
    judge's prompt is its rubric, the question and the answer (`graded_tokens`, the prompt and
    the expected answer); its answer is assumed the same share of its max_tokens as the cell's."""
    asked, expected, worst = 0, 0.0, 0.0
    for cfg in exp.config.scorers:
        if not isinstance(cfg, LabelModel | ScoreModel | PairwiseModel):
            continue
        if isinstance(cfg, PairwiseModel) and cfg.baseline.model == cell.model:
            continue  # the baseline is not graded against itself
        if not pricing.known(cfg.model):
            unpriced.add(cfg.model)
            continue
        times = reqs * (2 if isinstance(cfg, PairwiseModel) else 1)  # pairwise: both orders
        rubric = RUBRICS.get(cfg.rubric)
        prompt = round(
            graded_tokens
            + estimate_tokens([{"role": "user", "content": rubric.instructions if rubric else cfg.rubric}])
        )
        out = output_budget(clean_params(cfg.params))
        usage = {"prompt_tokens": prompt, "completion_tokens": round(out * ASSUMED_OUTPUT_SHARE)}
        asked += times
        expected += times * (pricing.cost(cfg.model, usage)["cost_total"] or 0.0)
        worst += times * (pricing.worst_case(cfg.model, prompt, out) or 0.0)
    return asked, expected, worst


def cache_hits(plan: Plan) -> dict[str, Any] | None:
    """With `cache:` set: how many requests its answers would serve, and what they cost once.
    A cache the run could not use is refused here as the run would refuse it (exit 2)."""
    import sqlite3

    from evalrun.run.context import cache_file
    from evalrun.run.store import Keyer, ResponseCache, endpoint_identity, fix_hint

    path = cache_file(plan.exp)
    if path is None:
        return None
    out: dict[str, Any] = {"path": str(path), "hits": 0, "saved": 0.0}
    if not path.is_file():
        return out
    cache_off: str | None
    try:
        cache = ResponseCache(path, readonly=True)
    except sqlite3.Error as exc:
        cache_off = str(exc)
    else:
        keyers = {c.provider: Keyer(endpoint_identity(plan.exp.providers[c.provider])) for c in plan.cells}
        try:
            for spec in plan.specs():
                hit = cache.get(keyers[spec.cell.provider](spec))
                if hit is not None:
                    out["hits"] += 1
                    out["saved"] += hit.cost or 0.0
        finally:
            cache.close()
        cache_off = cache.off
    if cache_off is not None:
        raise ConfigError(f"{plan.exp.where('cache')}: cache: {path} cannot be read ({cache_off}); {fix_hint(path)}")
    return out


def format_plan(report: dict[str, Any]) -> str:
    lines = [
        f"experiment   {report['experiment']}  ({report['config']})",
        f"dataset      {report['dataset']}: {report['rows']:,} rows",
        f"grid         {report['cells']:,} cells × {report['rows']:,} rows × {report['repeats']} repeats "
        f"= {report['requests']:,} requests",
        f"tokens       ≈{report['est_input_tokens']:,} input; output ≤ {report['est_output_tokens_max']:,}"
        + ("" if report["output_bounded"] else " (no max_tokens set: assumed 1,024 a request)"),
    ]
    if report["cost_worst_case"] is not None:
        lines.append(
            f"cost         ≈{report['cost_expected']:.4f} {report['currency']} expected "
            f"({report['cost_basis']}), ≤ {report['cost_worst_case']:.4f} if every request uses max_tokens; "
            f"prices: {report['prices']}"
        )
        if report.get("judge_requests"):
            lines.append(
                f"             of which judges ≈{report['judge_cost_expected']:.4f} for "
                f"{report['judge_requests']:,} judge requests (their answers: {ASSUMED_OUTPUT_SHARE:.0%} of max_tokens)"
            )
        if report["unpriced_models"]:
            lines.append(f"             no price for {', '.join(report['unpriced_models'])}: not included")
    else:
        lines.append("cost         no price table (set prices: or put prices.yaml beside the config)")
    lines += [wrapped("note         " + n, " " * 13) for n in report.get("notes") or []]
    if (cache := report.get("cache")) is not None:
        saved = f", {cache['saved']:.4f} {report['currency']} saved" if report["currency"] else ""
        lines.append(
            f"cache        {cache['hits']:,} of {report['requests']:,} requests answered by {cache['path']}{saved}"
        )
    if report["shortest_duration_s"]:
        lines.append(f"duration     ≥ {_dur(report['shortest_duration_s'])} (rate limits)")
    else:
        lines.append("duration     not rate-limited: bounded by server latency × requests / concurrency")
    for t in report["targets"]:
        limit = ", ".join(f"{k} {t[k]:,}" for k in ("rpm", "tpm") if t[k]) or "no rate limit"
        extra = f", ≥ {_dur(t['shortest_s'])} by {t['limited_by']}" if t["limited_by"] else ""
        lines.append(
            f"  {t['provider']}/{t['model']}: {t['requests']:,} requests ({limit}, "
            f"concurrency {t['max_concurrency']}{extra})"
        )
    return "\n".join(lines)


def wrapped(sentence: str, indent: str) -> str:
    """A note as lines of at most 100 columns (paths and names never broken)."""
    return textwrap.fill(sentence, 100, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False)


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


# --------------------------------------------------------------------------- checks before a run

# what the simulator can answer (evalrun.sim.tasks recognises them); anything else gets filler
SIM_TASKS = (
    "arithmetic, multiple choice (lettered options and a cue such as 'Answer:'), JSON (response_format) and tool calls"
)


def simulator_misses(plan: Plan) -> list[str]:
    """Prompts sent to the simulator that match none of its tasks, in the first rows: their
    answers will be filler and score about 0 — say so before anyone reads 0 % as a result."""
    exp = plan.exp
    cells = [c for c in plan.cells if exp.providers[c.provider].kind == "simulator"]
    from_rows = set(exp.config.dataset.params_from_columns) & {"response_format", "tools"}
    structured = {c.prompt_id for c in cells if from_rows or c.params.get("response_format") or c.params.get("tools")}
    pending = {c.prompt_id for c in cells} - structured
    for _, row in islice(iter_rows(plan.dataset), SAMPLE_ROWS):
        for name in sorted(pending):
            users = [m for m in render(plan.templates[name], row) if m.get("role") == "user"]
            text = message_text(users[-1].get("content")) if users else ""
            if find_multiple_choice(text) or find_arithmetic(text):
                pending.discard(name)
    if not pending:
        return []
    names = ", ".join(sorted(pending))
    return [
        f"prompt {names} matches none of the simulator's tasks ({SIM_TASKS}) in its first rows: its answers "
        "will be filler that scores about 0 (README: The simulator)"
    ]


def run_checks(exp: Experiment, max_cost: float | None) -> list[str]:
    """What `evalrun run` says before it sends anything: the simulator's blind spots and a
    missing price table (notes), or a budget no request fits (ConfigError: nothing is sent)."""
    plan = build_plan(exp, SAMPLE_ROWS)
    notes = model_warnings(exp) + simulator_misses(plan)
    pricing = load_pricing(exp.config.prices, exp.path)
    if pricing is None:
        notes.append(
            f"no price table: the cost columns stay empty (set prices: in {exp.path.name}, "
            f"or put prices.yaml beside it in {exp.path.parent})"
        )
    max_cost = max_cost or exp.config.budget.max_cost
    if pricing is None or not max_cost:
        return notes
    prompts = {name: 0 for name in plan.templates}
    for _, row in iter_rows(plan.dataset):
        for name, templates in plan.templates.items():
            prompts[name] = max(prompts[name], estimate_tokens(render(templates, row)))
    worst = max(
        ((pricing.worst_case(c.model, prompts[c.prompt_id], output_budget(c.params)) or 0.0, c) for c in plan.cells),
        key=lambda wc: wc[0],
    )
    if worst[0] > max_cost:
        cost, cell = worst
        raise ConfigError(
            f"--max-cost {max_cost:g}: one request of {cell.model} may cost up to {cost:.4f} {pricing.currency} "
            f"(≈{prompts[cell.prompt_id]:,} prompt tokens and all {output_budget(cell.params):,} output tokens of "
            "max_tokens), and the budget holds a model's worst case until it has answered once, so it could never "
            "be sent; "
            f"raise --max-cost above {cost:.4f} (one request) or lower max_tokens"
        )
    return notes


T = TypeVar("T")


def preflight(
    evaluator: Callable[[Experiment, tuple[str, ...]], T], max_cost: float | None, say: Callable[[str], None]
) -> Callable[[Experiment, tuple[str, ...]], T]:
    """The run's evaluator hook, which first (once, before anything is sent) says what the run
    would not tell by itself: prompts the simulator cannot answer, no prices, a budget too small."""
    checked: list[bool] = []

    def hook(exp: Experiment, columns: tuple[str, ...]) -> T:
        if not checked:
            checked.append(True)
            for note in run_checks(exp, max_cost):
                say(note)
        return evaluator(exp, columns)

    return hook
