"""`evalrun run`: context → run directory → simulator/clients → lanes → pool → journal → Parquet → summary.

Each stage in its module: `context` (decided once: config, plan, prices, scorers, keys, run
dir), `recorder` (journal + bookkeeping), `pool` / `attempts` / `limiter` (scheduling, retries,
rate control), `stops` (one cancellation path); here: manifest, loop, signals, progress, exits.
Resume: the journal says which requests already have a row; only the others are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalrun.config.models import ProviderConfig
from evalrun.run.context import RunContext, RunOptions, build_context
from evalrun.run.decide import settled
from evalrun.run.manifest import start_manifest
from evalrun.run.prior_limits import learned_at_start
from evalrun.run.progress import Progress, RunStats
from evalrun.run.recorder import Recorder, spent
from evalrun.run.send.budget import CostBudget
from evalrun.run.send.stops import PoolOutcome
from evalrun.run.store.cache import Caches, open_caches
from evalrun.run.store.journal import JUDGE_JOURNAL
from evalrun.run.store.manifest import Counts, RunStatus
from evalrun.run.store.manifest_io import finish_run
from evalrun.run.store.rundir import holding_run_dirs, lock_run_dir
from evalrun.run.store.sink import ResultsSink
from evalrun.run.store.store import write_results

if TYPE_CHECKING:
    from evalrun.run.send.pool import Pool
    from evalrun.run.send.stops import Stops
    from evalrun.run.session import Session
    from evalrun.sim.app import SimulatorHandle

__all__ = ["EXIT_INTERRUPTED", "RunOptions", "RunOutcome", "run"]

GRACE_S = 10.0  # after the first Ctrl-C, how long requests on the wire may finish
EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class RunOutcome:
    run_dir: Path
    status: RunStatus  # completed | stopped | interrupted | unpublished
    exit_code: int
    messages: list[str]
    summary: Any = None
    location: str | None = None  # where the run was published (reports_dir on object storage)


def run(config: Path | None, opts: RunOptions) -> RunOutcome:
    with holding_run_dirs():  # one process per run directory; released however the run ends
        lock_run_dir(opts.resume or opts.run_dir)  # before the journal is read
        return _run(config, opts)


def _run(config: Path | None, opts: RunOptions) -> RunOutcome:
    ctx = build_context(config, opts)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(ctx.run_dir)  # a new run directory: held from its creation
    start_manifest(ctx)
    pricing = ctx.pricing
    stats = RunStats(total=ctx.to_send, currency=pricing.currency if pricing else None)
    budget = CostBudget(ctx.max_cost, pricing, spent(ctx.run_dir)) if ctx.max_cost and pricing else None
    messages: list[str] = []
    sink: ResultsSink | None = None
    judging = _judges_pending(ctx)
    if ctx.to_send == 0 and not judging:
        outcome = PoolOutcome()
        if ctx.resumed and not ctx.judges_only:  # score: the rows missing are said by score
            messages.append(f"nothing to resume: every request of {ctx.run_dir} already has a row")
    else:
        outcome, sink = _record(ctx, stats, budget)
        if stats.cached:
            messages.append(
                f"{stats.cached:,} answers came from the cache, unsent"
                + (f" (first asked for {stats.saved:,.4f} {pricing.currency})" if pricing else "")
            )
    status = (
        RunStatus.INTERRUPTED if outcome.interrupted else RunStatus.STOPPED if outcome.stopped else RunStatus.COMPLETED
    )
    reason = outcome.run_reason or outcome.budget_reason
    if reason and not outcome.interrupted:
        messages.append(f"stopped: {reason}")
    messages += [why for _, why in outcome.providers]
    messages += [why for _, _, why in outcome.dead_models]
    messages += [f"pace held back by the server's limit: {why}" for why in ctx.manifest.pace_held_by or []]
    ctx.manifest.drop("pace_held_by")  # this session's only
    result = _finish(ctx, stats, status, messages, sink)
    if ctx.manifest.location:
        _publish(ctx, result)
    return result


def _record(ctx: RunContext, stats: RunStats, budget: CostBudget | None) -> tuple[PoolOutcome, ResultsSink | None]:
    """Send the run's requests (and its judges') with their journals' recorders and the caches
    open; the live results file, if any, is abandoned on a failure and returned otherwise."""
    columns, name, pricing = ctx.plan.dataset.columns, ctx.exp.name, ctx.pricing
    caches = open_caches(_providers(ctx), ctx.cache, ctx.reuse, ctx.run_dir)
    keyers, store = caches.keyers, caches.store
    judging_on = ctx.evaluator is not None and bool(ctx.evaluator.judge_lanes())
    sink = ResultsSink(ctx.run_dir, columns, ctx.evaluator) if _writes_live(ctx) else None
    try:
        main = Recorder(
            ctx.run_dir,
            ctx.run_id,
            name,
            columns,
            stats,
            pricing,
            budget,
            keyers=keyers,
            cache=store,
            sink=sink,
            decider=ctx.decider,
        )
        with main as recorder, contextlib.ExitStack() as stack:
            judges = (
                stack.enter_context(
                    Recorder(ctx.run_dir, ctx.run_id, name, (), stats, pricing, budget, JUDGE_JOURNAL, keyers, store)
                )
                if judging_on
                else None
            )
            return _run_loop(ctx, Sinks(recorder, judges, caches, stats, budget)), sink
    except BaseException:
        if sink is not None:
            sink.abandon()
        raise
    finally:
        caches.close()


def _publish(ctx: RunContext, result: RunOutcome) -> None:
    """Publish the run to its object-storage location; if that fails, the answers stay in the
    local staging directory, which is printed as the run's place."""
    from evalrun.run.store.storage import publish_or_keep

    location = str(ctx.manifest.location)
    if (unpublished := publish_or_keep(ctx.run_dir, location)) is None:
        result.location = location
    else:
        result.status, result.exit_code = RunStatus.UNPUBLISHED, max(result.exit_code, EXIT_INCOMPLETE)
        result.messages.append(unpublished)


