"""What `evalrun history` reads: the run directories a glob or an experiment folder names (local
or on object storage), each run's few manifest facts, and its summary.parquet — never its
results.parquet or journal, so a year of nights reads in about a second.

`run_facts` is the one function here that reads a manifest.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import orjson

from evalrun.errors import ConfigError
from evalrun.run.store import MANIFEST, SUMMARY, fetch_run, is_url, list_runs

GLOB_CHARS = "*?["
FETCHERS = 16  # remote manifests fetched at once: a year of nights is 365 small GETs


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What history takes from one run's manifest.json."""

    run_id: str
    started_at: str
    experiment: str
    status: str
    missing: int  # requests of the grid with no row (a stopped run's)
    shard: bool  # one shard of a sharded run: not a whole night
    dataset_hash: str | None  # None: written before manifests recorded it
    prompts: Mapping[str, str] = field(default_factory=dict)  # prompt id → digest of its messages
    prices: Mapping[str, str] = field(default_factory=dict)  # model → digest of its price entry and currency
    cell_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # cell id → its parameters
    axes: tuple[str, ...] = ()  # the parameters the grid: block varies (axes and include: points)
    # provider → its recorded settings (key variable names, never keys), for --check-models
    providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def skip_reason(self) -> str | None:
        """Why this run is no night of the history (None: it is one)."""
        if self.shard:
            return "one shard of a sharded run (merge the shards first)"
        if self.status != "completed":
            return f"status {self.status}"
        if self.missing:
            return f"{self.missing:,} requests have no row"
        return None


def _digest(obj: Any) -> str:
    return hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()


def run_facts(run_dir: Path, name: str) -> RunFacts:
    """The run's manifest facts. The only reader of a manifest in `history` (through the run
    stage's reader, which refuses a damaged one with a ConfigError naming the file)."""
    from evalrun.run.store import read_manifest

    m = read_manifest(run_dir)
    config = m.config or {}
    prices = m.prices
    currency = prices.currency if prices else None
    return RunFacts(
        run_id=str(m.run_id or name),
        started_at=str(m.started_at or ""),
        experiment=str(m.experiment or config.get("experiment") or ""),
        status=str(m.status or "unknown"),
        missing=m.counts.missing if m.counts else 0,
        shard=m.shard is not None,
        dataset_hash=m.dataset_hash,
        prompts={p: _digest(msgs) for p, msgs in (config.get("prompts") or {}).items()},
        prices={
            model: _digest([currency, entry]) for model, entry in ((prices.models if prices else None) or {}).items()
        },
        cell_params={c.cell_id: c.params or {} for c in m.cells if c.cell_id},
        axes=_axes(config.get("grid") or {}),
        providers=m.providers or {},
    )


def _axes(grid: Mapping[str, Any]) -> tuple[str, ...]:
    points = [p for p in grid.get("include") or [] if isinstance(p, dict)]
    names = {k for k in grid if k not in ("include", "exclude")} | {k for p in points for k in p}
    return tuple(sorted(names - {"model", "prompt"}))


@dataclass(frozen=True, slots=True)
class Place:
    """One run directory: where it is (a path or URL, as shown) and its local readable copy."""

    where: str
    name: str

    def local(self, file: str) -> Path:
        """The directory to read `file` from: the run's own, or a fetched copy of a remote one."""
        if not is_url(self.where):
            return Path(self.where)
        return fetch_run(self.where, (file,))


def find_runs(arg: str) -> list[Place]:
    """The run directories ARG names: a glob of run directories, an experiment's folder (its
    run directories), or one run directory; local or a URL. A ConfigError when there is none."""
    remote = is_url(arg)
    if remote:
        places = _remote_runs(arg.rstrip("/"))
    elif any(c in arg for c in GLOB_CHARS):
        places = [p for p in sorted(glob.glob(arg)) if Path(p).is_dir()]
    elif (Path(arg) / MANIFEST).is_file():
        places = [arg]
    elif Path(arg).is_dir():
        places = sorted(str(p) for p in Path(arg).iterdir() if p.is_dir())
    else:
        raise ConfigError(f"history: {arg}: no such directory (give an experiment's folder or a glob of run folders)")
    if not places:
        raise ConfigError(f"history: {arg}: matches no run directory")
    return [Place(p, p.rstrip("/").rsplit("/", 1)[-1]) for p in places]


def _remote_runs(url: str) -> list[str]:
    """Run directory URLs under an experiment's URL, or those whose name matches its last part."""
    parent, last = url.rsplit("/", 1)
    try:
        if any(c in last for c in GLOB_CHARS):
            return sorted(u for u in list_runs(parent) if fnmatch(u.rsplit("/", 1)[-1], last))
        try:
            fetch_run(url, (MANIFEST,))  # one run directory itself
            return [url]
        except ConfigError:
            return sorted(list_runs(url))
    except (OSError, ValueError) as exc:  # the store is gone, or refuses
        raise ConfigError(f"history: {url}: cannot be listed ({' '.join(str(exc).split())[:200]})") from None


def read_summary(place: Place) -> list[dict[str, Any]]:
    """summary.parquet's rows (one per cell); a ConfigError when it is missing or unreadable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = place.local(SUMMARY) / SUMMARY
    try:
        # one small file each: ParquetFile without threads reads it in half read_table's time
        return list(pq.ParquetFile(path).read(use_threads=False).to_pylist())
    except (OSError, pa.ArrowInvalid) as exc:
        why = "missing" if not path.is_file() else f"unreadable ({' '.join(str(exc).split())[:120]})"
        raise ConfigError(f"{SUMMARY} {why}") from None


def place_facts(place: Place) -> RunFacts | str:
    """The run's facts, or why they cannot be read (one line)."""
    try:
        local = place.local(MANIFEST)
    except ConfigError as exc:
        return str(exc)
    if not (local / MANIFEST).is_file():
        return f"no {MANIFEST} (not a run directory?)"
    try:
        return run_facts(local, place.name)
    except ConfigError as exc:
        return str(exc).split(": the manifest is damaged: ", 1)[-1].split("; rebuild", 1)[0] or str(exc)


def all_facts(places: list[Place]) -> list[RunFacts | str]:
    """place_facts of every place, in order; remote ones fetched FETCHERS at a time."""
    if not any(is_url(p.where) for p in places):
        return [place_facts(p) for p in places]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(FETCHERS) as pool:
        return list(pool.map(place_facts, places))
