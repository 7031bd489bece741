"""Crash safety: kill -9 at random moments, Ctrl-C once and twice, resume, retry errors,
budget stops. Real `evalrun` subprocesses against a standalone simulator, whose request
counter proves that a resume sends exactly the requests that have no row."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import base_config, read_results, write_config

from evalrun.config.load import load_experiment
from evalrun.run.grid.grid import build_plan
from evalrun.run.store.framing import decode
from evalrun.run.store.journal import journal_state

N_ROWS = 60


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: bytes | None = None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
        return orjson.loads(r.read())


class Sim:
    def __init__(self, *args: str) -> None:
        self.port = _port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evalrun", "serve-sim", "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert "listening" in self.proc.stdout.readline()  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        return _get(f"{self.url}/sim/stats")

    def options(self, **opts: object) -> None:
        _get(f"{self.url}/sim/options", orjson.dumps(opts))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def slow_sim() -> Iterator[Sim]:
    sim = Sim("--latency-ms", "60", "--per-token-ms", "0")
    yield sim
    sim.close()


def _config(tmp_path: Path, url: str, rows: int = N_ROWS) -> Path:
    ds = tmp_path / "rows.jsonl"
    ds.write_bytes(b"".join(orjson.dumps({"id": f"r{i}", "question": f"{i} + 7"}) + b"\n" for i in range(rows)))
    cfg = base_config(tmp_path, ds, url)
    cfg["models"] = ["gemini-2.5-flash-lite", "gemini-3-pro-preview"]
    cfg["grid"] = {"temperature": [0.0, 1.0]}
    cfg["providers"]["sim"]["max_concurrency"] = 8
    return write_config(tmp_path, cfg)


def _evalrun(*args: object, **kw: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "evalrun", *map(str, args), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )  # type: ignore[call-overload]


def _wait_for_sent(sim: Sim, n: int = 1, timeout: float = 30.0) -> None:
    """Wait until the simulator has received n requests: a fixed sleep raced a slow start-up on a
    loaded machine (the signal came before the run existed and the test saw no run folder)."""
    deadline = time.monotonic() + timeout
    while sim.stats()["requests"] < n:
        assert time.monotonic() < deadline, f"the run sent fewer than {n} requests in {timeout} s"
        time.sleep(0.05)


def _grid_ids(config: Path) -> set[str]:
    return {s.request_id for s in build_plan(load_experiment(config)).specs()}


def _recorded(run_dir: Path) -> int:
    """Journal lines written so far (complete or not)."""
    path = run_dir / "journal.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_9_at_random_moments_then_resume_gives_exactly_one_row_per_request(tmp_path, slow_sim) -> None:
    config = _config(tmp_path, slow_sim.url)
    expected = _grid_ids(config)
    assert len(expected) == 4 * N_ROWS
    run_dir = tmp_path / "run"
    rng = random.Random(int(os.environ.get("EVALRUN_TEST_SEED", "7")))
    proc = _evalrun("run", config, "--run-dir", run_dir)
    kills = 0
    for _ in range(3):
        # kill mid-run, whatever the machine's load: once this process has recorded something
        # new (start-up on a busy 2-core machine takes longer than the random part below)
        seen = _recorded(run_dir)
        deadline = time.monotonic() + 30
        while _recorded(run_dir) <= seen and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        kills += 1
        recorded = len(journal_state(run_dir / "journal.jsonl"))
        assert recorded < len(expected)
        assert slow_sim.stats()["requests"] >= recorded
        if (run_dir / "manifest.json").exists():
            proc = _evalrun("run", "--resume", run_dir)
        else:  # killed while starting up, before the run existed: start it again
            kills -= 1
            proc = _evalrun("run", config, "--run-dir", run_dir)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert kills >= 1, "the run finished before it could be killed; make it slower"
    df = read_results(run_dir)
    assert df.request_id.is_unique
    assert set(df.request_id) == expected  # no holes, no strays
    assert set(df.status) == {"ok"}
    # every request was sent once, plus at most the ones in flight at each kill (≤ concurrency)
    sent = slow_sim.stats()["requests"]
    assert len(expected) <= sent <= len(expected) + kills * 8
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    # each resume that got going recorded itself; one killed while starting up (before it reads the
    # journal or writes the manifest) sends nothing and leaves no entry
    assert manifest["status"] == "completed" and 1 <= len(manifest["resumes"]) <= kills


def test_resume_sends_only_the_missing_requests(tmp_path, slow_sim) -> None:
    config = _config(tmp_path, slow_sim.url, rows=20)
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "evalrun",
            "run",
            str(config),
            "--run-dir",
            str(run_dir),
            "--max-requests",
            "30",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "--max-requests 30" in r.stderr and "--resume" in r.stderr
    assert slow_sim.stats()["requests"] == 30
    assert len(read_results(run_dir)) == 30
    r = subprocess.run(
        [sys.executable, "-m", "evalrun", "run", "--resume", str(run_dir), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert slow_sim.stats()["requests"] == 80  # the other 50, once each
    df = read_results(run_dir)
    assert len(df) == 80 and df.request_id.is_unique


def test_retry_errors_resends_only_the_error_rows(tmp_path, slow_sim) -> None:
    config = _config(tmp_path, slow_sim.url, rows=10)
    run_dir = tmp_path / "run"
    slow_sim.options(fail_first=6, fail_first_status=400)  # 400: recorded, not retried
    r = subprocess.run(
        [sys.executable, "-m", "evalrun", "run", str(config), "--run-dir", str(run_dir), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    df = read_results(run_dir)
    assert (df.status == "error").sum() == 6
    failed = set(df[df.status == "error"].request_id)
    plain = subprocess.run(
        [sys.executable, "-m", "evalrun", "run", "--resume", str(run_dir), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0 and slow_sim.stats()["requests"] == 40  # nothing to send
    r = subprocess.run(
        [sys.executable, "-m", "evalrun", "run", "--resume", str(run_dir), "--retry-errors", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert slow_sim.stats()["requests"] == 46
    df = read_results(run_dir)
    assert len(df) == 40 and df.request_id.is_unique and set(df.status) == {"ok"}
    assert set(df[df.attempts >= 1].request_id) >= failed


def test_resume_refuses_a_changed_grid_unless_forced(tmp_path, slow_sim) -> None:
    config = _config(tmp_path, slow_sim.url, rows=5)
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "evalrun",
            "run",
            str(config),
            "--run-dir",
            str(run_dir),
            "--max-requests",
            "3",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    text = config.read_text().replace("max_tokens: 256", "max_tokens: 128")
    config.write_text(text)
    r = subprocess.run(
        [sys.executable, "-m", "evalrun", "run", "--resume", str(run_dir), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "grid changed" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "evalrun", "run", "--resume", str(run_dir), "--force", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_ctrl_c_once_finishes_in_flight_and_says_how_to_resume(tmp_path, slow_sim) -> None:
    config = _config(tmp_path, slow_sim.url)
    run_dir = tmp_path / "run"
    proc = _evalrun("run", config, "--run-dir", run_dir)
    _wait_for_sent(slow_sim)
    time.sleep(0.3)  # a few more on the wire
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "stopping" in err and f"--resume {run_dir}" in err
    sent = slow_sim.stats()["requests"]
    df = read_results(run_dir)
    assert 0 < len(df) < 4 * N_ROWS
    assert len(df) == sent  # in-flight requests were waited for: nothing paid is lost
    assert orjson.loads((run_dir / "manifest.json").read_bytes())["status"] == "interrupted"
    r = subprocess.run(
        [sys.executable, "-m", "evalrun", "run", "--resume", str(run_dir), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert read_results(run_dir).request_id.nunique() == 4 * N_ROWS


def test_second_ctrl_c_exits_at_once_without_corruption(tmp_path) -> None:
    sim = Sim("--latency-ms", "3000", "--per-token-ms", "0")  # every request takes 3 s
    try:
        config = _config(tmp_path, sim.url)
        run_dir = tmp_path / "run"
        proc = _evalrun("run", config, "--run-dir", run_dir)
        _wait_for_sent(sim)  # requests are on the wire (each takes 3 s)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 2.5  # did not wait for the 3 s requests
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        # nothing was answered, nothing is recorded, and the run resumes cleanly
        assert journal_state(run_dir / "journal.jsonl") == {}
        sim.options(latency_ms=0)
        r = subprocess.run(
            [sys.executable, "-m", "evalrun", "run", "--resume", str(run_dir), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert read_results(run_dir).request_id.nunique() == 4 * N_ROWS
    finally:
        sim.close()


def test_torn_journal_line_is_ignored_and_repaired(tmp_path, dataset, cli) -> None:
    cfg = write_config(tmp_path, base_config(tmp_path, dataset))
    run_dir = tmp_path / "run"
    r = cli("run", cfg, "--no-progress", "--run-dir", run_dir, "--max-requests", "3")
    assert r.code == 1
    journal = run_dir / "journal.jsonl"
    with journal.open("ab") as f:
        f.write(b'{"id": "half-written", "status": "ok", "ro')  # a crash mid-write
    assert len(journal_state(journal)) == 3
    r = cli("run", "--resume", run_dir, "--no-progress")
    assert r.code == 0, r.err
    assert len(read_results(run_dir)) == 5
    data = journal.read_bytes()  # the torn line was cut: every line is a whole entry again
    assert data.endswith(b"\n") and all(decode(line)["id"] for line in data.splitlines())


def test_ctrl_c_at_random_moments_never_records_a_broken_row_and_resume_is_exact(tmp_path, slow_sim) -> None:
    """Many tries (EVALRUN_CTRL_C_TRIES, default 6): SIGINT at a random moment of a run — start-up,
    sending, retrying, writing Parquet — then resume: exit 130 (or 0 if it had finished), no
    internal_error row, no traceback, and the resumed run is exactly the grid."""
    slow_sim.options(rate_500=0.1)  # some requests are between retries when the signal comes
    tries = int(os.environ.get("EVALRUN_CTRL_C_TRIES", "6"))
    rng = random.Random(int(os.environ.get("EVALRUN_TEST_SEED", "11")))
    config = _config(tmp_path, slow_sim.url, rows=30)
    expected = _grid_ids(config)
    interrupted = 0
    for i in range(tries):
        run_dir = tmp_path / f"run{i}"
        before = slow_sim.stats()["requests"]
        proc = _evalrun("run", config, "--run-dir", run_dir)
        if i % 2:  # every other try lands while requests are going out, however slow the start-up
            _wait_for_sent(slow_sim, before + 1)
            time.sleep(rng.uniform(0.0, 0.4))  # the grid takes about 1 s to send
        else:
            time.sleep(rng.uniform(0.4, 2.0))
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        manifest_path = run_dir / "manifest.json"
        finished = manifest_path.exists() and orjson.loads(manifest_path.read_bytes())["status"] == "completed"
        # -2: the signal came after the run had finished, while the interpreter was exiting
        assert proc.returncode in (0, 130) or (finished and proc.returncode == -signal.SIGINT), err
        assert "Session is closed" not in err, err
        assert "Traceback" not in err or finished, err
        states = journal_state(run_dir / "journal.jsonl")
        assert not any(etype == "internal_error" for _, etype in states.values())
        if proc.returncode == 130 and (run_dir / "manifest.json").exists():
            manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
            # running: cut in start-up or while writing Parquet; completed: the signal came just after
            assert manifest["status"] in ("interrupted", "running", "completed"), manifest["status"]
            interrupted += manifest["status"] == "interrupted"
        if not (run_dir / "manifest.json").exists():
            continue  # interrupted before the run existed: nothing to resume
        r = subprocess.run(
            [sys.executable, "-m", "evalrun", "run", "--resume", str(run_dir), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        df = read_results(run_dir)
        assert df.request_id.is_unique and set(df.request_id) == expected
        assert "internal_error" not in set(df.error_type.dropna())
        sent = slow_sim.stats()["requests"] - before
        attempts = int(df.attempts.sum())
        assert sent >= attempts  # every attempt recorded was sent; interrupted ones were resent
    assert interrupted >= tries // 3  # most signals landed while requests were going out


def test_ctrl_c_with_workers_waiting_on_the_limiter_exits_at_once(tmp_path, slow_sim) -> None:
    ds = tmp_path / "rows.jsonl"
    ds.write_bytes(b"".join(orjson.dumps({"id": f"r{i}", "question": f"{i} + 7"}) + b"\n" for i in range(200)))
    cfg = base_config(tmp_path, ds, slow_sim.url)
    cfg["providers"]["sim"].update(max_concurrency=100, rpm=6)  # one request, then a 10 s wait each
    config = write_config(tmp_path, cfg)
    run_dir = tmp_path / "run"
    proc = _evalrun("run", config, "--run-dir", run_dir)
    deadline = time.monotonic() + 30
    while slow_sim.stats()["requests"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 130, err
    assert "for 0 requests on the wire" in err  # the waiting ones are not "in flight"
    assert took < 5.0  # generous: it waits on nothing (the old pool took the 10 s slot first)
    df = read_results(run_dir)
    assert len(df) == 1 and slow_sim.stats()["requests"] == 1
    assert orjson.loads((run_dir / "manifest.json").read_bytes())["status"] == "interrupted"
