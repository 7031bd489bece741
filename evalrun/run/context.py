"""The run context: everything a run needs, built once, before a run directory or a request exists.

`build_context` does all that can fail on bad input — the config, the plan (grid + dataset),
the scorers (through the analysis stage's factory), the prices and budget, the API keys, the
resume checks — so a mistake costs nothing. The result is a frozen `RunContext` that the rest
of the run reads and never rebuilds (prices are loaded once, scorers compiled once).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from evalrun.config.load import Experiment, load_experiment
from evalrun.config.prices import Pricing, load_pricing
from evalrun.errors import ConfigError
from evalrun.run.decide import Decider
from evalrun.run.grid.grid import Plan, build_plan
from evalrun.run.records.records import RequestSpec
from evalrun.run.records.secrets import provider_key, use_keys
from evalrun.run.scale.shards import Shard, shard_from_manifest
from evalrun.run.store.cache import CACHE_FILE, cache_problem
from evalrun.run.store.journal import JOURNAL, journal_state, repair_journal
from evalrun.run.store.manifest import ErrorType, Manifest, ShardInfo
from evalrun.run.store.rundir import check_run_dir, grid_changed, latest_completed, read_manifest
from evalrun.run.store.storage import check_writable, is_url, join, response_cache_dir, staging_dir
from evalrun.run.store.store import MANIFEST, RowHook

# A request whose last row is one of these errors was stopped by the provider, not judged by
# it: a plain --resume sends it again (--retry-errors re-sends every error).
RESEND_ON_RESUME = frozenset({ErrorType.INSUFFICIENT_QUOTA, ErrorType.AUTHENTICATION, ErrorType.PERMISSION})


class Evaluator(RowHook, Protocol):
    """What the analysis stage does while results.parquet is written (see analysis.evaluation),
    and the judge requests it wants sent once the experiment's own requests are answered."""

    @property
    def judge_providers(self) -> set[str]: ...

    def judge_requests(self, run_dir: Path, lane: tuple[str, str] | None = None) -> Iterator[RequestSpec]:
        """The judge requests still unanswered (of one provider × model lane, or all), lazily."""
        ...

    def judge_lanes(self) -> set[tuple[str, str]]: ...

    def prepare(self, run_dir: Path) -> None:
        """Read what the judges answered, before results.parquet is written."""
        ...

    def write_summary(self, run_dir: Path) -> Any: ...


@dataclass
class RunOptions:
    """What `evalrun run` was asked on the command line."""

    overrides: list[str] = field(default_factory=list)
    limit: int | None = None
    run_dir: Path | None = None
    resume: Path | None = None
    retry_errors: bool = False
    force: bool = False
    max_requests: int | None = None
    max_cost: float | None = None
    progress: bool = True
    reuse: str | None = None  # an earlier run directory, or "latest": its unchanged requests are not sent
    no_cache: bool = False  # --no-cache: the experiment's cache is neither asked nor written
    shard: Shard | None = None  # --shard I/N: only this shard's requests
    rate_share: int = 1  # --workers K without a shared limiter: this process paces at rpm/K, tpm/K
    judges_only: bool = False  # `evalrun score`, a merge's judge pass: no experiment request is sent
    # builds the scorers and summary for a plan; raises ConfigError on a bad scorer, before sending
    evaluator: Callable[[Experiment, tuple[str, ...]], Evaluator] | None = None
    # --stop-when-decided: builds the decider for a plan (a bad baseline raises ConfigError)
    decider: Callable[[Plan], Decider] | None = None


@dataclass(frozen=True, slots=True)
class RunContext:
    """One run, decided: what to send, where it goes, what it may cost, where it is written."""

    plan: Plan
    run_dir: Path
    run_id: str
    manifest: Manifest  # what manifest.json says so far (the runner adds to it)
    done: frozenset[str]  # request ids that already have a row (resume)
    keys: Mapping[str, str | None]  # provider → API key (None: none needed), for every provider the run uses
    pricing: Pricing | None
    max_requests: int | None
    max_cost: float | None
    evaluator: Evaluator | None  # built once; fed while results.parquet is written
    resumed: bool
    retry_errors: bool
    progress: bool
    cache: Path | None = None  # the response cache file, when the experiment keeps one
    reuse: Path | None = None  # an earlier run whose answers this one takes
    shard: Shard | None = None
    shard_requests: int | None = None  # how many requests the shard holds (None: no shard)
    decider: Decider | None = None  # --stop-when-decided: cells settled early are not sent further
    rate_share: int = 1
    judges_only: bool = False  # only judge requests are sent (the experiment's missing ones stay missing)

    @property
    def exp(self) -> Experiment:
        return self.plan.exp

    @property
    def total(self) -> int:
        """The requests this process answers for: the grid's, or its shard's."""
        return self.plan.total_requests if self.shard_requests is None else self.shard_requests

    @property
    def to_send(self) -> int:
        return 0 if self.judges_only else self.total - len(self.done)


