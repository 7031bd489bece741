"""`evalrun merge`: the run directories of a sharded run → one run directory, as if one process
had run the whole grid.

The shards' journals are concatenated into the merged directory's journal (each row's run_id
becomes the merged run's), and results.parquet / summary.parquet are built from it exactly as a
single run builds them — so the rows are a single-process run's: the same request ids, one row
each. The manifest is the first shard's (config, prices, cells, grid fingerprint) with the
shards listed and the counts summed. Every shard must come from the same grid, and together the
shards must be all N of them, each once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from evalrun.errors import ConfigError
from evalrun.run.scale.shards import Shard, shard_from_manifest
from evalrun.run.store.framing import encode
from evalrun.run.store.journal import JOURNAL, JUDGE_JOURNAL, read_journal, repair_journal
from evalrun.run.store.manifest import MANIFEST, Counts, Manifest, RunStatus
from evalrun.run.store.manifest_io import finish_run, manifest_if_any, now_iso
from evalrun.run.store.store import RowHook, write_results


class Evaluator(RowHook, Protocol):
    def prepare(self, run_dir: Path) -> None: ...

    def write_summary(self, run_dir: Path) -> Any: ...


# builds the scorers for the merged run from its config (the analysis stage's for_experiment)
EvaluatorFactory = Callable[[Manifest, Path], Evaluator | None]


def read_manifest(run_dir: Path) -> Manifest:
    """A shard's manifest; missing or damaged: one line (see rundir.manifest_if_any)."""
    if not (run_dir / MANIFEST).is_file():
        raise ConfigError(f"{run_dir}: no {MANIFEST} there; is it a run directory?")
    return manifest_if_any(run_dir)


RUN_FILES = (JOURNAL, JUDGE_JOURNAL, MANIFEST)  # a folder holding any of these holds a run


def check_out(out: Path) -> None:
    """`merge --out DIR`: a new or empty folder, never one that holds a run — the merge would
    replace its journal and manifest, and the answers it paid for with them."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder; name a new folder for the merged run")
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held:
        raise ConfigError(
            f"--out {out}: it already holds a run ({', '.join(held)}); merging would replace it and lose its "
            "answers. Merge into a new folder (or, for an earlier merge of these same shards, remove it first)"
        )


def check_shards(run_dirs: Sequence[Path]) -> list[tuple[Shard, Path, Manifest]]:
    """The shards, in order, after checking they are one grid's complete set."""
    found: list[tuple[Shard, Path, Manifest]] = []
    for d in run_dirs:
        m = read_manifest(d)
        shard = shard_from_manifest(m)
        if shard is None:
            raise ConfigError(f"{d}: not a shard (its manifest has no shard; it was not run with --shard I/N)")
        found.append((shard, d, m))
    first_shard, first_dir, first = found[0]
    for shard, d, m in found[1:]:
        if m.grid_fingerprint != first.grid_fingerprint:
            raise ConfigError(
                f"{d}: a different grid than {first_dir} (grid_fingerprint differs); merge one run's shards"
            )
        if shard.count != first_shard.count:
            raise ConfigError(f"{d}: shard {shard}, but {first_dir} is shard {first_shard}: one N for all shards")
    by_index: dict[int, Path] = {}
    for shard, d, _ in found:
        if shard.index in by_index:
            raise ConfigError(f"{d}: shard {shard} twice (also {by_index[shard.index]})")
        by_index[shard.index] = d
    n = first_shard.count
    missing = [f"{i}/{n}" for i in range(1, n + 1) if i not in by_index]
    if missing:
        raise ConfigError(f"merge needs all {n} shards; missing shard {', '.join(missing)}")
    return sorted(found, key=lambda f: f[0].index)


