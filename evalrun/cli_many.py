"""The command line of many processes: `run --shard I/N`, `run --workers K [--engine ray]` and
`merge`. Kept apart from cli.py so that cli.py stays one function per single-process command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalrun.errors import ConfigError

if TYPE_CHECKING:
    from evalrun.run.store import Manifest


def add_run_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--shard", metavar="I/N", help="run only shard I of N (by request id); merge with evalrun merge")
    s.add_argument("--workers", type=int, metavar="K", help="run K shard processes sharing the budget, then merge")
    s.add_argument("--engine", choices=["local", "ray"], default="local", help="with --workers: where shards run")
    # set by --workers on its children: pace at 1/K of rpm/tpm (no shared limiter)
    s.add_argument("--rate-share", type=int, default=1, help=argparse.SUPPRESS)


def add_merge_parser(sub: Any) -> None:
    s = sub.add_parser("merge", help="merge the run directories of a sharded run into one run directory")
    s.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    s.add_argument("--out", type=Path, required=True, metavar="DIR", help="the merged run directory")


def evaluator_factory() -> Any:
    """manifest → the analysis stage's scorers for the run's config (summary.parquet of a merge)."""

    def build(manifest: Manifest, out: Path) -> Any:
        from evalrun.analysis.evaluation import for_experiment
        from evalrun.config.load import load_experiment

        exp = load_experiment(Path(str(manifest.config_path)), list(manifest.overrides))
        return for_experiment(exp, tuple(manifest.data_columns or ()))

    return build


def shard_option(args: argparse.Namespace) -> Any:
    """--shard, parsed and checked against the other options (a ConfigError is exit 2)."""
    from evalrun.run.scale import parse_shard

    if args.shard is None:
        return None
    return parse_shard(args.shard)  # with --workers too: wants_workers refused that already


def wants_workers(args: argparse.Namespace) -> bool:
    """Whether `run` is a --workers run, or the --resume of one."""
    if args.workers is not None:
        if args.shard is not None:
            raise ConfigError("--shard and --workers: pick one (--workers K runs shards 1/K … K/K itself)")
        return True
    if args.engine != "local":
        raise ConfigError(f"--engine {args.engine} goes with --workers K")
    if args.resume is not None and (args.resume / "manifest.json").is_file():
        from evalrun.run.store import manifest_if_any

        try:
            return manifest_if_any(args.resume).workers is not None
        except ConfigError:  # damaged: the single-process path rebuilds it or says so in one line
            return False
    return False  # the single-process path says what is wrong with a --resume


def run_workers_cmd(args: argparse.Namespace) -> int:
    """`run --workers K` / `run --resume DIR` of a --workers run."""
    from evalrun.config.load import load_experiment
    from evalrun.run.scale import plan_from_manifest, run_workers

    if args.resume is not None:
        if args.workers is not None or args.config is not None:
            raise ConfigError("--resume of a --workers run takes its config and workers from the run; drop them")
        if args.no_cache:  # each shard resumes with its own recorded options
            raise ConfigError(
                "--no-cache: not with the --resume of a --workers run; move the cache folder aside instead"
            )
        plan = plan_from_manifest(args.resume, args.retry_errors)
        assert plan is not None
        plan.max_requests, plan.max_cost = _budgets(args, load_experiment(plan.config, plan.overrides))
        plan.progress = not args.no_progress
        resume = True
    else:
        plan = _new_plan(args)
        resume = False
    if args.engine == "ray":
        from evalrun.run.scale import run_on_ray

        code, messages = run_on_ray(plan, evaluator_factory(), resume)
    else:
        code, messages = run_workers(plan, evaluator_factory(), resume)
    if code == 0 and pending_judges(plan.run_dir):  # a stopped run is judged when resumed, as one process does
        judged, more = _judge_merged(plan)
        code, messages = code or judged, messages + more
    for msg in messages:
        print(f"evalrun: {msg}", file=sys.stderr)
    print(plan.location or plan.run_dir)
    return code


def pending_judges(run_dir: Path) -> int:
    """How many judge requests a merged run still needs: a pairwise judge whose two answers
    were in different shards could be asked by neither shard (and a stopped shard asked none)."""
    from evalrun.run.store import manifest_if_any

    if not (run_dir / "results.parquet").is_file():
        return 0  # not merged (a shard failed to start): the resume merges, then judges
    evaluation = evaluator_factory()(manifest_if_any(run_dir), run_dir)
    return sum(1 for _ in evaluation.judge_requests(run_dir))


def _judge_merged(plan: Any) -> tuple[int, list[str]]:
    """This process asks the merged run's pending judge requests (judges only: the shards sent
    every experiment request they could), with the whole rate; → (exit code, messages)."""
    from evalrun.analysis.evaluation import for_experiment
    from evalrun.run.runner import RunOptions, run

    opts = RunOptions(
        resume=plan.run_dir, max_cost=plan.max_cost, progress=plan.progress, evaluator=for_experiment, judges_only=True
    )
    outcome = run(None, opts)
    return outcome.exit_code, [m for m in outcome.messages if "have no row yet" not in m]  # said by the merge


def _new_plan(args: argparse.Namespace) -> Any:
    from evalrun.config.load import load_experiment
    from evalrun.run.context import cache_file, new_run_dir
    from evalrun.run.grid import build_plan
    from evalrun.run.scale import MAX_WORKERS, WorkersPlan, start_manifest

    if args.config is None:
        raise ConfigError("evalrun run --workers K needs a CONFIG file")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers {args.workers}: from 1 to {MAX_WORKERS}")
    exp = load_experiment(args.config, args.overrides)
    plan = build_plan(exp, args.limit)  # every check before a process starts or a request is sent
    cache_file(exp, args.no_cache)
    used = {c.provider for c in plan.cells}
    shared = all(exp.providers[n].limiter for n in used)
    limited = any(exp.providers[n].rpm or exp.providers[n].tpm for n in used)
    max_requests, max_cost = _budgets(args, exp)
    if max_cost is not None:  # a worker's share of the budget must fit one request, like a run's
        from evalrun.plan import run_checks
        from evalrun.run.scale import cost_share

        try:
            run_checks(exp, cost_share(max_cost, args.workers))
        except ConfigError as exc:
            raise ConfigError(
                f"--workers {args.workers} gives each worker 1/{args.workers} of the budget: {exc}, or use fewer workers"
            ) from None
    run_dir, _, location = new_run_dir(exp, args.run_dir)  # shards local; the merged run is published
    wplan = WorkersPlan(
        config=args.config,
        workers=args.workers,
        run_dir=run_dir,
        # --no-cache as the shards' --set: recorded in their manifests, so their resumes keep it
        overrides=[*args.overrides, *(["cache=false"] if args.no_cache else [])],
        limit=args.limit,
        max_requests=max_requests,
        max_cost=max_cost,
        shared_limiter=shared,
        limited=limited,
        location=location,
        progress=not args.no_progress,
        total=plan.total_requests,
    )
    start_manifest(wplan, exp.name)
    return wplan


def _budgets(args: argparse.Namespace, exp: Any) -> tuple[int | None, float | None]:
    """The run's budgets (the flags, else the config's `budget:`), split by the parent: a shard
    told nothing would read the config's whole budget, K times over."""
    budget = exp.config.budget
    return (
        budget.max_requests if args.max_requests is None else args.max_requests,
        args.max_cost or budget.max_cost,
    )


