"""The run directory as a place: can it be written, who holds it, is its manifest whole.

One process at a time: `lock_run_dir` takes an exclusive `flock` on `run.lock` inside the
directory. Two resumes of one run would otherwise both send every missing request (each paid
twice) and both write `results.parquet.tmp`. The kernel drops the lock when the process ends,
however it ends (kill -9 included), so a stale lock file is never a problem; the file is kept
(deleting it would let a third process lock a different inode than the second).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from evalrun.errors import ConfigError
from evalrun.run.http.errors import FULL_ERRNOS, StorageError
from evalrun.run.records.secrets import mask_bytes
from evalrun.run.store.journal import JOURNAL, read_journal

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

LOCK = "run.lock"
MANIFEST = "manifest.json"
RESULTS = "results.parquet"
SUMMARY = "summary.parquet"
REBUILT = "rebuilt"  # manifest key: why the manifest was rebuilt from the config and journal

_held: dict[Path, int] = {}  # run directory (resolved) → the open, locked lock file


def lock_run_dir(run_dir: Path | None) -> None:
    """Hold `run_dir` for this process until `holding_run_dirs` exits (or the process does).

    Raises ConfigError (exit 2, before anything is sent) if another process holds it."""
    if run_dir is None or not run_dir.is_dir():
        return  # a new run: locked once created; a missing one is reported by the caller
    key = run_dir.resolve()
    if key in _held:
        return
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"run {run_dir}: cannot create {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f"pid {holder}" if holder.isdigit() else "another process"
        raise ConfigError(
            f"run {run_dir} is in use by {who}; wait for it to end (or stop it) before resuming"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd


@contextlib.contextmanager
def holding_run_dirs() -> Iterator[None]:
    """Releases every run directory locked inside the block (a test runs many runs in one process).

    A write refused for want of space anywhere in the block (the summary, the manifest) ends
    as one StorageError line that says how to resume, and the manifest says why it stopped."""
    before = set(_held)
    try:
        yield
    except OSError as exc:
        mine = [k for k in _held if k not in before]
        if exc.errno not in FULL_ERRNOS or not mine:
            raise
        why = f"cannot write {exc.filename or mine[0]}: {exc.strerror}"
        raise StorageError(mark_stopped(mine[0], why)) from None
    finally:
        for key in [k for k in _held if k not in before]:
            fd = _held.pop(key)
            os.close(fd)  # closing the only descriptor drops the flock


def check_run_dir(run_dir: Path, given_by: str) -> None:
    """Refuse (exit 2, nothing sent) a run directory that is a file, lies under a file, or
    cannot be written. `given_by` says where the path came from: --resume, --run-dir, or the
    config's `file:line` of reports_dir."""
    label = f"{given_by} {run_dir}" if given_by.startswith("--") else f"{given_by}: reports_dir"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{label}: {run_dir} is a file, not a folder; name a folder for the run")
    under = nearest_existing(run_dir)
    if not under.is_dir():
        raise ConfigError(f"{label}: {run_dir} cannot be created: {under} is a file, not a folder")
    why = unwritable(run_dir)
    if why is not None:
        raise ConfigError(f"{label}: {run_dir} cannot be written: {why}")


