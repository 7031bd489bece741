"""`evalrun run CONFIG --workers K`: K local shard processes, one run directory.

    <run_dir>/manifest.json       the merged run's (first written as "running", with `workers`)
    <run_dir>/results.parquet     merged from the shards when all have ended
    <run_dir>/shards/1of3/…       each shard's own run directory (journal, manifest, results)

Every shard process runs `evalrun run CONFIG --shard I/K --run-dir <run_dir>/shards/IofK`. They
share the provider's budget through the Redis limiter when the provider has one; otherwise
each paces at an even 1/K of rpm and tpm (rounded down: never more than the budget together),
and the run says so. `--max-requests` and `--max-cost` (or the config's `budget:`) are split so
that the K parts add up to the budget and never more: whole requests go one more to the first
shards (with K > N the last K − N shards get 0 and stop before sending anything), money is
rounded down.

`evalrun run --resume <run_dir>` of such a run resumes each shard that did not complete (a
shard killed with kill -9 resumes from its journal) and merges again.
"""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from evalrun.errors import ConfigError
from evalrun.run.scale.merge import EvaluatorFactory, merge_runs, read_manifest
from evalrun.run.scale.shards import Shard
from evalrun.run.store.journal import JOURNAL
from evalrun.run.store.manifest import MANIFEST, Counts, Manifest, RunStatus, WorkersInfo
from evalrun.run.store.manifest_io import read_manifest_file, start_workers, write_manifest

logger = logging.getLogger(__name__)

SHARDS_DIR = "shards"
MAX_WORKERS = 256
PROGRESS_EVERY_S = 10.0  # how often the parent prints what the shards have recorded
POLL_S = 0.2


def count_share(total: int, workers: int, index: int) -> int:
    """Shard `index`'s (1-based) part of a whole-number budget: the parts add up to `total`
    exactly (a 1/K share rounded up would send more than asked; rounded down, less)."""
    return total // workers + (index <= total % workers)


def cost_share(total: float, workers: int) -> float:
    """A 1/workers part of a money budget, rounded down: K of them never add up to more than
    `total` (`total / K` in floating point can be a hair more than a K-th)."""
    share = total / workers
    while Fraction(share) * workers > Fraction(total):
        share = math.nextafter(share, 0.0)
    return share


@dataclass
class WorkersPlan:
    """What the parent was asked: the config, the shard count, and what each child passes on."""

    config: Path
    workers: int
    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    limit: int | None = None
    max_requests: int | None = None
    max_cost: float | None = None
    shared_limiter: bool = False  # every used provider has a Redis limiter: no 1/K share
    retry_errors: bool = False
    limited: bool = True  # some provider has rpm or tpm (else there is no budget to share)
    location: str | None = None  # reports_dir on object storage: the merged run is published there
    progress: bool = True  # print the shards' progress to stderr every PROGRESS_EVERY_S
    total: int | None = None  # requests in the grid, when known


def shard_dir(run_dir: Path, shard: Shard) -> Path:
    return run_dir / SHARDS_DIR / shard.label


def child_argv(plan: WorkersPlan, shard: Shard, resume: bool) -> list[str]:
    """The evalrun command line of one shard process (with `resume`, the resume of a shard
    that has a manifest)."""
    d = shard_dir(plan.run_dir, shard)
    if resume and (d / MANIFEST).is_file():
        return resume_argv(plan, shard)
    argv = [sys.executable, "-m", "evalrun", "run", str(plan.config), "--shard", str(shard), "--run-dir", str(d)]
    for o in plan.overrides:
        argv += ["--set", o]
    if plan.limit is not None:
        argv += ["--limit", str(plan.limit)]
    return argv + _shares(plan, shard)


def resume_argv(plan: WorkersPlan, shard: Shard) -> list[str]:
    """The command that resumes a shard from its journal."""
    argv = [sys.executable, "-m", "evalrun", "run", "--resume", str(shard_dir(plan.run_dir, shard))]
    return argv + (["--retry-errors"] if plan.retry_errors else []) + _shares(plan, shard)


def _shares(plan: WorkersPlan, shard: Shard) -> list[str]:
    """What a shard process is told: its share of the rate and of the budgets."""
    argv = ["--no-progress"]
    if plan.workers > 1:  # the 1/K share, or with a shared limiter the floor of its fallback share
        argv += ["--rate-share", str(plan.workers)]
    if plan.max_requests is not None:  # 0 for some shards when K > the budget: they send nothing
        argv += ["--max-requests", str(count_share(plan.max_requests, plan.workers, shard.index))]
    if plan.max_cost is not None:
        argv += ["--max-cost", repr(cost_share(plan.max_cost, plan.workers))]
    return argv


def start_manifest(plan: WorkersPlan, experiment: str) -> None:
    """Written before any shard starts, so a parent killed mid-run can be resumed."""
    fields = Manifest(
        run_id=plan.run_dir.name,
        experiment=experiment,
        config_path=str(plan.config.resolve()),
        overrides=plan.overrides,
        limit=plan.limit,
    )
    if plan.location:
        fields.location = plan.location
    start_workers(plan.run_dir, fields, WorkersInfo(count=plan.workers, shared_limiter=plan.shared_limiter))


def plan_from_manifest(run_dir: Path, retry_errors: bool) -> WorkersPlan | None:
    """The WorkersPlan of a --workers run directory (for --resume); None for any other run."""
    manifest = read_manifest(run_dir)
    workers = manifest.workers
    if workers is None:
        return None
    return WorkersPlan(
        config=Path(str(manifest.config_path)),
        workers=workers.count,
        run_dir=run_dir,
        overrides=list(manifest.overrides),
        limit=manifest.limit,
        shared_limiter=workers.shared_limiter,
        retry_errors=retry_errors,
        location=manifest.location,
    )