def cmd_merge(args: argparse.Namespace) -> int:
    from evalrun.run.scale import check_out, merge_runs
    from evalrun.run.store import Counts, RunStatus, check_no_run, publish_or_keep

    target = getattr(args, "publish_to", None)
    if target:
        check_no_run(target)
    check_out(args.out)  # for a URL: its local copy, which may hold answers not yet published
    manifest = merge_runs(args.run_dirs, args.out, evaluator_factory())
    if target and (unpublished := publish_or_keep(args.out, target)) is not None:
        print(f"evalrun: error: {unpublished}", file=sys.stderr)
        print(args.out)
        return 1
    c = manifest.counts or Counts()
    print(
        f"evalrun: merged {len(args.run_dirs)} shards: {c.recorded:,} of {c.requests:,} requests "
        f"({c.errors:,} errors); {manifest.status}",
        file=sys.stderr,
    )
    pending = pending_judges(args.out)
    if pending:
        print(
            f"evalrun: {pending:,} judge requests have no answer yet (a pairwise judge whose answer and "
            f"baseline are in different shards, or a shard stopped before judging); ask them with: "
            f"evalrun score {args.out}",
            file=sys.stderr,
        )
    print(target or args.out)
    return 0 if manifest.status is RunStatus.COMPLETED else 1


