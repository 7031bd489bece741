"""`evalrun run`: context → run directory → simulator/clients → lanes → pool → journal → Parquet → summary.

The stages of one run, each in its module: `context` (decided once: config, plan, prices,
scorers, keys, run dir), `recorder` (journal + per-result bookkeeping), `pool` / `attempts` /
`limiter` (scheduling, the retry loop, rate control), `stops` (one cancellation path). This
module wires them: the manifest, the event loop, signals, the progress display, exit codes.

Also resume: the journal says which requests already have a row; only the others are sent.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalrun import __version__
from evalrun.config.prices import CostBudget
from evalrun.run.context import RunContext, RunOptions, build_context, versions
from evalrun.run.progress import Progress, RunStats
from evalrun.run.recorder import Recorder, spent
from evalrun.run.records import Cell, RequestSpec
from evalrun.run.rundir import holding_run_dirs, lock_run_dir
from evalrun.run.sink import ResultsSink
from evalrun.run.stops import PoolOutcome
from evalrun.run.store import MANIFEST, now_iso, write_json, write_results

__all__ = ["EXIT_INTERRUPTED", "RunOptions", "RunOutcome", "run"]

GRACE_S = 10.0  # after the first Ctrl-C, how long requests on the wire may finish

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class RunOutcome:
    run_dir: Path
    status: str  # completed | stopped | interrupted
    exit_code: int
    messages: list[str]
    summary: Any = None


def run(config: Path | None, opts: RunOptions) -> RunOutcome:
    with holding_run_dirs():  # one process per run directory; released however the run ends
        lock_run_dir(opts.resume or opts.run_dir)  # before the journal is read
        return _run(config, opts)


def _run(config: Path | None, opts: RunOptions) -> RunOutcome:
    ctx = build_context(config, opts)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(ctx.run_dir)  # a new run directory: held from its creation
    _start_manifest(ctx)
    pricing = ctx.pricing
    stats = RunStats(total=ctx.to_send, currency=pricing.currency if pricing else None)
    budget = CostBudget(ctx.max_cost, pricing, spent(ctx.run_dir)) if ctx.max_cost and pricing else None
    messages: list[str] = []
    sink: ResultsSink | None = None
    if ctx.to_send == 0:
        outcome = PoolOutcome()
        if ctx.resumed:
            messages.append(f"nothing to resume: every request of {ctx.run_dir} already has a row")
    else:
        columns = ctx.plan.dataset.columns
        sink = ResultsSink(ctx.run_dir, columns, ctx.evaluator) if _writes_live(ctx) else None
        try:
            with Recorder(ctx.run_dir, ctx.run_id, ctx.exp.name, columns, stats, pricing, budget, sink) as recorder:
                outcome = _run_loop(ctx, recorder, stats, budget)
        except BaseException:
            if sink is not None:
                sink.abandon()
            raise
    status = "interrupted" if outcome.interrupted else "stopped" if outcome.stopped else "completed"
    reason = outcome.run_reason or outcome.budget_reason
    if reason and not outcome.interrupted:
        messages.append(f"stopped: {reason}")
    messages += [why for _, why in outcome.providers]
    messages += [why for _, _, why in outcome.dead_models]
    return _finish(ctx, stats, status, messages, sink)


def _writes_live(ctx: RunContext) -> bool:
    """Whether results.parquet is written as the run goes (see run/sink.py). A resumed run
    rebuilds it from the journal at the end instead: it must keep each request's latest entry
    (dedupe) and, after a forced resume of a changed grid, leave out the strays. So does a run
    with judges, whose columns need the judge answers that come after the main requests."""
    return not ctx.resumed and not getattr(ctx.evaluator, "judge_providers", None)


def _start_manifest(ctx: RunContext) -> None:
    plan, exp, manifest, pricing = ctx.plan, ctx.exp, ctx.manifest, ctx.pricing
    manifest.setdefault("started_at", now_iso())
    manifest.update(
        {
            "status": "running",
            "evalrun_version": __version__,
            "versions": versions(),
            "argv": sys.argv[1:],
            "config": exp.raw,
            "prices": {
                "source": pricing.source,
                "currency": pricing.currency,
                "as_of": pricing.table.as_of,
                "models": {m: p.model_dump(exclude_none=True) for m, p in pricing.table.models.items()},
            }
            if pricing
            else None,
            "providers": {n: p.model_dump(mode="json") for n, p in exp.providers.items()},
            "grid": {
                "cells": len(plan.cells),
                "rows": plan.dataset.rows,
                "repeats": plan.repeats,
                "requests": plan.total_requests,
                "dataset": str(plan.dataset.path),
            },
            "cells": [
                {
                    "cell_id": c.cell_id,
                    "provider": c.provider,
                    "model": c.model,
                    "prompt_id": c.prompt_id,
                    "params": c.params,
                }
                for c in plan.cells
            ],
        }
    )
    manifest.setdefault("resumes", [])
    if ctx.resumed:
        manifest["resumes"].append({"at": now_iso(), "already_done": len(ctx.done), "retry_errors": ctx.retry_errors})
    write_json(ctx.run_dir / MANIFEST, manifest)


def _run_loop(ctx: RunContext, recorder: Recorder, stats: RunStats, budget: CostBudget | None) -> PoolOutcome:
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
            return runner.run(_run_async(ctx, recorder, stats, budget))
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def lane_specs(ctx: RunContext) -> dict[tuple[str, str], Iterator[RequestSpec]]:
    """(provider, model) → the lazy stream of that lane's requests still to send."""
    cells: dict[tuple[str, str], list[Cell]] = {}
    for c in ctx.plan.cells:
        cells.setdefault((c.provider, c.model), []).append(c)
    done = ctx.done
    out: dict[tuple[str, str], Iterator[RequestSpec]] = {}
    for key, group in cells.items():
        specs = ctx.plan.specs(group)
        out[key] = (s for s in specs if s.request_id not in done) if done else specs
    return out