def share_messages(plan: WorkersPlan) -> list[str]:
    if not plan.shared_limiter and plan.workers > 1 and plan.limited:
        return [
            f"no shared limiter: each of the {plan.workers} workers paces at 1/{plan.workers} of rpm and tpm "
            "(set limiter: redis://HOST:PORT/DB to share one budget)"
        ]
    return []


def pending_shards(plan: WorkersPlan, resume: bool) -> list[Shard]:
    """The shards to run: all of them, or on resume those that did not complete."""
    shards = [Shard(i, plan.workers) for i in range(1, plan.workers + 1)]
    return [s for s in shards if not (resume and _completed(shard_dir(plan.run_dir, s)))]


def run_workers(plan: WorkersPlan, evaluator: EvaluatorFactory | None, resume: bool = False) -> tuple[int, list[str]]:
    """Run (or resume) the K shards as child processes, then merge. Returns (exit code, messages)."""
    if not 1 <= plan.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers {plan.workers}: from 1 to {MAX_WORKERS}")
    messages = share_messages(plan)
    children: list[tuple[Shard, subprocess.Popen[bytes]]] = []
    for shard in pending_shards(plan, resume):  # a shard that finished is not run again
        d = shard_dir(plan.run_dir, shard)
        d.parent.mkdir(parents=True, exist_ok=True)
        # the child's stdout is its run dir (we know it); its stderr is the user's, line by line
        child = subprocess.Popen(child_argv(plan, shard, resume), stdout=subprocess.DEVNULL)
        logger.info("shard %s: pid %d, %s", shard, child.pid, d)
        children.append((shard, child))
    codes: dict[str, int] = {}
    try:
        _watch(plan, children)
        for shard, child in children:
            codes[str(shard)] = child.wait()
    except KeyboardInterrupt:
        # the children got the same Ctrl-C (one process group) and are finishing what is on the
        # wire; another SIGINT from here would be their "exit now", so only wait for them
        for shard, child in children:
            codes[str(shard)] = child.wait()
    return finish_workers(plan, codes, evaluator, messages)


def _watch(plan: WorkersPlan, children: list[tuple[Shard, subprocess.Popen[bytes]]]) -> None:
    """Wait for the children; meanwhile, every PROGRESS_EVERY_S, one line of what they recorded
    (counted from their journals: one line per finished request)."""
    counter = JournalCounter()
    last = time.monotonic()
    while any(child.poll() is None for _, child in children):
        time.sleep(POLL_S)
        if plan.progress and time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            per = {s: counter.count(shard_dir(plan.run_dir, s) / JOURNAL) for s, _ in children}
            done = sum(per.values())
            of = f"/{plan.total:,}" if plan.total else ""
            running = sum(1 for _, c in children if c.poll() is None)
            detail = ", ".join(f"{s} {n:,}" for s, n in per.items())
            print(f"[workers] {done:,}{of} recorded ({detail}); {running} running", file=sys.stderr, flush=True)


class JournalCounter:
    """Journal lines so far, reading only what was appended since the last look."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, int]] = {}  # path → (bytes read, lines)

    def count(self, path: Path) -> int:
        offset, lines = self._seen.get(path, (0, 0))
        try:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            return lines
        lines += chunk.count(b"\n")
        self._seen[path] = (offset + len(chunk), lines)
        return lines


def finish_workers(
    plan: WorkersPlan, codes: dict[str, int], evaluator: EvaluatorFactory | None, messages: list[str]
) -> tuple[int, list[str]]:
    """After the shards ended (exit code by shard): merge them into the run directory."""
    shards = [Shard(i, plan.workers) for i in range(1, plan.workers + 1)]
    failed = {s: c for s, c in codes.items() if c != 0}
    for s, c in failed.items():
        messages.append(f"shard {s} ended with exit code {c}" + (" (killed)" if c < 0 else ""))
    dirs = [shard_dir(plan.run_dir, s) for s in shards]
    present = [d for d in dirs if (d / MANIFEST).is_file() and (d / JOURNAL).exists()]
    if len(present) < len(dirs):
        messages.append(f"continue with: evalrun run --resume {plan.location or plan.run_dir}")
        return 1, messages
    workers_info = read_manifest(plan.run_dir).workers
    merged = merge_runs(dirs, plan.run_dir, evaluator)
    merged.workers = workers_info
    if plan.location:
        merged.location = plan.location
    write_manifest(plan.run_dir, merged)
    unpublished = None
    if plan.location:
        from evalrun.run.store.storage import publish_or_keep

        if (unpublished := publish_or_keep(plan.run_dir, plan.location)) is not None:
            messages.append(unpublished)
    counts = merged.counts or Counts()
    if merged.status is not RunStatus.COMPLETED:
        messages.append(
            f"{counts.missing:,} of {counts.requests:,} requests have no row yet; "
            f"continue with: evalrun run --resume {plan.location or plan.run_dir}"
        )
        return (130 if any(c in (130, -signal.SIGINT) for c in codes.values()) else 1), messages
    return (1 if failed or unpublished else 0), messages


def _completed(d: Path) -> bool:
    path = d / MANIFEST
    return path.is_file() and read_manifest_file(path).status is RunStatus.COMPLETED