def _writes_live(ctx: RunContext) -> bool:
    """Whether results.parquet is written as the run goes (see run/store/sink.py). A resumed run
    rebuilds it from the journal at the end instead: it must keep each request's latest entry
    (dedupe) and, after a forced resume of a changed grid, leave out the strays. So does a run
    with judges, whose columns need the judge answers that come after the main requests."""
    return not ctx.resumed and not (ctx.evaluator is not None and ctx.evaluator.judge_lanes())


def _judges_pending(ctx: RunContext) -> bool:
    """Whether judge requests of this run are still unanswered (a resume after a kill while judging)."""
    ev = ctx.evaluator
    return ev is not None and bool(ev.judge_lanes()) and next(iter(ev.judge_requests(ctx.run_dir)), None) is not None


@dataclass(frozen=True, slots=True)
class Sinks:
    """Where a run's results go: the journals' recorders, the caches, the counters, the budget."""

    recorder: Recorder
    judges: Recorder | None  # the judge journal's, when the experiment has model judges
    caches: Caches
    stats: RunStats
    budget: CostBudget | None


def _providers(ctx: RunContext) -> dict[str, ProviderConfig]:
    """The providers this run talks to (its cells' and its judges'): those it holds keys for."""
    return {n: ctx.exp.providers[n] for n in sorted(ctx.keys)}


def _run_loop(ctx: RunContext, sinks: Sinks) -> PoolOutcome:
    try:
        import uvloop  # ~2× less event-loop overhead per request

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    # Everything imported and configured so far lives for the whole run: freezing it keeps the
    # cyclic GC from rescanning it on every collection of the request path's garbage.
    gc.freeze()
    # The request path makes many small, acyclic objects (parsed answers, rows): collecting
    # generation 0 every 700 allocations is pure overhead there (measured: −4 % CPU/request).
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 1000)
    try:
        with runner:
            return runner.run(_run_async(ctx, sinks))
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _run_async(ctx: RunContext, sinks: Sinks) -> PoolOutcome:
    from evalrun.run.send.stops import Stops
    from evalrun.run.session import start_endpoints

    providers = _providers(ctx)
    stops = Stops()
    interrupts = Interrupts(asyncio.get_running_loop(), stops)
    interrupts.install()
    sims: list[SimulatorHandle] = []
    try:
        base_urls = await start_endpoints(providers, sims)
        await _send(ctx, sinks, providers, base_urls, interrupts)
    finally:
        interrupts.remove()
        for sim in sims:
            await sim.close()
    return stops.outcome()


