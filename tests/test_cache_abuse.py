"""The response cache under abuse: real SQLite files damaged by the test, a real read-only
filesystem and a real full one (tmpfs mounts made by the test). A cache that cannot be used is
refused in one line before anything is sent; one that fails mid-run turns itself off, once, and
the journal keeps every answer. Nothing wrong is ever served from it."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import base_config, read_results, write_config

PAGE = 4096  # SQLite's default page size: the pages the damage below overwrites


def many_rows(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"data{n}.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"q{i}", "question": f"{i}+{i}"}) + b"\n" for i in range(n)))
    return path


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` for the block; unmounted however the block ends."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        why = exc.stderr.decode().strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {why}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


def fill(where: Path, leave: int) -> Path:
    """Fill the filesystem at `where`, then give back `leave` bytes."""
    filler = where / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"x" * 65536)
                f.flush()
        except OSError:
            pass
    size = filler.stat().st_size
    with filler.open("r+b") as f:
        f.truncate(max(0, size - leave))
    return filler


def cached_run(tmp_path: Path, scripted: Any, cli: Any, folder: Path, rows: int = 5) -> tuple[Any, Path, Path]:
    """A finished run that filled the cache in `folder`: (server, config, cache file)."""
    srv = scripted()
    config = write_config(tmp_path, base_config(tmp_path, many_rows(tmp_path, rows), srv.base_url, cache=str(folder)))
    first = cli("run", config, "--no-progress")
    assert first.code == 0, first.err
    assert len(srv.requests) == rows
    path = folder / "responses.sqlite"
    assert path.is_file() and not Path(f"{path}-wal").exists()  # checkpointed: the damage below is real
    return srv, config, path


def run_dirs(tmp_path: Path) -> set[Path]:
    return set((tmp_path / "reports" / "t").glob("*"))


def one_line(res: Any) -> str:
    assert "Traceback" not in res.err, res.err
    lines = [ln for ln in res.err.splitlines() if ln.startswith("evalrun: error:")]
    assert len(lines) == 1, res.err
    return lines[0]


def refused_everywhere(tmp_path: Path, cli: Any, srv: Any, config: Path, path: Path, *says: str) -> None:
    """validate, plan and run refuse the cache in one line naming it and the ways out; nothing
    is sent, no run directory (and so no manifest left `running`) is made, the file is untouched."""
    before, sent, content = run_dirs(tmp_path), len(srv.requests), path.read_bytes() if path.exists() else None
    for args in (("validate", config), ("plan", config), ("run", config, "--no-progress")):
        res = cli(*args)
        assert res.code == 2, (args, res.err)
        line = one_line(res)
        assert str(path) in line and "--no-cache" in line, line
        for s in says:
            assert s in line, line
    assert len(srv.requests) == sent and run_dirs(tmp_path) == before
    assert (path.read_bytes() if path.exists() else None) == content
    assert cli("validate", config, "--no-cache").code == 0
    assert cli("plan", config, "--no-cache", "--json").code == 0
    res = cli("run", config, "--no-progress", "--no-cache")
    assert res.code == 0, res.err
    assert len(srv.requests) == sent + 5 and not read_results(res.run_dir).cached.any()
    assert (path.read_bytes() if path.exists() else None) == content  # --no-cache leaves it alone


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(path.stat().st_size))


def _bad_page(path: Path) -> None:
    assert path.stat().st_size >= 3 * PAGE
    with path.open("r+b") as f:  # page 2: the responses table's root
        f.seek(PAGE)
        f.write(random.Random(7).randbytes(PAGE))


def _another_shape(path: Path) -> None:
    path.unlink()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, answer TEXT)")


def _not_a_cache(path: Path) -> None:
    path.unlink()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE notes (x)")


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_cut, "is damaged"),
        (_random, "is damaged (file is not a database)"),
        (_bad_page, "is damaged"),
        (_another_shape, "another shape (columns key, answer"),
        (_not_a_cache, "not evalrun's response cache (tables: notes)"),
    ],
)
def test_a_damaged_cache_is_refused_in_one_line_before_anything_is_sent(
    tmp_path: Path, scripted: Any, cli: Any, damage: Any, says: str
) -> None:
    srv, config, path = cached_run(tmp_path, scripted, cli, tmp_path / "cache")
    damage(path)
    refused_everywhere(tmp_path, cli, srv, config, path, says, f"mv {path.parent} ")


def test_a_stored_answer_that_does_not_parse_is_a_miss_and_is_replaced(tmp_path: Path, scripted: Any, cli: Any) -> None:
    srv, config, path = cached_run(tmp_path, scripted, cli, tmp_path / "cache")
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        keys = [k for (k,) in db.execute("SELECT key FROM responses ORDER BY key")]
        for key, junk in zip(keys, [b"not json {", b"[]", b'[{"status": "error", "content": "x"}]'], strict=False):
            db.execute("UPDATE responses SET rows = ? WHERE key = ?", (junk, key))
    plan = cli("plan", config, "--json")
    assert plan.code == 0, plan.err
    assert orjson.loads(plan.out)["cache"]["hits"] == 2
    second = cli("run", config, "--no-progress")
    assert second.code == 0, second.err
    assert len(srv.requests) == 5 + 3  # only the three unreadable answers asked again
    df = read_results(second.run_dir)
    assert (df.status == "ok").all() and df.cached.sum() == 2 and (df.content == "42").all()
    third = cli("run", config, "--no-progress")
    assert third.code == 0 and len(srv.requests) == 8  # the fresh answers replaced the damaged ones
    assert read_results(third.run_dir).cached.all()


def test_a_read_only_cache_folder_is_refused_in_one_line(tmp_path: Path, scripted: Any, cli: Any) -> None:
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        srv, config, path = cached_run(tmp_path, scripted, cli, mnt / "cache")
        read_only(mnt)
        refused_everywhere(tmp_path, cli, srv, config, path, "cannot be written", "Read-only file system")
        # a cache not made yet, under the read-only mount: refused the same way
        fresh = write_config(
            tmp_path, base_config(tmp_path, many_rows(tmp_path, 5), srv.base_url, cache=str(mnt / "new")), "new.yaml"
        )
        refused_everywhere(tmp_path, cli, srv, fresh, mnt / "new" / "responses.sqlite", "Read-only file system")


def test_a_cache_on_a_disk_that_fills_mid_run_is_turned_off_and_every_answer_is_kept(
    tmp_path: Path, scripted: Any, cli: Any
) -> None:
    with tmpfs(tmp_path / "mnt", "2m") as mnt:
        srv, _, path = cached_run(tmp_path, scripted, cli, mnt / "cache")
        config = write_config(
            tmp_path, base_config(tmp_path, many_rows(tmp_path, 60), srv.base_url, cache=str(mnt / "cache")), "big.yaml"
        )
        filler = fill(mnt, leave=96 * 1024)  # room to open the cache and keep a few answers, then full
        res = cli("run", config, "--no-progress")
        assert res.code == 0, res.err
        assert "Traceback" not in res.err and "internal error" not in res.err, res.err
        warnings = [ln for ln in res.err.splitlines() if str(path) in ln]
        assert len(warnings) == 1 and "off for the rest of this run" in warnings[0], res.err
        assert "--no-cache" in warnings[0], warnings[0]
        df = read_results(res.run_dir)
        assert len(df) == 60 and (df.status == "ok").all()  # every request: exactly one row
        assert df.cached.sum() == 5 and len(srv.requests) == 5 + 55
        manifest = orjson.loads((res.run_dir / "manifest.json").read_bytes())
        assert manifest["status"] == "completed" and manifest["counts"]["recorded"] == 60
        filler.unlink()
        with contextlib.closing(sqlite3.connect(path)) as db:
            kept = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        assert 5 < kept < 60  # it kept answers until the disk filled, then stopped trying
        again = cli("run", config, "--no-progress")  # space again: the cache serves what it kept
        assert again.code == 0 and read_results(again.run_dir).cached.sum() == kept


def test_a_damaged_cache_with_resume_and_workers(tmp_path: Path, scripted: Any, cli: Any) -> None:
    """The same refusal on a resume (the stopped run stays as it was) and before --workers starts
    a shard; --no-cache goes on without it in both."""
    srv, config, path = cached_run(tmp_path, scripted, cli, tmp_path / "cache")
    bigger = write_config(
        tmp_path, base_config(tmp_path, many_rows(tmp_path, 9), srv.base_url, cache=str(path.parent)), "big.yaml"
    )
    stopped = cli("run", bigger, "--no-progress", "--max-requests", "2")
    assert stopped.code == 1 and len(srv.requests) == 5 + 2  # 5 from the cache, 2 sent
    _cut(path)
    content = path.read_bytes()
    res = cli("run", "--resume", stopped.run_dir, "--no-progress")
    assert res.code == 2 and str(path) in one_line(res) and len(srv.requests) == 7
    assert orjson.loads((stopped.run_dir / "manifest.json").read_bytes())["status"] == "stopped"
    res = cli("run", "--resume", stopped.run_dir, "--no-progress", "--no-cache")
    assert res.code == 0, res.err
    assert len(srv.requests) == 7 + 2 and len(read_results(stopped.run_dir)) == 9
    before = run_dirs(tmp_path)
    res = cli("run", config, "--workers", "2", "--no-progress")
    assert res.code == 2 and str(path) in one_line(res)
    assert len(srv.requests) == 9 and run_dirs(tmp_path) == before  # no shard started, no run made
    res = cli("run", config, "--workers", "2", "--no-progress", "--no-cache")
    assert res.code == 0, res.err
    assert len(srv.requests) == 9 + 5 and len(read_results(res.run_dir)) == 5
    assert path.read_bytes() == content


def test_a_cache_on_a_disk_already_full_is_refused_in_one_line(tmp_path: Path, scripted: Any, cli: Any) -> None:
    with tmpfs(tmp_path / "mnt", "2m") as mnt:
        srv, config, path = cached_run(tmp_path, scripted, cli, mnt / "cache")
        fill(mnt, leave=0)
        refused_everywhere(tmp_path, cli, srv, config, path, "cannot be written: its disk is full")


def test_a_cache_damaged_by_another_process_mid_run_is_turned_off(tmp_path: Path, scripted: Any, cli: Any) -> None:
    from conftest import Reply

    _, _, path = cached_run(tmp_path, scripted, cli, tmp_path / "cache")
    damaged: list[int] = []

    def damage_then_answer(payload: dict[str, Any]) -> Reply:
        if not damaged:  # while the run is sending, something else overwrites the cache
            _random(path)
            damaged.append(1)
        return Reply()

    other = scripted(default=damage_then_answer)
    cfg = base_config(tmp_path, many_rows(tmp_path, 30), other.base_url, cache=str(path.parent))
    cfg["providers"]["sim"]["max_concurrency"] = 1
    res = cli("run", write_config(tmp_path, cfg, "other.yaml"), "--no-progress")
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    warnings = [ln for ln in res.err.splitlines() if str(path) in ln]
    assert len(warnings) == 1 and "off for the rest of this run" in warnings[0], res.err
    df = read_results(res.run_dir)
    assert len(df) == 30 and (df.status == "ok").all() and len(other.requests) == 30
    assert orjson.loads((res.run_dir / "manifest.json").read_bytes())["status"] == "completed"
