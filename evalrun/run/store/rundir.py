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
from typing import TYPE_CHECKING

from evalrun.errors import ConfigError
from evalrun.run.http.errors import FULL_ERRNOS, StorageError
from evalrun.run.store.journal import JOURNAL, read_journal
from evalrun.run.store.manifest import MANIFEST as MANIFEST
from evalrun.run.store.manifest import Manifest, RunStatus
from evalrun.run.store.manifest_io import manifest_if_any as manifest_if_any
from evalrun.run.store.manifest_io import mark_stopped
from evalrun.run.store.manifest_io import read_manifest as read_manifest
from evalrun.run.store.manifest_io import write_json as write_json

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

LOCK = "run.lock"
RESULTS = "results.parquet"
SUMMARY = "summary.parquet"

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


def grid_changed(manifest: Manifest, fingerprint: str, request_ids: Iterable[str], journal: Path) -> bool:
    """Whether a resume would mix two experiments. A rebuilt manifest has no fingerprint: the
    journal's requests must then all belong to the current grid."""
    if manifest.rebuilt is None or manifest.grid_fingerprint:  # rebuilt once, then fingerprinted
        return manifest.grid_fingerprint != fingerprint
    ids = set(request_ids)
    return any(e["id"] not in ids for e in read_journal(journal, report=False))


def results_unwritable(run_dir: Path, exc: OSError) -> StorageError:
    """results.parquet could not be written (disk full, or gone): one line, and the manifest
    says how to go on."""
    return StorageError(mark_stopped(run_dir, f"cannot write {run_dir / RESULTS}: {exc.strerror or exc}"))


def require_finished(run_dir: Path) -> Manifest:
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
        if d != exclude and m.status is RunStatus.COMPLETED and m.shard is None:
            finished[d] = m.finished_at or ""
    return max(finished, key=lambda d: finished[d]) if finished else None
