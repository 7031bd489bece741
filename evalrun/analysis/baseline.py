"""`--baseline latest`: the run a new one is compared with when nobody names it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalrun.analysis.compare import cell_keys, endpoints
from evalrun.errors import ConfigError
from evalrun.run.store import MANIFEST, RESULTS, GridInfo, Manifest, RunStatus, manifest_if_any, require_finished


def _grid_mismatch(base: Manifest, new: Manifest) -> str | None:
    """Why `base` cannot be new's baseline (None: same cells, rows and repeats)."""
    if set(cell_keys(base).values()) != set(cell_keys(new).values()):
        return "other cells (models, prompt names or parameters)"
    if endpoints(base) != endpoints(new):  # a simulator run is no baseline for a real API's
        return f"another provider ({', '.join(sorted(endpoints(base)))})"
    bg, ng = base.grid or GridInfo(), new.grid or GridInfo()
    for what, b, n in (("rows", bg.rows, ng.rows), ("repeats", bg.repeats, ng.repeats)):
        if b != n:
            return f"{b} {what} instead of {n}"
    return None


def latest_baseline(new_dir: Path) -> Path:
    """The latest *completed* run of the same experiment, started before NEW, whose grid (cells by
    model, prompt name and parameters; rows; repeats) is NEW's — a stopped run or one made with
    another --limit would compare a different set of items."""
    new = require_finished(new_dir)
    skipped: list[tuple[str, Path, str]] = []
    best: tuple[str, Path] | None = None
    for sibling in new_dir.parent.iterdir():
        if sibling == new_dir or not (sibling / RESULTS).is_file() or not (sibling / MANIFEST).is_file():
            continue
        try:
            m = manifest_if_any(sibling)
        except ConfigError:  # a damaged run is no baseline
            continue
        if m.shard is not None:  # one shard of a sharded run is not a whole run
            continue
        started = m.started_at or ""
        if m.experiment != new.experiment or started >= (new.started_at or ""):
            continue
        missing = m.counts.missing if m.counts else 0
        why = f"status {m.status}" if m.status is not RunStatus.COMPLETED or missing else _grid_mismatch(m, new)
        if why:
            skipped.append((started, sibling, why))
        elif best is None or started > best[0]:
            best = (started, sibling)
    if best is None:
        hint = ""
        if skipped:
            _, path, why = max(skipped, key=lambda s: s[0])
            hint = f"; the latest, {path.name}, has {why}: name a base run explicitly: evalrun compare BASE_RUN NEW_RUN"
        raise ConfigError(
            f"--baseline latest: no earlier completed run of {new.experiment!r} with the same grid "
            f"in {new_dir.parent}{hint}"
        )
    return best[1]


def named_or_latest(exp: Any, given: str | None, flag: str, hint: str = "") -> Path:
    """The run a flag names (a finished run directory), or with `latest` (or nothing) the
    experiment's latest completed run; one line naming what was looked at when there is none."""
    from evalrun.run.store import latest_completed

    folder = Path(exp.config.reports_dir) / exp.name
    base = latest_completed(folder) if given in (None, "latest") else Path(given)
    if base is None:
        raise ConfigError(f"{flag}: no completed run of {exp.name!r} under {folder}{hint}")
    if not (base / RESULTS).is_file():
        raise ConfigError(f"{flag} {base}: not a finished run (no {RESULTS})")
    return base
