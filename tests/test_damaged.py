"""Damaged run directories: garbage in the journal, a cut or foreign manifest, a corrupt
results.parquet, a row the schema cannot take. Each is found by `evalrun` itself, said in one
line, and — where the journal allows — repaired by `evalrun run --resume DIR`, which rebuilds
results.parquet from the journal and sends nothing that already has a row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import base_config, read_results, write_config

from evalrun.run.store.framing import decode

U64 = 2**64 - 1


def _finished_run(tmp_path: Path, dataset: Path, scripted: Any, cli: Any) -> tuple[Any, Path, Path]:
    srv = scripted()
    config = write_config(tmp_path, base_config(tmp_path, dataset, srv.base_url))
    r = cli("run", config, "--no-progress")
    assert r.code == 0, r.err
    assert len(srv.requests) == 5
    return srv, config, r.run_dir


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("evalrun: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------- the journal

GARBAGE = [
    b'{"foo": 1}',  # an object that is not an entry
    b"[1, 2, 3]",  # an array
    b"null",
    b'{"id": "x", "status": "ok", "error_type": null, "rows": "not a list"}',
    b'{"id": "y", "status": "maybe", "error_type": null, "rows": [{}]}',
    b'{"id": "z", "status": "ok", "error_type": null, "rows": [1, 2]}',
    b"this is not json",
]


def test_garbage_journal_lines_are_skipped_and_named_on_resume(tmp_path, dataset, scripted, cli) -> None:
    srv, _config, run_dir = _finished_run(tmp_path, dataset, scripted, cli)
    journal = run_dir / "journal.jsonl"
    journal.write_bytes(journal.read_bytes() + b"\n".join(GARBAGE) + b"\n")
    r = cli("run", "--resume", run_dir, "--no-progress")
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    assert len(srv.requests) == 5  # every request has a row: nothing sent again
    assert r.err.count(f"skipped {len(GARBAGE)} line(s) that are not entries") == 1  # said once, not per pass
    for n in range(6, 11):  # the first five bad lines are named by number, then a count
        assert f"line {n}:" in r.err
    assert "(and 2 more)" in r.err
    df = read_results(run_dir)
    assert len(df) == 5 and set(df.status) == {"ok"}


def test_a_row_the_schema_cannot_take_becomes_an_error_row_and_the_rest_is_written(
    tmp_path, dataset, scripted, cli
) -> None:
    """The writer's own defence, for rows that did not come through parse.py (an older evalrun,
    a hand-edited journal): q2's latest entry carries values no int64/string column takes."""
    _srv, _config, run_dir = _finished_run(tmp_path, dataset, scripted, cli)
    journal = run_dir / "journal.jsonl"
    entries = [decode(line) for line in journal.read_bytes().splitlines()]
    bad = next(e for e in entries if e["rows"][0]["row_id"] == "q2")
    bad["rows"][0].update(prompt_tokens=U64, finish_reason=7)
    journal.write_bytes(journal.read_bytes() + orjson.dumps(bad) + b"\n")
    r = cli("run", "--resume", run_dir, "--no-progress")
    assert "Traceback" not in r.err
    df = read_results(run_dir).set_index("row_id")
    assert len(df) == 5
    row = df.loc["q2"]
    assert row.status == "error" and row.error_type == "malformed_response"
    assert "prompt_tokens" in row.error_message and "finish_reason" in row.error_message
    assert row.content == "42"  # what the schema takes of that row is kept
    assert set(df.drop("q2").status) == {"ok"} and df.drop("q2").error_type.isna().all()


# ---------------------------------------------------------------------------- the manifest

