"""`evalrun run`: plan → run directory → simulator/clients → pool → journal → Parquet → summary.

Also resume: the journal says which requests already have a row; only the others are sent.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import platform
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from evalrun import __version__
from evalrun.config.load import Experiment, load_experiment
from evalrun.config.prices import CostBudget, Pricing, load_pricing
from evalrun.errors import ConfigError
from evalrun.run.grid import Plan, build_plan
from evalrun.run.journal import JOURNAL, Journal, journal_state, repair_journal
from evalrun.run.progress import Progress, RunStats
from evalrun.run.records import RequestSpec, Result
from evalrun.run.rundir import check_run_dir, grid_changed, holding_run_dirs, lock_run_dir, read_manifest
from evalrun.run.secrets import checked_key, use_keys
from evalrun.run.store import MANIFEST, RowHook, now_iso, result_rows, write_json, write_results

logger = logging.getLogger(__name__)

GRACE_S = 10.0  # after the first Ctrl-C, how long in-flight requests may finish
# A request whose last row is one of these errors was stopped by the provider, not judged by
# it: a plain --resume sends it again (--retry-errors re-sends every error).
RESEND_ON_RESUME = {"insufficient_quota", "authentication", "permission"}

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Evaluator(RowHook, Protocol):
    """What the analysis stage does while results.parquet is written (see analysis.evaluation)."""

    def write_summary(self, run_dir: Path) -> Any: ...


@dataclass
class RunOptions:
    overrides: list[str] = field(default_factory=list)
    limit: int | None = None
    run_dir: Path | None = None
    resume: Path | None = None
    retry_errors: bool = False
    force: bool = False
    max_requests: int | None = None
    max_cost: float | None = None
    progress: bool = True
    # builds the scorers and summary for a plan; raises ConfigError on a bad scorer, before sending
    evaluator: Callable[[Experiment, tuple[str, ...]], Evaluator] | None = None


@dataclass
class RunOutcome:
    run_dir: Path
    status: str  # completed | stopped | interrupted
    exit_code: int
    messages: list[str]
    summary: Any = None


def grid_fingerprint(plan: Plan) -> str:
    """Changes exactly when the set of requests changes: cells, dataset content, limit, repeats."""
    h = hashlib.blake2b(digest_size=12)
    for cid in sorted(c.cell_id for c in plan.cells):
        h.update(cid.encode())
    with plan.dataset.path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    h.update(f"|{plan.dataset.rows}|{plan.repeats}|{plan.dataset.id_column}".encode())
    return h.hexdigest()


def api_keys(exp: Experiment) -> dict[str, str | None]:
    """provider → key from its environment variable. A missing key is a usage error (exit 2)."""
    keys: dict[str, str | None] = {}
    used = {exp.provider_of(m) for m in exp.config.models}
    for name in sorted(used):
        env = exp.providers[name].api_key_env
        if env is None:
            keys[name] = None
            continue
        line = exp.lines.get(("providers", name, "api_key_env")) or exp.lines.get(("providers", name))
        where = f"{exp.path}:{line}" if line else str(exp.path)
        value = checked_key(env, os.environ.get(env), f"{where}: providers.{name}.api_key_env")
        if not value:
            raise ConfigError(
                f"{where}: providers.{name}.api_key_env: the environment variable {env} is not set; "
                f"export {env}=<your key> (or try the config on the simulator: --set provider=simulator)"
            )
        keys[name] = value
    use_keys([k for k in keys.values() if k])  # masked in all this run writes
    return keys


def _new_run_dir(exp: Experiment) -> tuple[str, Path]:
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)
    return run_id, Path(exp.config.reports_dir) / exp.name / run_id


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"evalrun": __version__, "python": platform.python_version()}
    for dist in ("aiohttp", "pyarrow", "pandas", "pydantic", "tenacity", "orjson", "uvloop"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def prepare_run(config: Path | None, opts: RunOptions) -> tuple[Plan, Path, str, dict[str, Any], set[str]]:
    """Everything that can fail on bad input, before a run directory or a request exists."""
    manifest: dict[str, Any] = {}
    done: set[str] = set()
    if opts.resume is not None:
        manifest = read_manifest(opts.resume, config)  # a damaged one: rebuilt, or refused in one line
        config = config or Path(manifest["config_path"])
        if not opts.overrides:
            opts.overrides = list(manifest.get("overrides") or [])
        if opts.limit is None:
            opts.limit = manifest.get("limit")
    if config is None:
        raise ConfigError("evalrun run needs a CONFIG file (or --resume RUN_DIR)")
    exp = load_experiment(config, opts.overrides)
    plan = build_plan(exp, opts.limit)
    if opts.evaluator is not None:
        opts.evaluator(plan.exp, plan.dataset.columns)  # fail before sending
    _budget_pricing(plan, opts)  # likewise
    fingerprint = grid_fingerprint(plan)
    if opts.resume is not None:
        changed = grid_changed(manifest, fingerprint, (s.request_id for s in plan.specs()), opts.resume / JOURNAL)
        manifest["grid_changed"] = changed
        if changed and not opts.force:
            raise ConfigError(
                f"--resume {opts.resume}: the experiment's grid changed since that run (config, dataset, "
                "limit or repeats); resuming would mix two experiments. Start a new run, or pass --force"
            )
        run_dir = opts.resume
        run_id = manifest["run_id"]
        repair_journal(run_dir / JOURNAL)
        for rid, (status, etype) in journal_state(run_dir / JOURNAL).items():
            if status == "ok" or (not opts.retry_errors and etype not in RESEND_ON_RESUME):
                done.add(rid)
    elif opts.run_dir is not None:
        run_dir = opts.run_dir
        if (run_dir / JOURNAL).exists():
            raise ConfigError(f"--run-dir {run_dir}: it already holds a run; use --resume {run_dir} to continue it")
        run_id = run_dir.name
    else:
        run_id, run_dir = _new_run_dir(exp)
    check_run_dir(run_dir, "--resume" if opts.resume else "--run-dir" if opts.run_dir else exp.where("reports_dir"))
    manifest.update(
        {
            "run_id": run_id,
            "experiment": exp.name,
            "config_path": str(exp.path.resolve()),
            "overrides": opts.overrides,
            "limit": opts.limit,
            "grid_fingerprint": fingerprint,
        }
    )
    return plan, run_dir, run_id, manifest, done


def _budget_pricing(plan: Plan, opts: RunOptions) -> Pricing | None:
    """The run's prices; with a cost budget every model must have one (else it is unbounded)."""
    exp = plan.exp
    pricing = load_pricing(exp.config.prices, exp.path)
    max_cost = opts.max_cost or exp.config.budget.max_cost
    if max_cost is not None:
        missing = sorted({c.model for c in plan.cells if pricing is None or not pricing.known(c.model)})
        if missing:
            raise ConfigError(
                f"{exp.where('budget')}: a cost budget needs a price for every model; none for {', '.join(missing)} "
                f"(add them under prices: in {exp.path}, or to {pricing.source if pricing else 'prices.yaml beside it'})"
            )
    return pricing


