"""The recorder: every finished request becomes its journal line, its cost and its counts.

It owns the journal for the length of the run (`with Recorder(...) as rec`), so a result is
durable (flushed to the OS) before it counts as done; the pool hands it each Result once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from evalrun.config.prices import Pricing
from evalrun.run.decide import Decider
from evalrun.run.progress import RunStats
from evalrun.run.records.records import RequestSpec, Result
from evalrun.run.send.budget import CostBudget
from evalrun.run.store.cache import CachedAnswer, ResponseCache, cached_rows
from evalrun.run.store.journal import JOURNAL, JUDGE_JOURNAL, Journal, read_journal
from evalrun.run.store.sink import ResultsSink
from evalrun.run.store.store import result_rows

# the columns of a request that describe it in this run; a cached answer takes them from here
IDENTITY = ("status", "http_status", "error_type", "error_message")


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
        journal: str = JOURNAL,  # JUDGE_JOURNAL for the judge requests of the run
        keyers: Mapping[str, Callable[[RequestSpec], str]] | None = None,  # provider → request key
        cache: ResponseCache | None = None,  # where successful answers are kept for later runs
        sink: ResultsSink | None = None,  # results.parquet written as the run goes
        decider: Decider | None = None,  # --stop-when-decided: sees each answer once it is durable
    ) -> None:
        self.run_id = run_id
        self.experiment = experiment
        self.data_columns = data_columns
        self.stats = stats
        self.pricing = pricing
        self.budget = budget
        self.journal = Journal(run_dir / journal)
        self.keyers = keyers or {}
        self.cache = cache
        self.decider = decider
        self._keys: dict[str, str] = {}  # request id → key, computed when the cache was asked
        self.sink = sink  # None: results.parquet is built from the journal at the end

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.journal.close()

    def record(self, result: Result) -> None:
        """Write one request's rows, then count it. Raises if the journal cannot be written."""
        spec = result.spec
        rows = result_rows(result, self.run_id, self.experiment, self.data_columns)
        cost = None
        if self.pricing is not None:  # usage sits on the first row: so does the request's cost
            rows[0].update(self.pricing.cost(spec.cell.model, rows[0]))
            cost = rows[0]["cost_total"]
        key = self._key(spec)
        if key is not None:  # what `--reuse` and the cache find this answer by
            rows[0]["request_key"] = key
        status = "ok" if result.ok else "error"
        recorded = self.journal.append(spec.request_id, status, result.error_type, rows)
        if self.sink is not None:  # after the journal: only a durable answer reaches the report
            self.sink.add(status, recorded)
        if self.decider is not None:
            self.decider.observe(spec, recorded)
        if self.cache is not None and key is not None and result.ok:
            self.cache.put(key, recorded, self.run_id, cost)
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

    def _key(self, spec: RequestSpec) -> str | None:
        key = self._keys.pop(spec.request_id, None)
        if key is None and (keyer := self.keyers.get(spec.cell.provider)) is not None:
            key = keyer(spec)
        return key

    def record_cached(self, spec: RequestSpec, key: str, hit: CachedAnswer) -> None:
        """An answer served from a cache: recorded like any, unsent, at no cost to this run."""
        fresh = result_rows(Result(spec, time.time(), None, 0, None), self.run_id, self.experiment, self.data_columns)
        identity = {k: v for k, v in fresh[0].items() if k not in IDENTITY}
        rows = list(cached_rows(hit, identity))
        rows[0]["request_key"] = key
        recorded = self.journal.append(spec.request_id, "ok", None, rows)
        if self.sink is not None:
            self.sink.add("ok", recorded)
        stats = self.stats
        stats.done += 1
        stats.ok += 1
        stats.cached += 1
        stats.saved += hit.cost or 0.0

    def remember_key(self, spec: RequestSpec, key: str) -> None:
        """The key a cache lookup computed for a request that is now sent (saves computing it again)."""
        self._keys[spec.request_id] = key


def spent(run_dir: Path) -> float:
    """What the recorded requests of a run cost so far, its judges' included (for a resumed
    cost budget): every entry, since each was paid for."""
    return sum(
        (row.get("cost_total") or 0.0)
        for journal in (JOURNAL, JUDGE_JOURNAL)
        for e in read_journal(run_dir / journal)
        for row in e["rows"]
    )
