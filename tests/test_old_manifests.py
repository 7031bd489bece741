"""Manifests written by an older evalrun still read, by every command; new ones keep the old keys.

tests/old_manifests/ holds manifest.json files written by evalrun at commit 7d830a5 (before the
typed record: no `version`), for a whole run and the two shards of a --shard run of
configs/quickstart.yaml with `dataset.limit=4` on the simulator, and one written by the first
commit, 8e8c49c (no `data_columns`, no `prices`, cell ids of another scheme). Each test runs the same
experiment with today's code (the same request and cell ids), puts the old manifest in place of
the new one, and drives the commands over it through the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from evalrun.run.manifest import MANIFEST_VERSION, RunStatus, read_manifest

REPO = Path(__file__).resolve().parent.parent
OLD = Path(__file__).resolve().parent / "old_manifests"
CONFIG = REPO / "configs" / "quickstart.yaml"
SETS = ("--set", "dataset.limit=4", "--set", "providers.simulator.simulator.latency_scale=0.01")


def _old(name: str) -> dict[str, Any]:
    """One of the old manifests: `whole`, `shard1of2`, `shard2of2` (7d830a5), or `first` (8e8c49c)."""
    path = OLD / ("8e8c49c-whole.json" if name == "first" else f"7d830a5-{name}.json")
    return orjson.loads(path.read_bytes())  # type: ignore[no-any-return]


def _run_with_old_manifest(cli: Any, run_dir: Path, old: str, *shard: str, **keys: Any) -> dict[str, Any]:
    """A run of the experiment by today's code into `run_dir`, its manifest replaced by the old one
    (pointed at this config and directory)."""
    r = cli("run", CONFIG, *SETS, *shard, "--run-dir", run_dir, "--no-progress")
    assert r.code == 0, r.err
    manifest = {**_old(old), "config_path": str(CONFIG), "run_id": run_dir.name, **keys}
    (run_dir / "manifest.json").write_bytes(orjson.dumps(manifest))
    return manifest


def _on_disk(run_dir: Path) -> dict[str, Any]:
    return orjson.loads((run_dir / "manifest.json").read_bytes())  # type: ignore[no-any-return]


def test_the_old_manifests_are_old() -> None:
    """The fixtures are what they claim: no `version`, and the typed reader takes them as version 0."""
    for name in ("whole", "shard1of2", "shard2of2"):
        assert "version" not in _old(name)
        m = read_manifest(OLD / f"7d830a5-{name}.json")
        assert m.version == 0 and m.status is RunStatus.COMPLETED
    whole = read_manifest(OLD / "7d830a5-whole.json")
    assert whole.counts is not None and whole.counts.recorded == 24 and whole.grid and whole.grid.requests == 24
    assert whole.shard is None and len(whole.cells) == 6 and whole.cells[0].params["seed"] == 7
    assert read_manifest(OLD / "7d830a5-shard1of2.json").shard is not None


def test_every_reading_command_reads_an_old_manifest(tmp_path: Path, cli: Any) -> None:
    base = tmp_path / "base"
    _run_with_old_manifest(cli, base, "whole", started_at="2026-12-01T00:00:00Z")
    new = tmp_path / "new"
    old = _run_with_old_manifest(cli, new, "whole")

    r = cli("summary", new)
    assert r.code == 0 and "gemini-3-pro-preview" in r.out, r.err
    r = cli("cost", new, "--format", "json")
    assert r.code == 0 and "gemini-3-pro-preview" in r.out, r.err
    r = cli("report", new)
    assert r.code == 0, r.err
    page = (new / "report.html").read_text()
    assert "quickstart" in page and "new" in page and "completed" in page
    r = cli("compare", base, new)
    assert r.code == 0, r.err
    r = cli("compare", new, "--baseline", "latest")  # reads every sibling's manifest
    assert r.code == 0, r.err
    assert _on_disk(new) == old  # reading changed nothing

    r = cli("score", new)  # writes the scorers it applied: through the one writer
    assert r.code == 0, r.err
    after = _on_disk(new)
    assert after["version"] == MANIFEST_VERSION and after["scorers"][0]["name"] == "correct"
    assert {k: v for k, v in after.items() if k not in ("version", "scorers")} == old  # nothing else moved


def test_an_old_run_resumes_and_old_shards_merge(tmp_path: Path, cli: Any) -> None:
    run_dir = tmp_path / "whole"
    old = _run_with_old_manifest(cli, run_dir, "whole")
    r = cli("run", "--resume", run_dir, "--no-progress")
    assert r.code == 0 and "nothing to resume" in r.err, r.err
    after = _on_disk(run_dir)
    assert after["version"] == MANIFEST_VERSION and after["status"] == "completed"
    assert set(old) <= set(after) and after["resumes"][0]["already_done"] == 24
    assert after["counts"]["recorded"] == 24 and after["grid_fingerprint"] == old["grid_fingerprint"]

    for i in (1, 2):
        _run_with_old_manifest(cli, tmp_path / f"s{i}", f"shard{i}of2", "--shard", f"{i}/2")
    r = cli("merge", tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "merged")
    assert r.code == 0, r.err
    merged = _on_disk(tmp_path / "merged")
    assert merged["status"] == "completed" and merged["counts"]["recorded"] == 24 and "shard" not in merged
    assert merged["version"] == MANIFEST_VERSION and set(_old("shard1of2")) - {"shard"} <= set(merged)
    assert [s["counts"]["recorded"] for s in merged["shards"]] == [
        _old("shard1of2")["counts"]["recorded"],
        _old("shard2of2")["counts"]["recorded"],
    ]
    assert cli("summary", tmp_path / "merged").code == 0


def _shape(value: Any) -> Any:
    """The key structure of a manifest (for the dicts every run writes alike), not its values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [_shape(value[0])]
    return None


def test_a_new_manifest_has_the_old_keys_so_an_older_evalrun_reads_it(tmp_path: Path, cli: Any) -> None:
    r = cli("run", CONFIG, *SETS, "--run-dir", tmp_path / "run", "--no-progress")
    assert r.code == 0, r.err
    new, old = _on_disk(tmp_path / "run"), _old("whole")
    # keys are only ever added (an older reader ignores them), never renamed or dropped
    assert set(new) == set(old) | {"version", "dataset_hash"}
    for key in ("cells", "grid", "counts"):  # what older readers index into; prices and providers
        assert _shape(new[key]) == _shape(old[key]), key  # follow their own config models
    assert new["status"] == "completed" and isinstance(new["version"], int)


def test_a_manifest_of_the_first_version_reads_and_a_resume_of_it_is_refused_in_one_line(
    tmp_path: Path, cli: Any
) -> None:
    first = read_manifest(OLD / "8e8c49c-whole.json")
    assert first.version == 0 and first.prices is None and first.data_columns is None
    run_dir = tmp_path / "first"
    old = _run_with_old_manifest(cli, run_dir, "first")
    for args in (("summary", run_dir), ("cost", run_dir), ("report", run_dir)):
        r = cli(*args)
        assert r.code == 0, (args, r.err)
    assert _on_disk(run_dir) == old
    # its cells had ids of another scheme: the grid is not today's, and a resume says so
    r = cli("run", "--resume", run_dir, "--no-progress")
    assert r.code == 2 and "Traceback" not in r.err and "grid changed" in r.err, r.err