async def _send(
    ctx: RunContext,
    sinks: Sinks,
    providers: dict[str, ProviderConfig],
    base_urls: dict[str, list[str]],
    interrupts: Interrupts,
) -> None:
    """The cells' requests, then the judges', over one HTTP session."""
    import aiohttp

    from evalrun.run.send.pool import Pool
    from evalrun.run.session import build_session, connector_limit, lane_specs

    connector = aiohttp.TCPConnector(limit=connector_limit(providers), ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as http:
        session = build_session(ctx, providers, http, base_urls, interrupts.stops, sinks.budget)
        session.limiters.start_from(*learned_at_start(ctx), share=ctx.rate_share)  # what earlier runs learnt
        streams = ((key, sinks.caches.serve(key[0], specs, sinks.recorder)) for key, specs in lane_specs(ctx).items())
        pool = interrupts.pool = Pool(session.lanes(streams), session.attempts, sinks.recorder.record)
        progress = Progress(sinks.stats, session.limiters, ctx.exp.name, enabled=ctx.progress)
        progress.start()
        try:
            if interrupts.stops.run_reason is None:  # a Ctrl-C during start-up: send nothing
                interrupts.task = asyncio.ensure_future(pool.run())
            await _drive(interrupts.task, pool, progress)
            if sinks.judges is not None and ctx.evaluator is not None and not interrupts.stops.outcome().stopped:
                await _judge(ctx, sinks.judges, sinks, session, interrupts, progress)
        except asyncio.CancelledError:
            pass
        finally:
            progress.stop()
            if (learned := session.limiters.record(ctx.manifest.learned_limits)) is not None:
                ctx.manifest.learned_limits, ctx.manifest.pace_held_by = learned
            await session.limiters.aclose()


async def _judge(
    ctx: RunContext, judges: Recorder, sinks: Sinks, session: Session, interrupts: Interrupts, progress: Progress
) -> None:
    """The judges' turn: the same clients, limiters, slots, retries and stops."""
    from evalrun.run.send.pool import Pool

    ev = ctx.evaluator
    assert ev is not None
    sinks.stats.total += sum(1 for _ in ev.judge_requests(ctx.run_dir))
    streams = (
        ((p, m), sinks.caches.serve(p, ev.judge_requests(ctx.run_dir, (p, m)), judges))
        for p, m in sorted(ev.judge_lanes())
    )
    pool = interrupts.pool = Pool(session.lanes(streams), session.attempts, judges.record)
    interrupts.task = asyncio.ensure_future(pool.run())
    await _drive(interrupts.task, pool, progress)


class Interrupts:
    """Ctrl-C or SIGTERM while sending: the first stops the run and leaves the requests on the
    wire GRACE_S to finish; the second cancels the pool's task at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stops: Stops) -> None:
        self.loop, self.stops = loop, stops
        self.task: asyncio.Future[PoolOutcome] | None = None  # the pool run now going
        self.pool: Pool | None = None
        self.count = 0

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self.loop.add_signal_handler(sig, self.on_signal)

    def remove(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self.loop.remove_signal_handler(sig)

    def on_signal(self) -> None:
        self.count += 1
        if self.count > 1:
            if self.task is not None:
                self.task.cancel()
            return
        self.stops.stop_run("interrupted", interrupted=True)
        print(
            f"\nevalrun: stopping: waiting up to {GRACE_S:.0f} s for {self.pool.in_flight if self.pool else 0} requests on the wire "
            "(Ctrl-C again to exit now)",
            file=sys.stderr,
            flush=True,
        )
        if self.task is not None:
            self.loop.call_later(GRACE_S, self.task.cancel)


async def _drive(task: asyncio.Future[PoolOutcome] | None, pool: Pool, progress: Progress) -> None:
    """Wait for a pool run, updating the progress display meanwhile."""
    while task is not None and not task.done():
        await asyncio.wait([task], timeout=0.25 if progress.tty else 1.0)
        progress.update(pool.in_flight)
    if task is not None:
        await task


def _finish(
    ctx: RunContext, stats: RunStats, status: RunStatus, messages: list[str], sink: ResultsSink | None
) -> RunOutcome:
    plan, run_dir, manifest, evaluator = ctx.plan, ctx.run_dir, ctx.manifest, ctx.evaluator
    if sink is not None:
        counts = sink.finish()
    else:
        # after a forced resume of a changed grid, rows of requests no longer in it stay in the
        # journal but not in the report
        keep = {s.request_id for s in plan.specs()} if manifest.grid_changed else None
        if keep is not None and ctx.shard is not None:
            keep = {rid for rid in keep if ctx.shard.holds(rid)}
        if evaluator is not None:
            evaluator.prepare(run_dir)  # what the judges answered
        counts = write_results(run_dir, plan.dataset.columns, dedupe=bool(manifest.resumes), keep=keep, hook=evaluator)
    if counts["strays"]:
        messages.append(
            f"{counts['strays']:,} recorded requests are not in the changed grid; "
            "kept in journal.jsonl, left out of results.parquet"
        )
    summary = evaluator.write_summary(run_dir) if evaluator is not None else None
    recorded, errors, rows = counts["requests"], counts["errors"], counts["rows"]
    missing = ctx.total - recorded - settled(ctx.decider, ctx.plan, manifest, messages)
    if status is RunStatus.COMPLETED and missing:
        status = RunStatus.STOPPED
    session = {
        "done": stats.done,
        "retries": stats.retries,
        "errors_by_type": dict(stats.errors_by_type),
        "retries_by_type": dict(stats.retries_by_type),
    }
    counts_record = Counts(
        requests=ctx.total,
        recorded=recorded,
        missing=missing,
        ok=recorded - errors,
        errors=errors,
        rows=rows,
        this_session=session,
    )
    finish_run(run_dir, manifest, status, counts_record, messages)
    if stats.errors_by_type:
        messages.append("errors by type: " + ", ".join(f"{k} {v}" for k, v in stats.errors_by_type.most_common()))
    if stats.retries_by_type:
        messages.append("retries by type: " + ", ".join(f"{k} {v}" for k, v in stats.retries_by_type.most_common()))
    if missing:
        messages.append(
            f"{missing:,} of {ctx.total:,} requests have no row yet; continue with: evalrun run --resume {run_dir}"
        )
    code = {RunStatus.COMPLETED: EXIT_OK, RunStatus.INTERRUPTED: EXIT_INTERRUPTED}.get(status, EXIT_INCOMPLETE)
    if code == EXIT_OK and recorded and errors == recorded:
        messages.append("every request ended in error: see error_type / error_message in results.parquet")
        code = EXIT_INCOMPLETE
    return RunOutcome(run_dir, status, code, messages, summary)
