"""Deciding a cell before all its rows are answered: `run --stop-when-decided BASELINE`.

A fixed-size test looked at after every row and stopped when it "looks significant" has a
false-alarm rate far above its alpha (sampling to a foregone conclusion). What may be looked at
after every row is an *always-valid* test: here a test by betting (Shafer; Waudby-Smith &
Ramdas 2023, "Estimating means of bounded random variables by betting").

For each row both runs answered, d = new pass fraction − base pass fraction, in [−1, 1]. Two
wealth processes, each starting at 1, bet on a side of the gate's threshold f (fail_on_drop):

    regression:     K ← K · (1 + λ·(−f − d))     a fair bet while the mean drop is not above f
    no regression:  M ← M · (1 + λ'·(d + f))     a fair bet while the mean drop is at least f

Under its null each is a nonnegative supermartingale, so by Ville's inequality it ever reaches
1/alpha with probability at most alpha, however often it is looked at. K ≥ 1/alpha: the cell
regressed (decided); M ≥ 1/alpha: it did not regress by more than f (decided). The bets λ are
predictable (from the rows before only): the running mean payoff over its second moment (the
growth-optimal bet to second order, "aGRAPA"), clipped to [0, HALF / the largest loss] so one
row can never take more than half the wealth.

Rows must come in an order unrelated to their answers (dataset order is fine unless the file
is sorted by difficulty; the run sends every repeat of a row before the next row).
tests/test_sequential.py checks the false alarms and the savings on the simulator's own
correctness model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from evalrun.errors import ConfigError
from evalrun.run.store import DATA_PREFIX

if TYPE_CHECKING:
    from evalrun.analysis.compare import Gate
    from evalrun.analysis.scoring import Scorers
    from evalrun.run.records import Cell, RequestSpec


class Plan(Protocol):
    """What the decider reads of the run's plan (run.grid.Plan; analysis sees the run only
    through the store and records faces)."""

    @property
    def exp(self) -> Any: ...  # config.load.Experiment

    @property
    def cells(self) -> list[Cell]: ...

    @property
    def dataset(self) -> Any: ...  # its rows and columns

    @property
    def repeats(self) -> int: ...


HALF = 0.5  # the most of its wealth a bet may stake on one row
PRIOR_ROWS = 1.0  # pseudo-rows of payoff 0 and second moment PRIOR_M2: no bet on the first rows
PRIOR_M2 = 0.25
REGRESSED, NOT_REGRESSED = "regressed", "not regressed"


@dataclass(slots=True)
class _Bettor:
    """One wealth process betting that the payoffs' mean is positive."""

    worst: float  # the most negative payoff possible
    wealth: float = 1.0
    n: float = PRIOR_ROWS
    total: float = 0.0
    squares: float = PRIOR_M2 * PRIOR_ROWS

    def bet(self, payoff: float) -> None:
        mean, m2 = self.total / self.n, self.squares / self.n
        stake = min(max(mean / m2, 0.0), HALF / self.worst) if m2 > 0 else 0.0
        self.wealth *= 1 + stake * payoff
        self.n += 1
        self.total += payoff
        self.squares += payoff * payoff


@dataclass(slots=True)
class Sequential:
    """The always-valid decision of one cell against its baseline, row by row."""

    fail_on_drop: float
    alpha: float
    rows: int = 0
    decided: str | None = None
    _down: _Bettor = field(init=False)
    _up: _Bettor = field(init=False)

    def __post_init__(self) -> None:
        self._down = _Bettor(worst=1 + self.fail_on_drop)  # payoff −f − d ≥ −(1 + f)
        self._up = _Bettor(worst=max(1 - self.fail_on_drop, 1e-9))  # payoff d + f ≥ −(1 − f)

    def add(self, d: float) -> str | None:
        """One more row's difference; the decision once there is one (it does not change after)."""
        if self.decided is not None:
            return self.decided
        self.rows += 1
        self._down.bet(-self.fail_on_drop - d)
        self._up.bet(d + self.fail_on_drop)
        if self._down.wealth >= 1 / self.alpha:
            self.decided = REGRESSED
        elif self._up.wealth >= 1 / self.alpha:
            self.decided = NOT_REGRESSED
        return self.decided


