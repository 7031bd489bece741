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