def nearest_existing(path: Path) -> Path:
    """`path`, or the closest of its parents that exists."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def unwritable(folder: Path) -> str | None:
    """Why `folder` (made when missing) cannot be written: None when it can."""
    probe = nearest_existing(folder)
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    # try it rather than ask os.access: root passes access() even where the kernel refuses
    # (/proc, a read-only mount); the probe folder is removed at once
    trial = probe / f".evalrun-probe-{os.getpid()}"
    try:
        trial.mkdir()
        trial.rmdir()
    except OSError as exc:
        return f"making a folder in {probe} fails ({exc.strerror})"
    return None


def manifest_if_any(run_dir: Path) -> dict[str, Any]:
    """The manifest of a run directory for a reader that can do without one: {} when there is
    none, a ConfigError in one line when it is damaged."""
    path = run_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = orjson.loads(path.read_bytes())
        problem = manifest_problem(manifest)
    except orjson.JSONDecodeError as exc:
        problem = f"not valid JSON ({exc})"
    if problem:
        raise ConfigError(
            f"{path}: the manifest is damaged: {problem}; rebuild it from the run's config and journal with: "
            f"evalrun run CONFIG --resume {run_dir}"
        )
    return manifest  # type: ignore[no-any-return]


def read_manifest(run_dir: Path, config: Path | None = None) -> dict[str, Any]:
    """The run's manifest.json. A damaged one (cut short, not an object, without its run id or
    config) is rebuilt when the config is given — the journal keeps every recorded request —
    and refused with one line otherwise."""
    path = run_dir / MANIFEST
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no {MANIFEST} there; is it a run directory?")
    problem = None
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        problem, manifest = f"not valid JSON ({exc})", None
    except OSError as exc:
        problem, manifest = f"cannot be read ({exc.strerror})", None
    if problem is None:
        problem = manifest_problem(manifest)
    if problem is None:
        return manifest  # type: ignore[no-any-return]
    if config is None:
        raise ConfigError(
            f"{path}: the manifest is damaged: {problem}; rebuild it from the run's config and journal with: "
            f"evalrun run CONFIG --resume {run_dir}"
        )
    logger.warning("%s: the manifest is damaged (%s); rebuilding it from %s and the journal", path, problem, config)
    return {"run_id": _journal_run_id(run_dir) or run_dir.name, "config_path": str(config), REBUILT: problem}


def manifest_problem(manifest: Any) -> str | None:
    """Why a parsed manifest cannot be used (None if it can)."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for key in ("run_id", "config_path"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            return f"{key} is missing"
    if not isinstance(manifest.get("overrides") or [], list):
        return "overrides is not a list"
    if not isinstance(manifest.get("limit"), int | None):
        return "limit is not a number"
    return _shard_problem(manifest.get("shard")) or _merge_fields_problem(manifest)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shard_problem(shard: Any) -> str | None:
    """What is wrong with a manifest's `shard` (absent or null: not a shard)."""
    if shard is None:
        return None
    if not isinstance(shard, dict):
        return f"shard is a JSON {type(shard).__name__}, not an object with index and count"
    for key in ("index", "count"):
        if key not in shard:
            return f"shard.{key} is missing"
        if not _whole(shard[key]):
            return f"shard.{key} is not a whole number (got {shard[key]!r})"
    if not 1 <= shard["index"] <= shard["count"]:
        return f"shard.index {shard['index']} is not from 1 to shard.count {shard['count']}"
    return None


def _merge_fields_problem(manifest: dict[str, Any]) -> str | None:
    """The other fields `merge` reads, when present, of the type it reads them as."""
    grid = manifest.get("grid")
    if grid is not None and not (isinstance(grid, dict) and _whole(grid.get("requests", 0))):
        return "grid.requests is not a whole number"
    columns = manifest.get("data_columns")
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        return "data_columns is not a list of column names"
    for key in ("status", "started_at"):
        if not isinstance(manifest.get(key, ""), str):
            return f"{key} is not a string"
    return None


def _journal_run_id(run_dir: Path) -> str | None:
    for entry in read_journal(run_dir / JOURNAL, report=False):
        rid = entry["rows"][0].get("run_id")
        return rid if isinstance(rid, str) else None
    return None


def grid_changed(manifest: dict[str, Any], fingerprint: str, request_ids: Iterable[str], journal: Path) -> bool:
    """Whether a resume would mix two experiments. A rebuilt manifest has no fingerprint: the
    journal's requests must then all belong to the current grid."""
    if REBUILT not in manifest or manifest.get("grid_fingerprint"):  # rebuilt once, then fingerprinted
        return bool(manifest.get("grid_fingerprint") != fingerprint)
    ids = set(request_ids)
    return any(e["id"] not in ids for e in read_journal(journal, report=False))