def localize(args: argparse.Namespace) -> None:
    """Run directories given as URLs (s3://…) → local copies, so every command reads files.

    `run --resume URL` continues in the run's local staging directory (its journal is fetched
    when this machine has none) and publishes to URL again at the end; the reading commands get
    a cached copy of manifest, results and summary; `merge --out URL` merges locally, then
    publishes."""
    from evalrun.run.store import storage

    cmd = args.command
    if cmd == "run":
        if args.run_dir is not None and storage.is_url(args.run_dir):
            raise ConfigError("--run-dir takes a local path; for object storage set reports_dir: s3://bucket/folder")
        if args.resume is not None and storage.is_url(args.resume):
            url = storage.as_location(args.resume)
            staging = storage.staging_dir(url)
            if not (staging / "journal.jsonl").is_file():
                storage.fetch_run(url, ("manifest.json", "journal.jsonl"), into=staging)
            args.resume = staging
    elif cmd in ("summary", "cost", "report", "score") and storage.is_url(args.run_dir):
        _reading_copy(args)
        if cmd == "report" and args.out is None:
            args.out = args.run_dir / "report.html"
    if cmd == "report" and args.compare is not None and storage.is_url(args.compare):
        args.compare = storage.fetch_run(storage.as_location(args.compare))
    elif cmd == "compare":
        urls = [storage.as_location(r) for r in args.runs]
        if args.baseline == "latest" and len(urls) == 1 and storage.is_url(urls[0]):
            urls = [_latest_remote(urls[0]), urls[0]]
            args.baseline = None
        args.runs = [storage.fetch_run(u) if storage.is_url(u) else Path(u) for u in urls]
    elif cmd == "merge":
        reads = ("manifest.json", "journal.jsonl", "results.parquet")
        args.run_dirs = [
            storage.fetch_run(storage.as_location(d), reads) if storage.is_url(d) else d for d in args.run_dirs
        ]
        if storage.is_url(args.out):
            args.publish_to = storage.as_location(args.out)
            args.out = storage.staging_dir(args.publish_to)


def _reading_copy(args: argparse.Namespace) -> None:
    """A reading command's run on object storage → its cached copy (and report's `--compare
    latest` → the latest earlier run among its siblings in the bucket, not in the cache)."""
    from evalrun.run.store import storage

    url = storage.as_location(args.run_dir)
    if args.command == "report" and args.compare is not None and str(args.compare) == "latest":
        args.compare = storage.fetch_run(_latest_remote(url))
    args.run_dir = storage.fetch_run(url)


def _latest_remote(new_url: str) -> str:
    """--baseline latest for a run on object storage: the sibling run that started last before it."""
    from evalrun.run.store import manifest_if_any, storage

    parent = new_url.rstrip("/").rsplit("/", 1)[0]
    new = manifest_if_any(storage.fetch_run(new_url, ("manifest.json",)))
    best: tuple[str, str] | None = None
    for url in storage.list_runs(parent):
        if url.rstrip("/") == new_url.rstrip("/"):
            continue
        try:
            local = storage.fetch_run(url, ("manifest.json", "results.parquet"))
        except ConfigError:
            continue  # not a run directory (or not finished)
        if not (local / "results.parquet").is_file():
            continue
        try:
            m = manifest_if_any(local)
        except ConfigError:  # a damaged run is no baseline
            continue
        if m.shard is not None or m.experiment != new.experiment:
            continue
        started = m.started_at or ""
        if started < (new.started_at or "") and (best is None or started > best[0]):
            best = (started, url)
    if best is None:
        raise ConfigError(f"--baseline latest: no earlier finished run of {new.experiment!r} in {parent}")
    return best[1]
