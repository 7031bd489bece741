"""`evalrun history`: the last N completed runs of an experiment as trends per cell and scorer,
the steps that are significant, and the nights where something besides the model's answers
changed (drift).

Everything comes from each run's summary.parquet (pass rates with their repeat-aware intervals
and effective numbers of rows, cost per pass, tokens, latency quantiles, error rate) and a few
facts of its manifest; answers are never read.

The step test. For each cell × scorer, the last run's pass rate p₁ is compared with the pooled
rate p₀ of the window's earlier runs by a two-proportion test on *effective* rows: each run
counts n_eff rows (the interval's sample size, Kish's design effect over the row fractions, see
rowstats.py), p₀ is the n_eff-weighted mean of the earlier rates and n₀ their sum. With one
answer per row n_eff is the number of rows and this is the textbook z-test on row counts; with
repeats it weighs a run as its rows' spread allows — never as if repeats were independent items —
and, that spread being an estimate from the last run's rows, the statistic is read against
Student's t with rows − 1 degrees of freedom. Nights that answer the same rows share the row
effect, which makes the test conservative, not liberal.
The p-values of all cells × scorers are adjusted by Benjamini–Hochberg; a step is flagged when
its adjusted p-value (q) is below alpha. When nothing changed, the chance that any cell is
flagged is then at most alpha, however many cells there are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from evalrun.analysis.history_load import Place, RunFacts, all_facts, find_runs, read_summary
from evalrun.analysis.stats import student_t_p
from evalrun.config.params import PARAM_COLUMN
from evalrun.errors import ConfigError

ALPHA = 0.05
DEFAULT_LAST = 30
_PARAMS = frozenset(PARAM_COLUMN.values())


@dataclass(frozen=True, slots=True)
class Point:
    """One cell × scorer on one night: what its summary row says."""

    run_id: str
    rate: float | None
    low: float | None
    high: float | None
    eff_rows: float | None  # the rate's effective number of rows (the test's sample size)
    rows: int | None  # the dataset rows it answered (the test's degrees of freedom come from them)
    answers: int | None  # its answers (rows × repeats × choices)
    cost_per_pass: float | None
    tokens_per_request: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    error_rate: float | None


@dataclass(frozen=True, slots=True)
class Step:
    """The last night against the pooled earlier nights of the window, for one cell × scorer."""

    last: float
    before: float
    delta: float
    p_value: float
    q_value: float  # Benjamini–Hochberg adjusted over every cell × scorer tested
    flagged: bool


@dataclass(frozen=True, slots=True)
class Series:
    """One cell × scorer across the window's nights (None where the night had no such cell)."""

    key: str
    label: str
    scorer: str
    points: tuple[Point | None, ...]
    step: Step | None


@dataclass(frozen=True, slots=True)
class Drift:
    """Something other than the answers changed between two consecutive nights."""

    run_id: str  # the night it is first seen
    index: int  # that night's position in the window
    kind: str  # served model, prompt, params, prices, dataset
    label: str  # the cell ("" for the whole run)
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class History:
    """What `evalrun history` shows and writes."""

    source: str
    experiment: str
    runs: tuple[RunFacts, ...]  # the window's nights, oldest first
    skipped: tuple[str, ...]  # "<run>: <why>" for each run left out
    series: tuple[Series, ...]
    drift: tuple[Drift, ...]
    alpha: float

    @property
    def flagged(self) -> list[Series]:
        return [s for s in self.series if s.step is not None and s.step.flagged]


@dataclass(frozen=True, slots=True)
class _Night:
    facts: RunFacts
    cells: Mapping[str, Mapping[str, Any]]  # series key → summary row


def build_history(source: str, last: int = DEFAULT_LAST, alpha: float = ALPHA) -> History:
    """The history of the runs SOURCE names (a glob, an experiment's folder; local or a URL)."""
    if last < 1:
        raise ConfigError(f"history --last {last}: must be at least 1")
    nights, skipped = _nights(find_runs(source), last)
    if not nights:
        why = f" ({len(skipped)} skipped: {skipped[-1]})" if skipped else ""
        raise ConfigError(f"history: {source}: no completed run to show{why}")
    keys = sorted({k for n in nights for k in n.cells})
    labels = _labels(keys)
    scorers = sorted(
        {c[len("pass_rate_") :] for n in nights for row in n.cells.values() for c in row if c.startswith("pass_rate_")}
    ) or [""]  # no scorer: still each cell's cost, tokens, latency and errors
    raw = [(k, s, tuple(_point(n, k, s) for n in nights)) for k in keys for s in scorers]
    raw = [r for r in raw if any(p is not None for p in r[2])]
    steps = adjust([step_p(points) for _, _, points in raw], alpha)
    series = tuple(Series(k, labels[k], s, pts, st) for (k, s, pts), st in zip(raw, steps, strict=True))
    return History(
        source,
        nights[-1].facts.experiment,
        tuple(n.facts for n in nights),
        tuple(skipped),
        series,
        tuple(drift_markers(nights, labels)),
        alpha,
    )


