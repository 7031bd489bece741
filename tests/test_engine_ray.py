"""--engine ray --workers K on a local Ray (ray.init(num_cpus=2), started and stopped here): the
shards share one Redis budget against a gateway enforcing 10 per 1-s window; a shard whose
process is killed is resumed by Ray's retry, not re-run."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import base_config, read_results, write_config
from many import Gateway, RedisServer, gateway, journal_lines, redis_server, wait_for

from evalrun.cli import main
from evalrun.config.load import load_experiment
from evalrun.run.grid.grid import build_plan

ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")
KEY = "sk-ray-test-key"


@pytest.fixture
def local_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SHARED_TEST_KEY", KEY)  # before ray.init: its workers inherit it
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def config(tmp_path: Path, gw: Gateway, redis_url: str, rows: int, rpm: int = 600) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(
        b"".join(orjson.dumps({"id": f"q{i}", "question": f"{i}*2", "answer": 2 * i}) + b"\n" for i in range(rows))
    )
    cfg = base_config(tmp_path, path, gw.base_url)
    cfg["providers"]["sim"].update(rpm=rpm, limiter=redis_url, api_key_env="SHARED_TEST_KEY")
    return write_config(tmp_path, cfg)


def grid_ids(path: Path) -> list[str]:
    return sorted(s.request_id for s in build_plan(load_experiment(path, [])).specs())


def test_ray_workers_share_one_redis_budget(
    tmp_path: Path, gateway: Gateway, redis_server: RedisServer, local_ray: None, cli: Any
) -> None:
    cfg = config(tmp_path, gateway, redis_server.url, 30)
    res = cli("run", cfg, "--engine", "ray", "--workers", "3", "--run-dir", tmp_path / "run", "--no-progress")
    assert res.code == 0, res.err
    assert gateway.statuses.count(429) == 0 and len(gateway.arrivals) == 30 and gateway.max_per_window() <= 10
    assert sorted(read_results(tmp_path / "run").request_id) == grid_ids(cfg)
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert [s["shard"] for s in manifest["shards"]] == ["1/3", "2/3", "3/3"]


def _pids_with(text: str) -> list[int]:
    """PIDs whose command line holds `text` (a run directory unique to this test)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    out.append(int(proc.name))
            except OSError:
                pass
    return out


def test_a_lost_ray_task_is_resumed_not_rerun(
    tmp_path: Path, gateway: Gateway, redis_server: RedisServer, local_ray: None
) -> None:
    cfg = config(tmp_path, gateway, redis_server.url, 24, rpm=240)  # 4/s together: slow enough to kill midway
    run_dir = tmp_path / "run"
    codes: list[int] = []
    driver = threading.Thread(
        target=lambda: codes.append(
            main(["run", str(cfg), "--engine", "ray", "--workers", "2", "--run-dir", str(run_dir), "--no-progress"])
        )
    )
    driver.start()
    victim = run_dir / "shards" / "2of2"
    wait_for(lambda: journal_lines(victim) >= 2)
    pids = [p for p in _pids_with(f"--shard 2/2 --run-dir {victim}") if p != os.getpid()]
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    driver.join(120)
    assert codes == [0]
    assert sorted(read_results(run_dir).request_id) == grid_ids(cfg)
    shard = orjson.loads((victim / "manifest.json").read_bytes())
    assert len(shard["resumes"]) == 1 and shard["resumes"][0]["already_done"] >= 2  # resumed from its journal
    texts = [t for _, s, t in gateway.arrivals if s == 200]
    assert len(texts) - len(set(texts)) <= 1  # not re-run: at most the request on the wire twice
    assert gateway.statuses.count(429) == 0


def test_ray_workers_keep_every_judge_verdict_and_ask_each_once(tmp_path: Path, local_ray: None, cli: Any) -> None:
    from test_judge_paths import JUDGE_REQUESTS, ROWS, _all_judged, _sent
    from test_judging_run import _judged
    from test_resume import Sim

    sim = Sim("--latency-ms", "0", "--per-token-ms", "0")
    try:
        config = _judged(tmp_path, ROWS, sim.url)
        res = cli("run", config, "--engine", "ray", "--workers", "2", "--run-dir", tmp_path / "run", "--no-progress")
        assert res.code == 0, res.err
        _all_judged(tmp_path / "run")
        assert _sent(sim) == (ROWS * 2, JUDGE_REQUESTS)  # every verdict asked once, none lost in the merge
    finally:
        sim.close()
