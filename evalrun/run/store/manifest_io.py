"""The one reader and the one writer of manifest.json (the record is `manifest.Manifest`).

Every command reads a run's manifest through `manifest_if_any` / `read_manifest` /
`read_manifest_file`; the single-process run, the --workers parent, its Ray tasks (each a
single-process run of one shard) and `merge` change it only through the functions below, which
write it whole and atomically. tests/test_layout.py checks that nothing else writes it.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from evalrun.errors import ConfigError
from evalrun.run.records.secrets import mask_bytes
from evalrun.run.store.journal import JOURNAL, read_journal
from evalrun.run.store.manifest import MANIFEST, MANIFEST_VERSION, Counts, Manifest, RunStatus, WorkersInfo

logger = logging.getLogger(__name__)


class ManifestError(ValueError):
    """manifest.json cannot be read as a manifest; the message names the file."""


def now_iso() -> str:
    """UTC, ISO 8601, milliseconds: runs started in the same second still sort."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- reading ---------------------------------------------------------------------------------


def _parse(path: Path) -> tuple[Manifest | None, str | None]:
    """(the record, None) or (None, why it cannot be used)."""
    try:
        raw = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc})"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"
    problem = manifest_problem(raw)
    if problem is not None:
        return None, problem
    try:
        return Manifest.model_validate(raw), None
    except ValidationError as exc:
        return None, _first_error(exc)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


def _damaged(run_dir: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"{run_dir / MANIFEST}: the manifest is damaged: {problem}; rebuild it from the run's config and journal "
        f"with: evalrun run CONFIG --resume {run_dir}"
    )


def manifest_if_any(run_dir: Path) -> Manifest:
    """The manifest of a run directory for a reader that can do without one: an empty record
    when there is none, a ConfigError in one line when it is damaged."""
    if not (run_dir / MANIFEST).is_file():
        return Manifest()
    manifest, problem = _parse(run_dir / MANIFEST)
    if manifest is None:
        raise _damaged(run_dir, str(problem))
    return manifest


def read_manifest(run_dir: Path, config: Path | None = None) -> Manifest:
    """The run's manifest.json. A damaged one (cut short, not an object, without its run id or
    config) is rebuilt when the config is given — the journal keeps every recorded request —
    and refused with one line otherwise."""
    path = run_dir / MANIFEST
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no {MANIFEST} there; is it a run directory?")
    manifest, problem = _parse(path)
    if manifest is not None:
        return manifest
    if config is None:
        raise _damaged(run_dir, str(problem))
    logger.warning("%s: the manifest is damaged (%s); rebuilding it from %s and the journal", path, problem, config)
    return Manifest(run_id=_journal_run_id(run_dir) or run_dir.name, config_path=str(config), rebuilt=problem)


def read_manifest_file(path: Path) -> Manifest:
    """One manifest.json checked against the record only (not for the keys a resume needs)."""
    try:
        return Manifest.model_validate(orjson.loads(path.read_bytes()))
    except (OSError, orjson.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()
        detail = " ".join(first[:3]) if first else type(exc).__name__
        raise ManifestError(f"{path}: not a valid manifest: {detail}") from None


def _journal_run_id(run_dir: Path) -> str | None:
    for entry in read_journal(run_dir / JOURNAL, report=False):
        rid = entry["rows"][0].get("run_id")
        return rid if isinstance(rid, str) else None
    return None


def manifest_problem(manifest: Any) -> str | None:
    """Why a parsed manifest cannot be used (None if it can). These checks name what a resume
    and a merge need in words; the record's own validation catches the rest."""
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


# -- writing ---------------------------------------------------------------------------------


def write_json(path: Path, obj: Any) -> None:
    """Atomic (a reader never sees half a file), with the run's keys masked."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(mask_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str)))
    os.replace(tmp, path)


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    """run_dir/manifest.json ← the record, whole and atomically; the one place it is written."""
    manifest.version = MANIFEST_VERSION
    write_json(run_dir / MANIFEST, manifest.to_json_dict())


def start_run(run_dir: Path, manifest: Manifest, resumed: dict[str, Any] | None) -> None:
    """A (resumed) run starts: status running; `resumed` is this resume's note, if one."""
    if "started_at" not in manifest.model_fields_set:
        manifest.started_at = now_iso()
    manifest.drop("publish_error")  # a resume of an unpublished run publishes it again
    manifest.status = RunStatus.RUNNING
    # assigned, not appended: a default list is not written (see Manifest.to_json_dict)
    manifest.resumes = [*manifest.resumes, resumed] if resumed is not None else list(manifest.resumes)
    write_manifest(run_dir, manifest)


def finish_run(run_dir: Path, manifest: Manifest, status: RunStatus, counts: Counts, messages: list[str]) -> None:
    """A run (or a merge) ends: its status, when, what it said, and its counts."""
    manifest.status = status
    manifest.finished_at = now_iso()
    manifest.messages = messages
    manifest.counts = counts
    write_manifest(run_dir, manifest)


def start_workers(run_dir: Path, fields: Manifest, workers: WorkersInfo) -> None:
    """The --workers parent's manifest, written before any shard starts (so a parent killed
    mid-run can be resumed); what an earlier start wrote is kept."""
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = manifest_if_any(run_dir)  # damaged: one line
    for key in fields.model_fields_set:
        setattr(manifest, key, getattr(fields, key))
    manifest.status, manifest.workers = RunStatus.RUNNING, workers
    if "started_at" not in manifest.model_fields_set:
        manifest.started_at = now_iso()
    write_manifest(run_dir, manifest)


def record_scorers(run_dir: Path, manifest: Manifest, scorers: list[dict[str, Any]]) -> None:
    """`evalrun score`: the scorers it applied, over those the run was configured with."""
    manifest.scorers = scorers
    write_manifest(run_dir, manifest)


def mark_stopped(run_dir: Path, why: str) -> str:
    """Record in the manifest that the run stopped because its directory could not be written,
    and how to go on; returns the one line to print (which says if even that failed)."""
    line = f"{why}; the journal keeps every answer recorded: once there is space, evalrun run --resume {run_dir}"
    try:
        _mark(run_dir, RunStatus.STOPPED, stop_reason=why, resume=f"evalrun run --resume {run_dir}")
    except (OSError, ValueError) as exc:
        Path(str(run_dir / MANIFEST) + ".tmp").unlink(missing_ok=True)
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
        _mark(run_dir, RunStatus.UNPUBLISHED, publish_error=why, resume=resume)
    except (OSError, ValueError) as exc:
        line += f" ({MANIFEST} could not be updated: {getattr(exc, 'strerror', None) or exc})"
    return line


def _mark(run_dir: Path, status: RunStatus, **notes: str) -> None:
    """The manifest on disk, read back as it is, with a new status and its notes."""
    manifest = read_manifest_file(run_dir / MANIFEST)
    manifest.status = status
    for key, value in notes.items():
        setattr(manifest, key, value)
    write_manifest(run_dir, manifest)
