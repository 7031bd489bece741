"""The recorder: every finished request becomes its journal line, its cost and its counts.

It owns the journal for the length of the run (`with Recorder(...) as rec`), so a result is
durable (flushed to the OS) before it counts as done; the pool hands it each Result once.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from evalrun.config.prices import CostBudget, Pricing
from evalrun.run.journal import JOURNAL, Journal, read_journal
from evalrun.run.progress import RunStats
from evalrun.run.records import Result
from evalrun.run.sink import ResultsSink
from evalrun.run.store import result_rows


class Recorder:
    """Journal + per-result bookkeeping (cost, budget, counters) for one run."""

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        experiment: str,
        data_columns: tuple[str, ...],
        stats: RunStats,
        pricing: Pricing | None,
        budget: CostBudget | None,
        sink: ResultsSink | None = None,
    ) -> None:
        self.run_id = run_id
        self.experiment = experiment
        self.data_columns = data_columns
        self.stats = stats
        self.pricing = pricing
        self.budget = budget
        self.journal = Journal(run_dir / JOURNAL)
        self.sink = sink  # results.parquet written as the run goes (None: built from the journal at the end)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.journal.close()

    def record(self, result: Result) -> None:
        """Write one request's rows, then count it. Raises if the journal cannot be written."""
        rows = result_rows(result, self.run_id, self.experiment, self.data_columns)
        cost = None
        if self.pricing is not None:  # usage sits on the first row: so does the request's cost
            rows[0].update(self.pricing.cost(result.spec.cell.model, rows[0]))
            cost = rows[0]["cost_total"]
        status = "ok" if result.ok else "error"
        recorded = self.journal.append(result.spec.request_id, status, result.error_type, rows)
        if self.sink is not None:  # after the journal: only a durable answer reaches the report
            self.sink.add(status, recorded)
        if self.budget is not None:
            self.budget.settle(result.spec.request_id, cost)
        stats = self.stats
        stats.cost += cost or 0.0
        stats.done += 1
        if result.completion is not None:
            stats.ok += 1
            stats.tokens += result.completion.usage.total_tokens or 0
        else:
            stats.errors += 1
            stats.errors_by_type[result.error_type or "unknown"] += 1
        if result.retry_types:
            stats.retries += len(result.retry_types)
            stats.retries_by_type.update(result.retry_types)


def spent(run_dir: Path) -> float:
    """What the recorded requests of a run cost so far (for a resumed cost budget)."""
    return sum((row.get("cost_total") or 0.0) for e in read_journal(run_dir / JOURNAL) for row in e["rows"])