def build_context(config: Path | None, opts: RunOptions) -> RunContext:
    """Everything that can fail on bad input, before a run directory or a request exists."""
    manifest, config, overrides, limit = _resumed_inputs(config, opts)
    shard = _resumed_shard(opts, manifest)
    if config is None:
        raise ConfigError("evalrun run needs a CONFIG file (or --resume RUN_DIR)")
    exp = load_experiment(config, overrides)
    plan = build_plan(exp, limit)
    evaluator = opts.evaluator(exp, plan.dataset.columns) if opts.evaluator is not None else None
    max_cost = opts.max_cost or exp.config.budget.max_cost
    pricing = _pricing(plan, max_cost, {m for _, m in evaluator.judge_lanes()} if evaluator else set())
    # the providers this run talks to: its cells' and its judges'
    judges = evaluator.judge_providers if evaluator else set()
    providers = frozenset(judges if opts.judges_only else {c.provider for c in plan.cells} | judges)
    keys = api_keys(exp, providers)
    _check_limiters(exp, providers)
    fingerprint = grid_fingerprint(plan)
    run_dir, run_id, done = _run_place(opts, plan, manifest, fingerprint, shard)
    manifest.run_id, manifest.experiment, manifest.config_path = run_id, exp.name, str(exp.path.resolve())
    manifest.overrides, manifest.limit, manifest.grid_fingerprint = overrides, limit, fingerprint
    if shard is not None:
        manifest.shard = ShardInfo(index=shard.index, count=shard.count)
    return RunContext(
        plan=plan,
        run_dir=run_dir,
        run_id=run_id,
        manifest=manifest,
        done=done,
        keys=keys,
        pricing=pricing,
        max_requests=exp.config.budget.max_requests if opts.max_requests is None else opts.max_requests,
        max_cost=max_cost,
        evaluator=evaluator,
        resumed=opts.resume is not None,
        retry_errors=opts.retry_errors,
        progress=opts.progress,
        cache=cache_file(exp, opts.no_cache),
        reuse=_reuse_dir(exp, opts.reuse, run_dir),
        shard=shard,
        shard_requests=None if shard is None else sum(1 for _ in shard.filter(plan.specs())),
        rate_share=opts.rate_share,
        judges_only=opts.judges_only,
        decider=_decider(opts, plan, shard),
    )


def _decider(opts: RunOptions, plan: Plan, shard: Shard | None) -> Decider | None:
    if opts.decider is None:
        return None
    if opts.resume is not None or shard is not None:  # a part of the rows cannot decide for the whole
        raise ConfigError("--stop-when-decided goes with a whole new run: not with --resume, --shard or --workers")
    return opts.decider(plan)


def _resumed_inputs(config: Path | None, opts: RunOptions) -> tuple[Manifest, Path | None, list[str], int | None]:
    """(manifest so far, config, overrides, limit): on --resume, its manifest fills what argv leaves out."""
    manifest = Manifest()
    overrides, limit = list(opts.overrides), opts.limit
    if opts.resume is not None:
        manifest = read_manifest(opts.resume, config)  # a damaged one: rebuilt, or refused in one line
        config = config or Path(str(manifest.config_path))
        overrides = overrides or list(manifest.overrides)
        limit = limit if limit is not None else manifest.limit
    return manifest, config, overrides, limit


def _run_place(
    opts: RunOptions, plan: Plan, manifest: Manifest, fingerprint: str, shard: Shard | None
) -> tuple[Path, str, frozenset[str]]:
    """(run dir, run id, request ids with a row): a resumed run's (grid checked, journal repaired) or a new one's."""
    exp = plan.exp
    done: set[str] = set()
    if opts.resume is not None:
        changed = grid_changed(manifest, fingerprint, (s.request_id for s in plan.specs()), opts.resume / JOURNAL)
        manifest.grid_changed = changed
        if changed and not opts.force:
            raise ConfigError(
                f"--resume {opts.resume}: the experiment's grid changed since that run (config, dataset, "
                "limit or repeats); resuming would mix two experiments. Start a new run, or pass --force"
            )
        run_dir = opts.resume
        run_id = str(manifest.run_id)
        repair_journal(run_dir / JOURNAL)
        for rid, (status, etype) in journal_state(run_dir / JOURNAL).items():
            if status == "ok" or (not opts.retry_errors and etype not in RESEND_ON_RESUME):
                done.add(rid)
    else:
        run_dir, run_id, location = new_run_dir(exp, opts.run_dir, f"-shard{shard.label}" if shard else "")
        if location is not None:
            manifest.location = location
    check_run_dir(run_dir, "--resume" if opts.resume else "--run-dir" if opts.run_dir else exp.where("reports_dir"))
    return run_dir, run_id, frozenset(done)