DAMAGED_MANIFESTS = [
    pytest.param(lambda b: b[: len(b) // 2], id="cut-in-half"),
    pytest.param(lambda b: b"", id="empty"),
    pytest.param(lambda b: b"[1, 2]", id="an-array"),
    pytest.param(lambda b: b'{"status": "completed"}', id="no-run-id"),
    # whole JSON with the run id and config, but a key of the wrong type: the typed record says so
    pytest.param(lambda b: orjson.dumps({**orjson.loads(b), "counts": "many"}), id="counts-a-string"),
    pytest.param(lambda b: orjson.dumps({**orjson.loads(b), "status": "exploded"}), id="unknown-status"),
    pytest.param(lambda b: orjson.dumps({**orjson.loads(b), "cells": ["a", "b"]}), id="cells-not-records"),
]


@pytest.mark.parametrize("damage", DAMAGED_MANIFESTS)
def test_a_damaged_manifest_is_refused_in_one_line_or_rebuilt_from_the_config(
    tmp_path, dataset, scripted, cli, damage
) -> None:
    srv, config, run_dir = _finished_run(tmp_path, dataset, scripted, cli)
    manifest = run_dir / "manifest.json"
    manifest.write_bytes(damage(manifest.read_bytes()))

    r = cli("run", "--resume", run_dir, "--no-progress")
    assert r.code == 2
    line = _one_error_line(r.err)
    assert str(manifest) in line and "damaged" in line and f"evalrun run CONFIG --resume {run_dir}" in line
    for args in (("report", run_dir), ("score", run_dir), ("cost", run_dir), ("compare", run_dir, run_dir)):
        r = cli(*args)  # the readers of the manifest say the same, in one line
        assert r.code == 2, (args, r.err)
        assert "damaged" in _one_error_line(r.err)

    r = cli("run", config, "--resume", run_dir, "--no-progress")
    assert r.code == 0, r.err
    assert "rebuilding it from" in r.err
    assert len(srv.requests) == 5  # rebuilt, not re-run
    rebuilt = orjson.loads(manifest.read_bytes())
    assert rebuilt["status"] == "completed" and rebuilt["run_id"] == run_dir.name
    assert rebuilt["counts"]["recorded"] == 5
    assert cli("summary", run_dir).code == 0
    r = cli("run", "--resume", run_dir, "--no-progress")  # the rebuilt manifest is a manifest again
    assert r.code == 0 and len(srv.requests) == 5, r.err


def test_a_rebuilt_manifest_refuses_a_config_of_another_grid(tmp_path, dataset, scripted, cli) -> None:
    srv, _config, run_dir = _finished_run(tmp_path, dataset, scripted, cli)
    (run_dir / "manifest.json").write_bytes(b"{")
    cfg = base_config(tmp_path, dataset, srv.base_url)
    cfg["prompts"] = {"other": [{"role": "user", "content": "Compute {question}."}]}
    other = write_config(tmp_path, cfg, "other.yaml")
    r = cli("run", other, "--resume", run_dir, "--no-progress")
    assert r.code == 2 and "grid changed" in _one_error_line(r.err)
    assert len(srv.requests) == 5


# ---------------------------------------------------------------------------- results.parquet

CORRUPT = [
    pytest.param(lambda b: b[: len(b) - 100], id="cut-short"),
    pytest.param(lambda b: b"garbage" * 100, id="garbage"),
    pytest.param(lambda b: b"", id="empty"),
]


@pytest.mark.parametrize("damage", CORRUPT)
def test_a_corrupt_results_file_names_itself_and_the_rebuild(tmp_path, dataset, scripted, cli, damage) -> None:
    srv, _config, run_dir = _finished_run(tmp_path, dataset, scripted, cli)
    results = run_dir / "results.parquet"
    results.write_bytes(damage(results.read_bytes()))
    for args in (("summary", run_dir), ("report", run_dir), ("cost", run_dir), ("score", run_dir)):
        r = cli(*args)
        assert r.code == 2, (args, r.err)
        line = _one_error_line(r.err)
        assert str(results) in line and f"evalrun run --resume {run_dir}" in line, line

    r = cli("run", "--resume", run_dir, "--no-progress")  # the command the message names
    assert r.code == 0, r.err
    assert len(srv.requests) == 5
    assert len(read_results(run_dir)) == 5
    for args in (("summary", run_dir), ("report", run_dir), ("cost", run_dir)):
        assert cli(*args).code == 0, args


def test_a_full_disk_anywhere_in_the_run_is_one_line_and_the_manifest_says_why(tmp_path) -> None:
    """Past the journal and results.parquet (which say so themselves), a refused write — the
    summary, the manifest — surfaces from the run as a StorageError, not a traceback."""
    import errno

    from evalrun.run.http.errors import StorageError
    from evalrun.run.store.rundir import holding_run_dirs, lock_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_bytes(b'{"run_id": "r", "config_path": "c.yaml", "status": "running"}')
    with pytest.raises(StorageError) as caught, holding_run_dirs():
        lock_run_dir(run_dir)
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "summary.parquet"))
    assert "summary.parquet: No space left on device" in str(caught.value)
    assert f"evalrun run --resume {run_dir}" in str(caught.value)
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "stopped" and "No space left" in manifest["stop_reason"]
    with pytest.raises(OSError), holding_run_dirs():  # any other OSError is not dressed up
        lock_run_dir(run_dir)
        raise OSError(errno.EACCES, "Permission denied")
