"""The typed manifest, under the name the run stage's top reads it by, and what a run writes in it.

The record and its one reader/writer live in `run/store/` (`manifest.py`, `manifest_io.py`)
because the store, scale-out and the analysis stage read manifests too, and they may not import
the top of run/. `read_manifest(path)` here checks one manifest.json file against the record;
`evalrun.run.store.read_manifest(run_dir, config)` is the resume's reader (it also rebuilds a
damaged one). Both return the `Manifest` record: read keys as attributes (`m.status`,
`m.counts.missing`), never with `.get`.
"""

from __future__ import annotations

import platform
import sys
from typing import TYPE_CHECKING

from evalrun import __version__
from evalrun.run.grid.datasets import file_digest
from evalrun.run.store.manifest import (
    MANIFEST_VERSION,
    CellInfo,
    ErrorType,
    GridInfo,
    Manifest,
    PricesInfo,
    RunStatus,
)
from evalrun.run.store.manifest_io import ManifestError, now_iso, start_run
from evalrun.run.store.manifest_io import read_manifest_file as read_manifest

if TYPE_CHECKING:
    from evalrun.run.context import RunContext

__all__ = [
    "MANIFEST_VERSION",
    "ErrorType",
    "Manifest",
    "ManifestError",
    "RunStatus",
    "read_manifest",
    "start_manifest",
    "versions",
]


def versions() -> dict[str, str]:
    """The versions of evalrun and of what it runs on, for the manifest."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"evalrun": __version__, "python": platform.python_version()}
    for dist in ("aiohttp", "pyarrow", "pandas", "pydantic", "orjson", "uvloop"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def start_manifest(ctx: RunContext) -> None:
    """manifest.json as the run starts: what it is, with what, and its cells (status running)."""
    plan, exp, manifest, pricing = ctx.plan, ctx.exp, ctx.manifest, ctx.pricing
    manifest.evalrun_version, manifest.versions, manifest.argv = __version__, versions(), sys.argv[1:]
    manifest.config = exp.raw
    manifest.prices = (
        PricesInfo(
            source=pricing.source,
            currency=pricing.currency,
            as_of=pricing.table.as_of,
            models={m: p.model_dump(exclude_none=True) for m, p in pricing.table.models.items()},
        )
        if pricing
        else None
    )
    manifest.providers = {n: p.model_dump(mode="json") for n, p in exp.providers.items()}
    manifest.grid = GridInfo(
        cells=len(plan.cells),
        rows=plan.dataset.rows,
        repeats=plan.repeats,
        requests=plan.total_requests,
        dataset=str(plan.dataset.path),
    )
    manifest.data_columns = list(plan.dataset.columns)  # for `evalrun merge`
    manifest.dataset_hash = file_digest(plan.dataset.path)  # for `evalrun history`'s drift markers
    manifest.cells = [
        CellInfo(cell_id=c.cell_id, provider=c.provider, model=c.model, prompt_id=c.prompt_id, params=c.params)
        for c in plan.cells
    ]
    resumed = {"at": now_iso(), "already_done": len(ctx.done), "retry_errors": ctx.retry_errors}
    start_run(ctx.run_dir, manifest, resumed if ctx.resumed else None)
