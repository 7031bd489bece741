"""The typed Manifest record: old shapes read, unknown keys survive, bad content names the file."""

import json
import re
from pathlib import Path

import pytest

from evalrun.run.manifest import Manifest, ManifestError, RunStatus, read_manifest


def test_old_manifest_without_version_reads(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"status": "completed", "config": {"name": "x"}}))
    m = read_manifest(path)
    assert m.version == 0
    assert m.status is RunStatus.COMPLETED
    assert m.status == "completed"  # str enum: compares equal to the stored string


def test_unknown_key_round_trips(tmp_path: Path) -> None:
    raw = {"status": "stopped", "from_the_future": {"a": [1, 2]}, "stop_reason": "budget"}
    m = Manifest.model_validate(raw)
    assert m.to_json_dict() == raw
    assert json.dumps(m.to_json_dict()) == json.dumps(raw)


def test_bad_manifest_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"status": "completed", "cells": "not a list"}))
    with pytest.raises(ManifestError, match=re.escape(str(path))):
        read_manifest(path)


def test_unknown_status_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"status": "exploded"}))
    with pytest.raises(ManifestError, match=r"manifest\.json.*status"):
        read_manifest(path)


def test_a_dropped_key_is_not_written_and_a_set_one_is() -> None:
    m = Manifest.model_validate({"run_id": "r", "publish_error": "x", "from_the_future": 1})
    m.pace_held_by = ["sim/m: 600 rpm"]
    m.status = RunStatus.STOPPED
    for key in ("pace_held_by", "publish_error", "from_the_future"):
        m.drop(key)
    assert m.to_json_dict() == {"run_id": "r", "status": "stopped"}
    assert m.pace_held_by is None and m.publish_error is None


def test_the_store_reader_returns_the_record(tmp_path: Path) -> None:
    """`evalrun.run.store.read_manifest(run_dir)` (the resume's reader) gives the typed record too."""
    from evalrun.run.store import read_manifest as read_run_manifest

    raw = {"run_id": "r", "config_path": "/x.yaml", "status": "completed", "counts": {"recorded": 3}}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    m = read_run_manifest(tmp_path)
    assert isinstance(m, Manifest) and m.status is RunStatus.COMPLETED and m.counts and m.counts.recorded == 3
    assert m.to_json_dict() == raw