def _nights(places: list[Place], last: int) -> tuple[list[_Night], list[str]]:
    """The last `last` completed runs of the newest run's experiment, oldest first, and a line
    for each run left out on the way (damaged, running, stopped, another experiment)."""
    facts: list[tuple[Place, RunFacts]] = []
    skipped: list[tuple[str, str]] = []  # (when, line)
    for place, f in zip(places, all_facts(places), strict=True):
        if isinstance(f, str):
            skipped.append(("~", f"{place.name}: {f}"))
        elif (why := f.skip_reason()) is not None:
            skipped.append((f.started_at, f"{place.name}: {why}"))
        else:
            facts.append((place, f))
    facts.sort(key=lambda pf: (pf[1].started_at, pf[0].name))
    experiment = facts[-1][1].experiment if facts else ""
    nights: list[_Night] = []
    for place, f in reversed(facts):
        if len(nights) == last:
            break
        if f.experiment != experiment:
            skipped.append((f.started_at, f"{place.name}: experiment {f.experiment!r}, not {experiment!r}"))
            continue
        try:
            nights.append(_Night(f, _by_key(read_summary(place), f)))
        except ConfigError as exc:
            skipped.append((f.started_at, f"{place.name}: {exc}"))
    nights.reverse()
    since = nights[0].facts.started_at if nights else ""
    # a run older than the window is not part of it: saying why it was skipped would be noise
    return nights, [line for when, line in sorted(skipped) if when >= since]


def series_key(row: Mapping[str, Any], facts: RunFacts) -> str:
    """A cell across nights: provider, model, prompt name and its point on the grid's axes.
    Other parameters are not in it — changing max_tokens for every cell, or one model's own
    parameters, is drift on the same cell — nor is the cell id, which changes with the prompt's
    text. A manifest without the cell: the parameters the summary shows as varying."""
    params = facts.cell_params.get(str(row.get("cell_id")))
    if params is not None:
        point = {k: params.get(k) for k in facts.axes}
    else:
        point = {k: row[k] for k in sorted(row) if k in _PARAMS}
    return orjson.dumps([row.get("provider"), row.get("model"), row.get("prompt_id"), point]).decode()


def _by_key(rows: list[dict[str, Any]], facts: RunFacts) -> dict[str, dict[str, Any]]:
    return {series_key(r, facts): r for r in rows}


def _labels(keys: list[str]) -> dict[str, str]:
    """Short names: the model, then the provider and prompt only where they tell cells apart."""
    parsed = {k: orjson.loads(k) for k in keys}
    providers = len({p[0] for p in parsed.values()}) > 1
    prompts = len({p[2] for p in parsed.values()}) > 1
    out = {}
    for k, (provider, model, prompt, params) in parsed.items():
        parts = [*([provider] if providers else []), model, *([prompt] if prompts else [])]
        out[k] = " · ".join([*map(str, parts), *(f"{p}={_show(v)}" for p, v in params.items())])
    return out


def _show(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _point(night: _Night, key: str, scorer: str) -> Point | None:
    row = night.cells.get(key)
    if row is None or (scorer and f"pass_rate_{scorer}" not in row):
        return None
    requests, tokens = _num(row.get("requests")), _num(row.get("total_tokens"))
    # summaries written before eff_rows existed: the number of rows, never more than n_eff
    eff = _num(row.get(f"eff_rows_{scorer}"))
    return Point(
        run_id=night.facts.run_id,
        rate=_num(row.get(f"pass_rate_{scorer}")),
        low=_num(row.get(f"pass_ci_low_{scorer}")),
        high=_num(row.get(f"pass_ci_high_{scorer}")),
        eff_rows=eff if eff is not None else _num(row.get("items")),
        rows=None if row.get("items") is None else int(row["items"]),
        answers=None if row.get("rows") is None else int(row["rows"]),
        cost_per_pass=_num(row.get(f"cost_per_pass_{scorer}")),
        tokens_per_request=tokens / requests if tokens is not None and requests else None,
        latency_p50_s=_num(row.get("latency_p50_s")),
        latency_p95_s=_num(row.get("latency_p95_s")),
        error_rate=_num(row.get("error_rate")),
    )


def two_proportion_p(p1: float, n1: float, p0: float, n0: float, df: float | None = None) -> float:
    """Two-sided p-value of p₁ (n₁ rows) against p₀ (n₀ rows), pooled variance: the z-test, or
    with `df` the same statistic against Student's t (the variance was estimated from df + 1 rows)."""
    pooled = (p1 * n1 + p0 * n0) / (n1 + n0)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n0)
    if var <= 0:
        return 1.0  # every row passed (or failed) on both sides: nothing moved
    t = abs(p1 - p0) / math.sqrt(var)
    return math.erfc(t / math.sqrt(2)) if df is None else student_t_p(t, df)