def _spent(journal: Path) -> float:
    """What the recorded requests of a run cost so far (for a resumed cost budget)."""
    from evalrun.run.journal import read_journal

    return sum((row.get("cost_total") or 0.0) for e in read_journal(journal) for row in e["rows"])


def run(config: Path | None, opts: RunOptions) -> RunOutcome:
    with holding_run_dirs():  # one process per run directory; released however the run ends
        lock_run_dir(opts.resume or opts.run_dir)  # before the journal is read
        return _run(config, opts)


def _run(config: Path | None, opts: RunOptions) -> RunOutcome:
    plan, run_dir, run_id, manifest, done = prepare_run(config, opts)
    keys = api_keys(plan.exp)
    pricing = _budget_pricing(plan, opts)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(run_dir)  # a new run directory: held from its creation
    exp = plan.exp
    manifest.setdefault("started_at", now_iso())
    manifest.update(
        {
            "status": "running",
            "evalrun_version": __version__,
            "versions": _versions(),
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
    if opts.resume is not None:
        manifest["resumes"].append({"at": now_iso(), "already_done": len(done), "retry_errors": opts.retry_errors})
    write_json(run_dir / MANIFEST, manifest)

    specs: Iterator[RequestSpec] = plan.specs()
    if done:
        specs = (s for s in specs if s.request_id not in done)
    stats = RunStats(total=plan.total_requests - len(done), currency=pricing.currency if pricing else None)
    max_cost = opts.max_cost or exp.config.budget.max_cost
    budget = CostBudget(max_cost, pricing, _spent(run_dir / JOURNAL)) if max_cost and pricing else None
    journal = Journal(run_dir / JOURNAL)
    try:
        status, messages = _run_loop(plan, specs, stats, journal, run_id, keys, opts, pricing, budget)
    finally:
        journal.close()
    return _finish(plan, run_dir, manifest, stats, status, messages, opts)


def _run_loop(
    plan: Plan,
    specs: Iterator[RequestSpec],
    stats: RunStats,
    journal: Journal,
    run_id: str,
    keys: dict[str, str | None],
    opts: RunOptions,
    pricing: Pricing | None,
    budget: CostBudget | None,
) -> tuple[str, list[str]]:
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
            return runner.run(_run_async(plan, specs, stats, journal, run_id, keys, opts, pricing, budget))
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _run_async(
    plan: Plan,
    specs: Iterator[RequestSpec],
    stats: RunStats,
    journal: Journal,
    run_id: str,
    keys: dict[str, str | None],
    opts: RunOptions,
    pricing: Pricing | None,
    budget: CostBudget | None,
) -> tuple[str, list[str]]:
    import aiohttp

    from evalrun.run.client import ProviderClient
    from evalrun.run.limiter import Limiters
    from evalrun.run.pool import Pool

    exp = plan.exp
    used = sorted({c.provider for c in plan.cells})
    sims = []
    base_urls: dict[str, list[str]] = {}
    for name in used:
        p = exp.providers[name]
        if p.kind == "simulator":
            from evalrun.sim import SimOptions, start_simulator

            sim = await start_simulator(SimOptions.from_mapping(p.simulator))
            sims.append(sim)
            base_urls[name] = [sim.base_url]
        else:
            base_urls[name] = p.base_urls
    data_columns = plan.dataset.columns
    exp_name = exp.name
    concurrency = {n: exp.providers[n].max_concurrency for n in used}
    progress = Progress(stats, None, exp_name, enabled=opts.progress)  # type: ignore[arg-type]

    def record(result: Result) -> None:
        rows = result_rows(result, run_id, exp_name, data_columns)
        cost = None
        if pricing is not None:  # usage sits on the first row: so does the request's cost
            rows[0].update(pricing.cost(result.spec.cell.model, rows[0]))
            cost = rows[0]["cost_total"]
        journal.append(result.spec.request_id, "ok" if result.ok else "error", result.error_type, rows)
        if budget is not None:
            budget.settle(result.spec.request_id, cost)
        stats.cost += cost or 0.0
        stats.done += 1
        if result.ok:
            stats.ok += 1
            stats.tokens += result.completion.usage.total_tokens or 0  # type: ignore[union-attr]
        else:
            stats.errors += 1
            stats.errors_by_type[result.error_type or "unknown"] += 1
        if result.retry_types:
            stats.retries += len(result.retry_types)
            stats.retries_by_type.update(result.retry_types)

    connector = aiohttp.TCPConnector(limit=sum(concurrency.values()), ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        clients = {
            n: ProviderClient(
                n,
                session,
                base_urls[n],
                keys.get(n),
                exp.providers[n].headers,
                exp.providers[n].timeout_s,
                exp.providers[n].connect_timeout_s,
                exp.providers[n].fallback_after,
            )
            for n in used
        }
        limiters = Limiters({n: (exp.providers[n].rpm, exp.providers[n].tpm) for n in used})
        progress.limiter = limiters.state
        max_requests = opts.max_requests or exp.config.budget.max_requests
        pool = Pool(
            clients,
            concurrency,
            limiters,
            exp.config.retry,
            record,
            {n: exp.providers[n].api_key_env for n in used},
            max_requests,
            budget,
        )
        task = asyncio.ensure_future(pool.run(specs))
        interrupts = 0
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                pool.request_stop("interrupted")
                print(
                    f"\nevalrun: stopping: waiting up to {GRACE_S:.0f} s for {pool.in_flight} in-flight "
                    "requests (Ctrl-C again to exit now)",
                    file=sys.stderr,
                    flush=True,
                )
                loop.call_later(GRACE_S, task.cancel)
            else:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal)
            except (NotImplementedError, RuntimeError):
                pass
        progress.start()
        try:
            while not task.done():
                await asyncio.wait([task], timeout=0.25 if progress.tty else 1.0)
                progress.update(pool.in_flight)
            await task
        except asyncio.CancelledError:
            pass
        finally:
            progress.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError):
                    pass
            for sim in sims:
                await sim.close()
    messages: list[str] = list(pool.stop.providers.values())
    if pool.stop.dead_models:
        messages += list(pool.stop.dead_models.values())
    if interrupts:
        return "interrupted", messages
    reason = pool.stop.run_reason or pool.stop.budget_reason
    if reason or pool.stop.providers:
        if reason:
            messages.insert(0, f"stopped: {reason}")
        return "stopped", messages
    return "completed", messages


def _finish(
    plan: Plan,
    run_dir: Path,
    manifest: dict[str, Any],
    stats: RunStats,
    status: str,
    messages: list[str],
    opts: RunOptions,
) -> RunOutcome:
    # after a forced resume of a changed grid, rows of requests no longer in it stay in the
    # journal but not in the report
    keep = {s.request_id for s in plan.specs()} if manifest.get("grid_changed") else None
    evaluator = opts.evaluator(plan.exp, plan.dataset.columns) if opts.evaluator is not None else None
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