async def _run_async(ctx: RunContext, recorder: Recorder, stats: RunStats, budget: CostBudget | None) -> PoolOutcome:
    import aiohttp

    from evalrun.run.attempts import Admission, Attempts, Lane
    from evalrun.run.client import ProviderClient
    from evalrun.run.limiter import Limiters
    from evalrun.run.pool import Pool
    from evalrun.run.slots import Slots
    from evalrun.run.stops import Stops

    exp = ctx.exp
    used = sorted({c.provider for c in ctx.plan.cells})
    providers = {n: exp.providers[n] for n in used}
    loop = asyncio.get_running_loop()
    stops = Stops()
    task: asyncio.Future[PoolOutcome] | None = None
    pool: Pool | None = None
    interrupts = 0

    def on_signal() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            stops.stop_run("interrupted", interrupted=True)
            print(
                f"\nevalrun: stopping: waiting up to {GRACE_S:.0f} s for {pool.in_flight if pool else 0} requests on the wire "
                "(Ctrl-C again to exit now)",
                file=sys.stderr,
                flush=True,
            )
            if task is not None:
                loop.call_later(GRACE_S, task.cancel)
        elif task is not None:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):
            pass
    sims = []
    try:
        base_urls: dict[str, list[str]] = {}
        for name, p in providers.items():
            if p.kind == "simulator":
                from evalrun.sim import SimOptions, start_simulator

                sim = await start_simulator(SimOptions.from_mapping(p.simulator))
                sims.append(sim)
                base_urls[name] = [sim.base_url]
            else:
                base_urls[name] = p.base_urls
        connector = aiohttp.TCPConnector(limit=sum(p.max_concurrency for p in providers.values()), ttl_dns_cache=300)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            clients = {
                n: ProviderClient(
                    n,
                    session,
                    base_urls[n],
                    ctx.keys.get(n),
                    p.headers,
                    p.timeout_s,
                    p.connect_timeout_s,
                    p.fallback_after,
                )
                for n, p in providers.items()
            }
            limiters = Limiters(
                {n: (p.rpm, p.tpm) for n, p in providers.items()}, block_cap_s=exp.config.retry.retry_after_max_s
            )
            slots = {n: Slots(p.max_concurrency) for n, p in providers.items()}
            lanes = [
                Lane(
                    prov,
                    model,
                    specs,
                    clients[prov],
                    limiters.get(prov, model),
                    slots[prov],
                    providers[prov].max_concurrency,
                )
                for (prov, model), specs in lane_specs(ctx).items()
            ]
            attempts = Attempts(
                exp.config.retry,
                stops,
                Admission(ctx.max_requests, budget),
                {n: p.api_key_env for n, p in providers.items()},
            )
            pool = Pool(lanes, attempts, recorder.record)
            progress = Progress(stats, limiters, exp.name, enabled=ctx.progress)
            if stops.run_reason is None:  # a Ctrl-C during start-up: send nothing
                task = asyncio.ensure_future(pool.run())
            progress.start()
            try:
                while task is not None and not task.done():
                    await asyncio.wait([task], timeout=0.25 if progress.tty else 1.0)
                    progress.update(pool.in_flight)
                if task is not None:
                    await task
            except asyncio.CancelledError:
                pass
            finally:
                progress.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
        for sim in sims:
            await sim.close()
    return stops.outcome()