def step_p(points: Sequence[Point | None]) -> tuple[float, float, float] | None:
    """(last rate, pooled earlier rate, p-value) of a series, or None when the last night has no
    rate or no earlier night has one. With repeats the last night's variance is estimated from
    its rows' spread, so the statistic is read against t with rows − 1 degrees of freedom (the
    normal's tails made a 12-cell history flag noise 8 % of the time instead of 5 %)."""
    last = points[-1] if points else None
    if last is None or last.rate is None or not last.eff_rows:
        return None
    earlier = [p for p in points[:-1] if p is not None and p.rate is not None and p.eff_rows]
    if not earlier:
        return None
    n0 = sum(p.eff_rows for p in earlier if p.eff_rows)
    p0 = sum(p.rate * p.eff_rows for p in earlier if p.rate is not None and p.eff_rows) / n0
    several = last.rows and last.answers and last.answers > last.rows  # repeats or choices
    df = last.rows - 1 if several and last.rows and last.rows > 1 else None
    # the summary's variance divides the rows' spread by rows (CR0); the unbiased one by rows − 1
    n1 = last.eff_rows if df is None else last.eff_rows * df / (df + 1)
    return last.rate, p0, two_proportion_p(last.rate, n1, p0, n0, df)


def bh_adjust(p_values: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (q-values), in the input's order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    q, running = [1.0] * m, 1.0
    for rank in range(m, 0, -1):  # from the largest p down: q is the running minimum of m·p/rank
        i = order[rank - 1]
        running = min(running, p_values[i] * m / rank)
        q[i] = min(1.0, running)
    return q


def adjust(tests: Sequence[tuple[float, float, float] | None], alpha: float) -> list[Step | None]:
    """Each test as a Step, flagged when its BH-adjusted p-value is below alpha."""
    done = [(i, t) for i, t in enumerate(tests) if t is not None]
    q = bh_adjust([t[2] for _, t in done])
    out: list[Step | None] = [None] * len(tests)
    for (i, (last, before, p)), qi in zip(done, q, strict=True):
        out[i] = Step(last, before, last - before, p, qi, qi < alpha)
    return out


def drift_markers(nights: Sequence[_Night], labels: Mapping[str, str]) -> list[Drift]:
    """What changed between each pair of consecutive nights besides the answers."""
    out: list[Drift] = []
    for i in range(1, len(nights)):
        a, b = nights[i - 1], nights[i]
        run = b.facts.run_id
        if a.facts.dataset_hash and b.facts.dataset_hash and a.facts.dataset_hash != b.facts.dataset_hash:
            out.append(Drift(run, i, "dataset", "", a.facts.dataset_hash, b.facts.dataset_hash))
        for key in sorted(set(a.cells) & set(b.cells)):
            out += [Drift(run, i, kind, labels[key], x, y) for kind, x, y in _cell_changes(a, b, key)]
    return out


def _cell_changes(a: _Night, b: _Night, key: str) -> list[tuple[str, str, str]]:
    """(kind, before, after) of what changed for one cell between nights a and b."""
    ra, rb = a.cells[key], b.cells[key]
    out = []
    served = ra.get("response_models"), rb.get("response_models")
    if served[0] and served[1] and served[0] != served[1]:
        out.append(("served model", str(served[0]), str(served[1])))
    prompt = str(ra.get("prompt_id"))
    pa, pb = a.facts.prompts.get(prompt), b.facts.prompts.get(prompt)
    if pa and pb and pa != pb:
        out.append(("prompt", pa, pb))
    params = a.facts.cell_params.get(str(ra.get("cell_id"))), b.facts.cell_params.get(str(rb.get("cell_id")))
    if params[0] is not None and params[1] is not None and params[0] != params[1]:
        changed = sorted(set(params[0]) | set(params[1]), key=str)
        diff = [k for k in changed if params[0].get(k) != params[1].get(k)]
        out.append(("params", _params_text(params[0], diff), _params_text(params[1], diff)))
    model = str(ra.get("model"))
    price_a, price_b = a.facts.prices.get(model), b.facts.prices.get(model)
    if price_a != price_b and (price_a or price_b):
        out.append(("prices", price_a or "none", price_b or "none"))
    return out


def _params_text(params: Mapping[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={_show(params[k]) if k in params else '(unset)'}" for k in keys)