def merge_runs(run_dirs: Sequence[Path], out: Path, evaluator: EvaluatorFactory | None = None) -> Manifest:
    """Write the merged run directory `out`; returns its manifest."""
    shards = check_shards(run_dirs)
    resolved = {d.resolve() for _, d, _ in shards}
    if out.resolve() in resolved:
        raise ConfigError(f"--out {out}: that is one of the shards; merge into a directory of its own")
    out.mkdir(parents=True, exist_ok=True)
    _merge_journals([d for _, d, _ in shards], out)
    merge_judge_journals([d for _, d, _ in shards], out)
    base = shards[0][2].model_copy(deep=True)
    base.drop("shard")
    hook = evaluator(base, out) if evaluator is not None else None
    if hook is not None:
        hook.prepare(out)  # the judges' answers, so the merged rows carry their verdicts
    columns = tuple(base.data_columns or ())
    if not columns:
        columns = _data_columns(shards[0][1])
    # a resumed shard may hold a request twice (its latest entry wins, as in a single run)
    counts = write_results(out, columns, dedupe=True, hook=hook)
    if hook is not None:
        hook.write_summary(out)
    status, merged_counts = _merged_state(base, shards, counts, out.name)
    finish_run(out, base, status, merged_counts, [])
    return base


def _merge_journals(shard_dirs: Sequence[Path], out: Path) -> None:
    """The shards' journals, in shard order, → out's (each row's run_id becomes the merged run's)."""
    run_id = out.name
    tmp = out / (JOURNAL + ".tmp")
    with tmp.open("wb") as f:
        for d in shard_dirs:
            repair_journal(d / JOURNAL)  # a shard killed mid-write leaves a torn last line
            for entry in read_journal(d / JOURNAL):
                for row in entry["rows"]:
                    row["run_id"] = run_id
                f.write(encode(orjson.dumps(entry)))  # the same compact line a run writes
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / JOURNAL)


def _merged_state(
    base: Manifest, shards: list[tuple[Shard, Path, Manifest]], counts: dict[str, int], run_id: str
) -> tuple[RunStatus, Counts]:
    """What the merged manifest says beyond the first shard's: its run id, times and shards (set
    on `base`), and its status and counts (returned, for the writer's finish)."""
    total = (base.grid.requests if base.grid else None) or 0
    missing = total - counts["requests"]
    done = not missing and all(m.status is RunStatus.COMPLETED for _, _, m in shards)
    base.run_id = run_id
    base.started_at = min(m.started_at or "" for _, _, m in shards)
    base.merged_at = now_iso()
    base.shards = [
        {
            "shard": str(s),
            "run_dir": str(d),
            "run_id": m.run_id,
            "status": m.status,
            "counts": m.counts.model_dump(exclude_unset=True) if m.counts else None,
        }
        for s, d, m in shards
    ]
    base.resumes = []
    merged = Counts(
        requests=total,
        recorded=counts["requests"],
        missing=missing,
        ok=counts["requests"] - counts["errors"],
        errors=counts["errors"],
        rows=counts["rows"],
    )
    return (RunStatus.COMPLETED if done else RunStatus.STOPPED), merged


def merge_judge_journals(shard_dirs: Sequence[Path], out: Path) -> None:
    """The shards' judge journals (and what `out` already holds: a --workers run asks the
    judges that need two shards' rows itself) → out's, one entry per judge request: its
    latest answer, but never a failure over an answer (a paid verdict is not asked twice)."""
    sources = [p for p in (out / JUDGE_JOURNAL, *(d / JUDGE_JOURNAL for d in shard_dirs)) if p.is_file()]
    if not sources:
        return
    chosen: dict[str, tuple[int, bool]] = {}  # id → (entry number, ok)
    for n, entry in enumerate(e for p in sources for e in read_journal(p, report=False)):
        ok = entry["status"] == "ok"
        if ok or not chosen.get(entry["id"], (0, False))[1]:
            chosen[entry["id"]] = (n, ok)
    keep = {n for n, _ in chosen.values()}
    tmp = out / (JUDGE_JOURNAL + ".tmp")
    with tmp.open("wb") as f:
        for n, entry in enumerate(e for p in sources for e in read_journal(p)):
            if n in keep:
                for row in entry["rows"]:
                    row["run_id"] = out.name
                f.write(encode(orjson.dumps(entry)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / JUDGE_JOURNAL)


def _data_columns(shard_dir: Path) -> tuple[str, ...]:
    """The dataset columns as the shard stored them (data_<column> in its results.parquet)."""
    from evalrun.run.store.store import DATA_PREFIX, RESULTS

    path = shard_dir / RESULTS
    if not path.is_file():
        return ()
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    return tuple(n[len(DATA_PREFIX) :] for n in names if n.startswith(DATA_PREFIX))