def write_json(path: Path, obj: Any) -> None:
    """Atomic (a reader never sees half a manifest), with the run's keys masked."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(mask_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str)))
    os.replace(tmp, path)


def results_unwritable(run_dir: Path, exc: OSError) -> StorageError:
    """results.parquet could not be written (disk full, or gone): one line, and the manifest
    says how to go on."""
    return StorageError(mark_stopped(run_dir, f"cannot write {run_dir / RESULTS}: {exc.strerror or exc}"))


def mark_stopped(run_dir: Path, why: str) -> str:
    """Record in the manifest that the run stopped because its directory could not be written,
    and how to go on; returns the one line to print (which says if even that failed)."""
    line = f"{why}; the journal keeps every answer recorded: once there is space, evalrun run --resume {run_dir}"
    path = run_dir / MANIFEST
    try:
        manifest = orjson.loads(path.read_bytes())
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
        manifest.update(status="stopped", stop_reason=why, resume=f"evalrun run --resume {run_dir}")
        write_json(path, manifest)
    except (OSError, ValueError) as exc:
        Path(str(path) + ".tmp").unlink(missing_ok=True)
        line += f" ({MANIFEST} could not be updated either: {getattr(exc, 'strerror', None) or exc})"
    return line


def mark_unpublished(run_dir: Path, url: str, why: str) -> str:
    """A finished run that its object store did not take: the manifest says `unpublished`;
    returns the one line that says where the answers are, where they go, and how to send them."""
    resume = f"evalrun run --resume {url}"
    line = (
        f"could not publish the run to {url} ({why}); every answer is kept on this machine in {run_dir}: "
        f"once {url.split('://', 1)[0]}:// answers again, publish it with: {resume}"
    )
    try:
        manifest = orjson.loads((run_dir / MANIFEST).read_bytes())
        manifest.update(status="unpublished", publish_error=why, resume=resume)
        write_json(run_dir / MANIFEST, manifest)
    except (OSError, ValueError, AttributeError) as exc:
        line += f" ({MANIFEST} could not be updated: {getattr(exc, 'strerror', None) or exc})"
    return line


def require_finished(run_dir: Path) -> dict[str, Any]:
    """The manifest of a finished run directory, whose results.parquet is readable; a
    ConfigError naming what is missing or damaged (and how to rebuild it) otherwise."""
    if not (run_dir / RESULTS).is_file() or not (run_dir / MANIFEST).is_file():
        raise ConfigError(f"{run_dir}: not a finished run (needs {RESULTS} and {MANIFEST})")
    manifest = manifest_if_any(run_dir)
    results_file(run_dir)
    return manifest


def results_file(run_dir: Path) -> Path:
    """run_dir/results.parquet, checked readable: a ConfigError naming the file and the command
    that rebuilds it from the journal otherwise (summary, report, cost and score read it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = run_dir / RESULTS
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {RESULTS} there; is it a run directory?")
    try:
        names = set(pq.read_schema(path).names)  # the footer: a cut or overwritten file fails here
        problem = None if {"request_id", "status"} <= names else "not evalrun's results (no request_id/status)"
    except (pa.ArrowException, OSError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if problem:
        rebuild = f"evalrun run --resume {run_dir}" if (run_dir / JOURNAL).is_file() else "(no journal.jsonl beside it)"
        raise ConfigError(f"{path}: not a readable Parquet file ({problem}); rebuild it from the journal: {rebuild}")
    return path


def request_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per request: its first choice's row, or its error row (usage and cost sit there,
    so sums over these rows count each request once when n > 1)."""
    return frame[frame["choice_index"].isna() | (frame["choice_index"] == 0)]


def latest_completed(folder: Path, exclude: Path | None = None) -> Path | None:
    """The run under `folder` that completed last (by finished_at); a damaged one is none."""
    finished = {}
    for d in folder.glob("*"):
        try:
            m = manifest_if_any(d)
        except ConfigError:
            continue
        if d != exclude and m.get("status") == "completed" and not m.get("shard"):
            finished[d] = str(m.get("finished_at") or "")
    return max(finished, key=lambda d: finished[d]) if finished else None
