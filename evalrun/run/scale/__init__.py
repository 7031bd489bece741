"""Scale-out: shards, merge, --workers and Ray."""

from typing import TYPE_CHECKING

from evalrun.run import lazy_face

if TYPE_CHECKING:
    from evalrun.run.scale.engine_ray import run_on_ray
    from evalrun.run.scale.merge import check_out, merge_runs
    from evalrun.run.scale.shards import Shard, parse_shard, shard_from_manifest
    from evalrun.run.scale.workers import (
        MAX_WORKERS,
        WorkersPlan,
        cost_share,
        plan_from_manifest,
        run_workers,
        start_manifest,
    )

__all__ = [
    "MAX_WORKERS",
    "Shard",
    "WorkersPlan",
    "check_out",
    "cost_share",
    "merge_runs",
    "parse_shard",
    "plan_from_manifest",
    "run_on_ray",
    "run_workers",
    "shard_from_manifest",
    "start_manifest",
]

if not TYPE_CHECKING:  # mypy reads the imports above; at run time each name loads on first use
    __getattr__ = lazy_face(__name__, __file__)