class RowDecider:
    """The decider of a run (run.decide.Decider): scores each answer as it is recorded (with
    the gate's scorer, computed from the answer: a model judge answers only after the run),
    collects a row's answers (repeats × choices), and feeds each complete row's difference to
    the baseline into its cell's Sequential test."""

    def __init__(self, plan: Plan, baseline: Path, gate: Gate, scorers: Scorers) -> None:
        self.decided: set[str] = set()
        self._name = gate.scorer or (scorers.names[0] if scorers.names else None)
        if self._name is None or self._name not in scorers.names:
            raise ConfigError(
                "--stop-when-decided needs the gate's scorer to be one computed from the answer (exact, regex, "
                f"numeric, …), not a model judge (which answers only after the run); got {self._name or 'none'}"
            )
        self._scorers, self._min_passes = scorers, gate.min_passes
        self._base = _baseline_rows(baseline, self._name, plan, gate.min_passes)
        self._tests = {
            c.cell_id: Sequential(gate.fail_on_drop, gate.alpha) for c in plan.cells if c.cell_id in self._base
        }
        self._repeats = plan.repeats
        self._labels = {c.cell_id: f"{c.model} · {c.prompt_id}" for c in plan.cells}
        self._answered: dict[str, int] = {c.cell_id: 0 for c in plan.cells}
        self._pending: dict[tuple[str, str], list[int]] = {}

    def observe(self, spec: RequestSpec, rows: list[dict[str, Any]]) -> None:
        cell = spec.cell.cell_id
        self._answered[cell] += 1
        test = self._tests.get(cell)
        if test is None or test.decided is not None:
            return
        scored = [dict(r) for r in rows]  # the journal's rows stay as they are
        self._scorers.apply(scored, DATA_PREFIX)
        # [passes, answers, requests]: a row is whole after `repeats` requests (an error is one
        # row however many choices were asked, as in results.parquet the baseline is read from)
        acc = self._pending.setdefault((cell, spec.row_id), [0, 0, 0])
        acc[0] += sum(1 for r in scored if r.get(f"pass_{self._name}"))
        acc[1] += len(scored)
        acc[2] += 1
        if acc[2] < self._repeats:
            return
        del self._pending[(cell, spec.row_id)]
        base = self._base[cell].get(spec.row_id)
        if base is None:  # a row the baseline does not have says nothing about a change
            return
        value = float(acc[0] >= self._min_passes) if self._min_passes else acc[0] / acc[1]
        if test.add(value - base) is not None:
            self.decided.add(cell)

    def report(self) -> dict[str, dict[str, Any]]:
        return {
            cell: {"verdict": t.decided, "rows": t.rows, "answered": self._answered[cell], "label": self._labels[cell]}
            for cell, t in self._tests.items()
        }


def _baseline_rows(baseline: Path, scorer: str, plan: Plan, min_passes: int | None) -> dict[str, dict[str, float]]:
    """New cell id → {row id → the baseline's row value}, cells matched by model, prompt name
    and parameters (as compare matches them)."""
    import pyarrow.parquet as pq

    from evalrun.analysis.compare import cell_key
    from evalrun.run.store import RESULTS, manifest_if_any

    names = set(pq.read_schema(baseline / RESULTS).names)
    if f"pass_{scorer}" not in names:
        raise ConfigError(f"--stop-when-decided: the baseline {baseline} has no scores of {scorer!r}")
    keys = {str(c.cell_id): cell_key(c.model, c.prompt_id, c.params) for c in manifest_if_any(baseline).cells}
    df = pq.read_table(baseline / RESULTS, columns=["cell_id", "row_id", f"pass_{scorer}"]).to_pandas()
    df["passed"] = df[f"pass_{scorer}"].fillna(False).astype(bool)
    g = df.groupby(["cell_id", "row_id"]).passed.agg(["sum", "size"])
    value = (g["sum"] >= min_passes).astype(float) if min_passes else g["sum"] / g["size"]
    by_key: dict[str, dict[str, float]] = {}
    for (cell, row), v in value.items():
        if cell in keys:
            by_key.setdefault(keys[cell], {})[str(row)] = float(v)
    new = {c.cell_id: cell_key(c.model, c.prompt_id, c.params) for c in plan.cells}
    return {cell: by_key[k] for cell, k in new.items() if k in by_key}


def decider_for(baseline: str) -> Callable[[Plan], RowDecider]:
    """`--stop-when-decided BASELINE` (a run directory, or latest: the experiment's latest
    completed run): the run builds the decider once its plan is known."""

    def build(plan: Plan) -> RowDecider:
        from evalrun.analysis.baseline import named_or_latest
        from evalrun.analysis.compare import Gate
        from evalrun.analysis.scoring import load_scorers

        exp = plan.exp
        base = named_or_latest(exp, baseline, "--stop-when-decided", "; give a finished run directory")
        cfg = exp.config.gate
        gate = Gate(cfg.scorer, cfg.fail_on_drop, cfg.alpha, False, cfg.min_passes)
        scorers = load_scorers(exp.config.scorers, exp.path, tuple(plan.dataset.columns), exp.lines)
        return RowDecider(plan, base, gate, scorers)

    return build
