"""`evalrun run CONFIG --engine ray --workers K`: the K shards as Ray tasks (pip install 'evalrun[ray]').

The driver connects to the cluster at RAY_ADDRESS (or uses the Ray this process already started;
else starts a local one), submits one task per shard and merges when all have ended, exactly as
`--workers` does with local processes (`workers.py`). Each task runs the shard as an evalrun
process writing its run directory under `<run_dir>/shards/IofK` — a path every node must see
(the same disk for a local Ray; a shared filesystem for a cluster). With `reports_dir` on object
storage the merged run is published there.

A lost task is resumed, not re-run: Ray retries a task whose shard process or worker died
(TASK_RETRIES times), and the retried task finds the shard's manifest and journal and runs
`evalrun run --resume` on it, so only the requests without a row are sent again.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from evalrun.errors import ConfigError
from evalrun.run.scale.merge import EvaluatorFactory
from evalrun.run.scale.workers import (
    WorkersPlan,
    child_argv,
    finish_workers,
    pending_shards,
    resume_argv,
    shard_dir,
    share_messages,
)
from evalrun.run.store.store import MANIFEST

logger = logging.getLogger(__name__)

TASK_RETRIES = 3  # a shard whose process or Ray worker died is resumed this many times


class ShardLost(RuntimeError):
    """The shard's process was killed (a signal): Ray retries the task, which resumes the shard."""


def run_shard(new_argv: list[str], resume_argv: list[str], run_dir: str) -> int:
    """One shard, inside a Ray task: a fresh start, or --resume when an earlier try left a journal."""
    argv = resume_argv if (Path(run_dir) / MANIFEST).is_file() else new_argv
    Path(run_dir).parent.mkdir(parents=True, exist_ok=True)
    code = subprocess.run(argv, stdout=subprocess.DEVNULL, check=False).returncode
    if code < 0:
        raise ShardLost(f"shard process {run_dir} ended by signal {-code}")
    return code


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'evalrun[ray]'") from None
    return ray


def run_on_ray(plan: WorkersPlan, evaluator: EvaluatorFactory | None, resume: bool = False) -> tuple[int, list[str]]:
    """Submit the pending shards as Ray tasks, wait for all, merge. Returns (exit code, messages)."""
    ray = _ray()
    started_here = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
        started_here = True
    try:
        messages = share_messages(plan)
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=[ShardLost])(run_shard)
        refs: dict[str, Any] = {}
        for shard in pending_shards(plan, resume):
            d = shard_dir(plan.run_dir, shard)
            refs[str(shard)] = task.remote(child_argv(plan, shard, False), resume_argv(plan, shard), str(d))
            logger.info("shard %s: Ray task %s", shard, refs[str(shard)])
        codes: dict[str, int] = {}
        for name, ref in refs.items():
            try:
                codes[name] = int(ray.get(ref))
            except Exception as exc:  # retries used up (or the task could not run): say which shard
                messages.append(f"shard {name}: Ray task failed ({type(exc).__name__}: {str(exc).splitlines()[0]})")
                codes[name] = 1
        return finish_workers(plan, codes, evaluator, messages)
    finally:
        if started_here:
            ray.shutdown()
