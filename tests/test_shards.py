"""Sharded runs: --shard I/N, evalrun merge, --workers K (local 1/K share), resume per shard and
of a --workers run after kill -9. Over real HTTP on 127.0.0.1; shard processes are real
processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from conftest import Reply, base_config, read_results, write_config
from many import Gateway, children, evalrun_proc, finish, gateway, journal_lines, wait_for

from evalrun.analysis.baseline import latest_baseline
from evalrun.config.load import load_experiment
from evalrun.errors import ConfigError
from evalrun.run.grid.grid import build_plan
from evalrun.run.manifest import MANIFEST_VERSION
from evalrun.run.scale.shards import Shard, parse_shard
from evalrun.run.store.framing import MARK
from evalrun.run.store.journal import JOURNAL


def grid_ids(config: Path) -> set[str]:
    """The request ids a single-process run of `config` sends."""
    return {s.request_id for s in build_plan(load_experiment(config, [])).specs()}


def rows(run_dir: Path) -> pd.DataFrame:
    return read_results(run_dir)


def many_rows(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"data{n}.jsonl"
    path.write_bytes(
        b"".join(orjson.dumps({"id": f"q{i}", "question": f"{i}+{i}", "answer": 2 * i}) + b"\n" for i in range(n))
    )
    return path


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("1/3", Shard(1, 3)),
        ("3/3", Shard(3, 3)),
        (" 2 / 5 ", Shard(2, 5)),
        ("1/1", Shard(1, 1)),
        ("4/3", None),
        ("0/3", None),
        ("1/0", None),
        ("x", None),
        ("1/3/3", None),
        ("-1/3", None),
        ("", None),
    ],
)
def test_parse_shard(text: str, ok: Shard | None) -> None:
    if ok is None:
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(text)
    else:
        assert parse_shard(text) == ok


def test_shards_partition_the_grid(tmp_path: Path, dataset: Path) -> None:
    config = write_config(tmp_path, base_config(tmp_path, many_rows(tmp_path, 50), repeats=3))
    ids = grid_ids(config)
    for n in (1, 2, 3, 7):
        parts = [{i for i in ids if Shard(k, n).holds(i)} for k in range(1, n + 1)]
        assert set().union(*parts) == ids and sum(map(len, parts)) == len(ids)
        if n == 3:
            assert all(len(p) > len(ids) / 6 for p in parts)  # hashed ids spread evenly enough


@pytest.mark.parametrize(
    "args",
    [
        ["--shard", "4/3"],
        ["--shard", "0/3"],
        ["--shard", "a/b"],
        ["--shard", "1/2", "--workers", "2"],
        ["--workers", "0"],
        ["--engine", "ray"],
    ],
)
def test_bad_shard_options_send_nothing(
    tmp_path: Path, dataset: Path, scripted: Any, cli: Any, args: list[str]
) -> None:
    server = scripted()
    config = write_config(tmp_path, base_config(tmp_path, dataset, server.base_url))
    res = cli("run", config, *args, "--no-progress")
    assert res.code == 2
    assert len(res.err.strip().splitlines()) == 1 and (
        "--shard" in res.err or "--workers" in res.err or "--engine" in res.err
    )
    assert server.requests == [] and not (tmp_path / "reports").exists()


def test_shards_by_hand_merge_to_a_single_runs_rows(tmp_path: Path, cli: Any) -> None:
    cfg = base_config(
        tmp_path,
        many_rows(tmp_path, 40),
        repeats=2,
        scorers=[{"name": "exact", "type": "exact_match", "expected": "{answer}"}],
    )
    config = write_config(tmp_path, cfg)
    single = cli("run", config, "--no-progress")
    assert single.code == 0, single.err
    shard_dirs = []
    for i in (1, 2, 3):
        res = cli("run", config, "--shard", f"{i}/3", "--no-progress")
        assert res.code == 0, res.err
        assert len(rows(res.run_dir)) == sum(Shard(i, 3).holds(r) for r in grid_ids(config))
        shard_dirs.append(res.run_dir)
    out = tmp_path / "merged"
    res = cli("merge", *shard_dirs, "--out", out)
    assert res.code == 0, res.err
    merged, ref = rows(out), rows(single.run_dir)
    assert sorted(merged.request_id) == sorted(ref.request_id) == sorted(grid_ids(config))  # one row each
    cols = ["request_id", "cell_id", "row_id", "repeat", "content", "status", "score_exact", "pass_exact"]
    pd.testing.assert_frame_equal(
        merged[cols].sort_values("request_id").reset_index(drop=True),
        ref[cols].sort_values("request_id").reset_index(drop=True),
    )
    assert set(merged.run_id) == {"merged"}
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert [s["shard"] for s in manifest["shards"]] == ["1/3", "2/3", "3/3"]
    assert manifest["status"] == "completed" and manifest["counts"]["recorded"] == 80
    assert (out / "summary.parquet").is_file()
    assert cli("summary", out).code == 0
    # the merged journal is written in the run's own compact framing, not as plain JSON
    assert all(line.startswith(MARK) for line in (out / JOURNAL).read_bytes().splitlines())
    # a shard is not a whole run: --baseline latest passes over the (later) shards to the single run
    later = cli("run", config, "--no-progress").run_dir
    assert latest_baseline(later) == single.run_dir


def test_merge_refuses_an_incomplete_or_mixed_set(tmp_path: Path, cli: Any) -> None:
    config = write_config(tmp_path, base_config(tmp_path, many_rows(tmp_path, 12)))
    other = write_config(tmp_path, base_config(tmp_path, many_rows(tmp_path, 13)), "other.yaml")
    a = [cli("run", config, "--shard", f"{i}/2", "--no-progress").run_dir for i in (1, 2)]
    b = cli("run", other, "--shard", "2/2", "--no-progress").run_dir
    single = cli("run", config, "--no-progress").run_dir
    for dirs, what in [
        ([a[0]], "missing shard 2/2"),
        ([a[0], b], "different grid"),
        ([a[0], a[0]], "twice"),
        ([a[0], single], "not a shard"),
    ]:
        res = cli("merge", *dirs, "--out", tmp_path / "m")
        assert res.code == 2 and what in res.err, res.err
        assert len(res.err.strip().splitlines()) == 1


def test_resume_of_a_shard_keeps_its_shard(tmp_path: Path, cli: Any, scripted: Any) -> None:
    calls = {"n": 0}
    answered: list[str] = []

    def flaky(payload: dict[str, Any]) -> Reply:
        calls["n"] += 1
        if calls["n"] > 3:
            return Reply(401)  # the key is rejected after 3: a provider stop
        answered.append(payload["messages"][-1]["content"])
        return Reply()

    server = scripted(default=flaky)
    config = write_config(tmp_path, base_config(tmp_path, many_rows(tmp_path, 30), server.base_url))
    first = cli("run", config, "--shard", "2/3", "--no-progress")
    assert first.code != 0
    specs = [s for s in build_plan(load_experiment(config, [])).specs() if Shard(2, 3).holds(s.request_id)]
    mine = {s.request_id for s in specs}
    calls["n"] = -10_000
    assert cli("run", "--resume", first.run_dir, "--shard", "1/3").code == 2  # not the shard it was
    res = cli("run", "--resume", first.run_dir, "--no-progress")
    assert res.code == 0, res.err
    assert set(rows(first.run_dir).request_id) == mine
    # every request sent was the shard's, and each got exactly one answer over the two sessions
    assert sorted(answered) == sorted(str(s.messages[-1]["content"]) for s in specs)
    assert {p["messages"][-1]["content"] for p in server.requests} <= set(answered)


def test_workers_share_the_budget_evenly_and_merge(tmp_path: Path, gateway: Gateway) -> None:
    cfg = base_config(tmp_path, many_rows(tmp_path, 24), gateway.base_url)
    # each worker paces at 100 rpm (one send per 0.6 s): at most 2 per 1-s window each, 6 < 10
    # together. (Three pacers on three clocks keep a per-minute budget, not a 1-s window's: at
    # 200 rpm each a window could get 3 × 4 = 12; a shared limiter paces them as one.)
    cfg["providers"]["sim"].update(rpm=300)
    config = write_config(tmp_path, cfg)
    code, out, err = finish(evalrun_proc("run", config, "--workers", "3", "--no-progress"))
    assert code == 0, err
    assert "each of the 3 workers paces at 1/3 of rpm and tpm" in err
    run_dir = Path(out.strip().splitlines()[-1])
    assert sorted(rows(run_dir).request_id) == sorted(grid_ids(config))
    assert gateway.statuses.count(429) == 0 and len(gateway.arrivals) == 24
    # the share is applied: the largest shard's sends cannot be closer than 0.6 s apart
    biggest = max(sum(Shard(i, 3).holds(r) for r in grid_ids(config)) for i in (1, 2, 3))
    times = [t for t, _, _ in gateway.arrivals]
    assert max(times) - min(times) >= (biggest - 1) * 0.6 * 0.99
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["workers"]["count"] == 3 and len(manifest["shards"]) == 3
    for s in manifest["shards"]:
        shard_manifest = orjson.loads((Path(s["run_dir"]) / "manifest.json").read_bytes())
        assert shard_manifest["providers"]["sim"]["rpm"] == 300  # the config, untouched
        assert shard_manifest["argv"][-2:] == ["--rate-share", "3"]
        assert shard_manifest["version"] == manifest["version"] == MANIFEST_VERSION  # the one writer, both


def test_workers_resume_after_a_shard_is_killed(tmp_path: Path, gateway: Gateway) -> None:
    cfg = base_config(tmp_path, many_rows(tmp_path, 30), gateway.base_url)
    cfg["providers"]["sim"].update(rpm=360)  # 2 requests/s per worker: slow enough to kill one midway
    config = write_config(tmp_path, cfg)
    parent = evalrun_proc("run", config, "--workers", "3", "--run-dir", tmp_path / "run", "--no-progress")
    victim_dir = tmp_path / "run" / "shards" / "2of3"
    wait_for(lambda: journal_lines(victim_dir) >= 2)
    victims = [p for p in children(parent.pid) if "2/3" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    code, _, err = finish(parent)
    assert code == 1 and "shard 2/3 ended with exit code -9 (killed)" in err
    assert f"continue with: evalrun run --resume {tmp_path / 'run'}" in err
    before = {t for _, s, t in gateway.arrivals if s == 200}
    journaled = journal_lines(victim_dir)
    assert journaled < 10  # it was killed before it finished
    code, _out, err = finish(evalrun_proc("run", "--resume", tmp_path / "run", "--no-progress"))
    assert code == 0, err
    assert sorted(rows(tmp_path / "run").request_id) == sorted(grid_ids(config))
    texts = [t for _, s, t in gateway.arrivals if s == 200]
    # only the killed shard's unfinished requests were sent again (at most the one on the wire twice)
    assert len(texts) - len(set(texts)) <= 1 and set(texts) >= before
    assert gateway.statuses.count(429) == 0


def test_workers_print_what_the_shards_recorded(
    tmp_path: Path, cli: Any, scripted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("evalrun.run.scale.workers.PROGRESS_EVERY_S", 0.3)
    server = scripted()
    cfg = base_config(tmp_path, many_rows(tmp_path, 6), server.base_url)
    cfg["providers"]["sim"].update(rpm=120)  # 60 rpm per worker: a few seconds, several progress lines
    res = cli("run", write_config(tmp_path, cfg), "--workers", "2")
    assert res.code == 0, res.err
    lines = [line for line in res.err.splitlines() if line.startswith("[workers] ")]
    assert lines and all(line.endswith("running") for line in lines)
    assert "/6 recorded (1/2 " in lines[-1] and ", 2/2 " in lines[-1]
    assert len(server.requests) == 6