def new_run_dir(exp: Experiment, run_dir: Path | None, suffix: str = "") -> tuple[Path, str, str | None]:
    """A new run's directory, run id and, when reports_dir is object storage, the location it
    is published to at the end (its journal stays in a local staging directory meanwhile)."""
    if run_dir is not None:
        if (run_dir / JOURNAL).exists() or (run_dir / MANIFEST).exists():
            raise ConfigError(f"--run-dir {run_dir}: it already holds a run; use --resume {run_dir} to continue it")
        return run_dir, run_dir.name, None
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2) + suffix
    if not is_url(exp.config.reports_dir):
        return Path(exp.config.reports_dir) / exp.name / run_id, run_id, None
    location = join(exp.config.reports_dir, exp.name, run_id)
    check_writable(location)  # credentials, bucket: before anything is sent
    return staging_dir(location), run_id, location


def cache_file(exp: Experiment, no_cache: bool = False) -> Path | None:
    """The experiment's response cache, checked usable (a ConfigError, exit 2, otherwise):
    `cache: true` → reports_dir/cache (with reports_dir on object storage, a local folder per
    URL under the user's cache directory: see storage.response_cache_dir), or the folder given."""
    cache, reports_dir = exp.config.cache, exp.config.reports_dir
    if no_cache or cache is None or cache is False:
        return None
    if cache is True:
        folder = response_cache_dir(reports_dir) if is_url(reports_dir) else Path(reports_dir) / "cache"
    elif is_url(cache):
        raise ConfigError(
            f"{exp.where('cache')}: cache: {cache}: the cache is a local SQLite file; give a local folder "
            "(or true: with reports_dir on object storage it is kept under ~/.cache/evalrun/responses)"
        )
    else:
        folder = Path(cache)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{exp.where('cache')}: cache: {folder} is a file; give a folder (or true)")
    path = folder / CACHE_FILE
    problem = cache_problem(path)
    if problem is not None:
        raise ConfigError(f"{exp.where('cache')}: cache: {path} {problem}")
    return path


def _reuse_dir(exp: Experiment, reuse: str | None, run_dir: Path) -> Path | None:
    """`--reuse RUN_DIR|latest`: the earlier run whose answers this one takes (checked here, before sending)."""
    if reuse is None:
        return None
    if reuse == "latest":
        folder = Path(exp.config.reports_dir) / exp.name
        latest = latest_completed(folder, exclude=run_dir)
        if latest is None:
            raise ConfigError(f"--reuse latest: no completed run of {exp.name!r} under {folder}")
        return latest
    path = Path(reuse)
    if not (path / JOURNAL).is_file():
        raise ConfigError(f"--reuse {reuse}: no {JOURNAL} there; give a run directory (or latest)")
    return path


def _resumed_shard(opts: RunOptions, manifest: Manifest) -> Shard | None:
    """The shard of this run: --shard, or on --resume the one its manifest recorded."""
    if opts.resume is None:
        return opts.shard
    recorded = shard_from_manifest(manifest)
    if opts.shard is not None and opts.shard != recorded:
        raise ConfigError(
            f"--resume {opts.resume}: that run is shard {recorded or 'none (the whole grid)'}, not --shard {opts.shard}; "
            "drop --shard to resume it as it was"
        )
    return recorded


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


def api_keys(exp: Experiment, providers: frozenset[str]) -> dict[str, str | None]:
    """provider → key from its environment variable. A missing key is a usage error (exit 2)."""
    keys: dict[str, str | None] = {}
    for name in sorted(providers):
        env = exp.providers[name].api_key_env
        if env is None:
            keys[name] = None
            continue
        line = exp.lines.get(("providers", name, "api_key_env")) or exp.lines.get(("providers", name))
        where = f"{exp.path}:{line}" if line else str(exp.path)
        keys[name] = provider_key(name, env, where)
    use_keys([k for k in keys.values() if k])  # masked in all this run writes
    return keys


def _check_limiters(exp: Experiment, providers: frozenset[str]) -> None:
    """A shared limiter must answer before anything is sent (exit 2 otherwise), a judge's too."""
    urls = {n: p.limiter for n, p in exp.providers.items() if p.limiter and n in providers}
    if urls:
        from evalrun.run.rate.shared_limiter import check_reachable

        check_reachable(urls)


def _pricing(plan: Plan, max_cost: float | None, judges: set[str]) -> Pricing | None:
    """The run's prices; with a cost budget every model must have one, the judges' too (else
    it is unbounded)."""
    exp = plan.exp
    pricing = load_pricing(exp.config.prices, exp.path)
    if max_cost is not None:
        models = {c.model for c in plan.cells} | judges
        missing = sorted({m for m in models if pricing is None or not pricing.known(m)})
        if missing:
            raise ConfigError(
                f"{exp.where('budget')}: a cost budget needs a price for every model; none for {', '.join(missing)} "
                f"(add them under prices: in {exp.path}, or to {pricing.source if pricing else 'prices.yaml beside it'})"
            )
    return pricing