def _finish(ctx: RunContext, stats: RunStats, status: str, messages: list[str], sink: ResultsSink | None) -> RunOutcome:
    plan, run_dir, manifest, evaluator = ctx.plan, ctx.run_dir, ctx.manifest, ctx.evaluator
    if sink is not None:
        counts = sink.finish()
    else:
        # after a forced resume of a changed grid, rows of requests no longer in it stay in the
        # journal but not in the report
        keep = {s.request_id for s in plan.specs()} if manifest.get("grid_changed") else None
        counts = write_results(
            run_dir, plan.dataset.columns, dedupe=bool(manifest.get("resumes")), keep=keep, hook=evaluator
        )
    if counts["strays"]:
        messages.append(
            f"{counts['strays']:,} recorded requests are not in the changed grid; "
            "kept in journal.jsonl, left out of results.parquet"
        )
    summary = evaluator.write_summary(run_dir) if evaluator is not None else None
    recorded, errors, rows = counts["requests"], counts["errors"], counts["rows"]
    missing = plan.total_requests - recorded
    if status == "completed" and missing:
        status = "stopped"
    manifest.update(
        {
            "status": status,
            "finished_at": now_iso(),
            "messages": messages,
            "counts": {
                "requests": plan.total_requests,
                "recorded": recorded,
                "missing": missing,
                "ok": recorded - errors,
                "errors": errors,
                "rows": rows,
                "this_session": {
                    "done": stats.done,
                    "retries": stats.retries,
                    "errors_by_type": dict(stats.errors_by_type),
                    "retries_by_type": dict(stats.retries_by_type),
                },
            },
        }
    )
    write_json(run_dir / MANIFEST, manifest)
    if stats.errors_by_type:
        messages.append("errors by type: " + ", ".join(f"{k} {v}" for k, v in stats.errors_by_type.most_common()))
    if stats.retries_by_type:
        messages.append("retries by type: " + ", ".join(f"{k} {v}" for k, v in stats.retries_by_type.most_common()))
    if missing:
        messages.append(
            f"{missing:,} of {plan.total_requests:,} requests have no row yet; "
            f"continue with: evalrun run --resume {run_dir}"
        )
    code = EXIT_OK if status == "completed" else EXIT_INTERRUPTED if status == "interrupted" else EXIT_INCOMPLETE
    if code == EXIT_OK and recorded and errors == recorded:
        messages.append("every request ended in error: see error_type / error_message in results.parquet")
        code = EXIT_INCOMPLETE
    return RunOutcome(run_dir, status, code, messages, summary)
