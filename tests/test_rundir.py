"""The run directory under contention and pressure, with real `evalrun` processes:

- two resumes of one run at once: the second exits 2 naming the first's pid and sends
  nothing; after `kill -9` of the first, a third resume takes the lock and finishes;
- the disk fills up while recording: one clear line, the manifest says why it stopped and
  how to resume, and the resume completes the run with one row per request.

The server is a loopback aiohttp app in this test process; the processes are started here
and ended here, by pid.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import base_config, completion, read_results, serve_loopback, write_config

from evalrun.run.store.framing import decode

GATE_POLLS = 3000  # × 20 ms: a held request is answered within 60 s whatever happens


class GatedServer:
    """Answers every request once `gate` is open; `arrived` is set by the first request."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.arrived = threading.Event()
        self.requests = 0
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        self.arrived.set()
        for _ in range(GATE_POLLS):
            if self.gate.is_set():
                break
            await asyncio.sleep(0.02)
        return web.json_response(completion())


@pytest.fixture
def gated(loop_thread: Any) -> Iterator[GatedServer]:
    srv = GatedServer()
    srv.base_url, runner = loop_thread.call(serve_loopback(srv.handle))
    yield srv
    srv.gate.set()
    loop_thread.call(runner.cleanup())


def evalrun(*args: object, cwd: Path, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "evalrun", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _journal_ids(run_dir: Path) -> list[str]:
    return [decode(line)["id"] for line in (run_dir / "journal.jsonl").read_bytes().splitlines() if line]


def test_two_resumes_at_once_the_second_exits_2_and_kill_9_frees_the_lock(tmp_path, dataset, gated, cli) -> None:
    cfg = base_config(tmp_path, dataset, gated.base_url)
    cfg["providers"]["sim"]["max_concurrency"] = 1
    config = write_config(tmp_path, cfg)
    run_dir = tmp_path / "run"
    gated.gate.set()
    r = cli("run", config, "--run-dir", run_dir, "--max-requests", "1", "--no-progress")
    assert r.code == 1 and gated.requests == 1  # one row; four to go

    gated.gate.clear()
    gated.arrived.clear()
    first = evalrun("run", "--resume", run_dir, "--no-progress", cwd=tmp_path)
    try:
        assert gated.arrived.wait(30), "the first resume never sent its request"
        assert (run_dir / "run.lock").read_text().strip() == str(first.pid)
        for args in (("run", "--resume", run_dir), ("run", config, "--run-dir", run_dir)):
            second = evalrun(*args, "--no-progress", cwd=tmp_path)
            _out, err = second.communicate(timeout=60)
            assert second.returncode == 2, err
            assert err.strip() == (
                f"evalrun: error: run {run_dir} is in use by pid {first.pid}; "
                "wait for it to end (or stop it) before resuming"
            )
        assert gated.requests == 2  # the first run's one, and the first resume's held one: none from the others
    finally:
        os.kill(first.pid, signal.SIGKILL)  # the lock must not outlive it
        first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL

    gated.gate.set()
    third = evalrun("run", "--resume", run_dir, "--no-progress", cwd=tmp_path)
    _out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert gated.requests == 2 + 4  # the killed resume's request had no answer: sent again
    ids = _journal_ids(run_dir)
    assert len(ids) == len(set(ids)) == 5
    assert len(read_results(run_dir)) == 5
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "completed" and len(manifest["resumes"]) == 2


FILE_LIMIT = 24_000  # bytes any one file may grow to: the journal reaches it after a few entries


def _file_size_limit() -> None:  # in the child, before exec: a small "disk"
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def test_disk_full_while_recording_stops_in_one_line_and_resume_finishes(tmp_path, gated) -> None:
    """RLIMIT_FSIZE makes the kernel refuse writes past a size with EFBIG, exactly where a full
    disk refuses with ENOSPC: in write(2), partway through a line. (A small tmpfs would be
    closer still, but mounting one needs privileges a test must not assume.)"""
    data = tmp_path / "long.jsonl"
    # random hex, not repeated words: the journal compresses its lines, and the pad must still
    # make it reach FILE_LIMIT after a few entries
    rows = [{"id": f"r{i:02d}", "question": f"{i} + {i} " + random.Random(i).randbytes(600).hex()} for i in range(40)]
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    cfg = base_config(tmp_path, data, gated.base_url)
    cfg["providers"]["sim"]["max_concurrency"] = 1
    config = write_config(tmp_path, cfg)
    run_dir = tmp_path / "run"
    gated.gate.set()

    full = evalrun("run", config, "--run-dir", run_dir, "--no-progress", cwd=tmp_path, preexec_fn=_file_size_limit)
    _out, err = full.communicate(timeout=120)
    assert full.returncode == 1, err
    assert "Traceback" not in err, err
    said = [ln for ln in err.splitlines() if "File too large" in ln]
    assert len(said) == 1, err
    assert f"evalrun run --resume {run_dir}" in said[0]
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "stopped"
    assert "File too large" in " ".join([manifest.get("stop_reason") or "", *manifest.get("messages", [])])
    recorded = len(set(_journal_ids_tolerant(run_dir)))
    assert 0 < recorded < 40
    sent_before = gated.requests

    again = evalrun("run", "--resume", run_dir, "--no-progress", cwd=tmp_path)  # space again
    _out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    df = read_results(run_dir)
    assert len(df) == 40 and df.request_id.is_unique and set(df.status) == {"ok"}
    assert gated.requests - sent_before == 40 - recorded  # only what had no row


def _journal_ids_tolerant(run_dir: Path) -> list[str]:
    """Entry ids of the complete lines (the refused write leaves a torn last line)."""
    lines = (run_dir / "journal.jsonl").read_bytes().split(b"\n")
    return [decode(line)["id"] for line in lines[:-1] if line]


HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin
"""


def test_score_does_not_rewrite_results_while_another_process_holds_the_run(tmp_path, dataset, cli) -> None:
    r = cli("run", write_config(tmp_path, base_config(tmp_path, dataset)), "--no-progress")
    assert r.code == 0, r.err
    before = (r.run_dir / "results.parquet").read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(r.run_dir / "run.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        s = cli("score", r.run_dir)
        assert s.code == 2 and f"is in use by pid {holder.pid}" in s.err
        assert (r.run_dir / "results.parquet").read_bytes() == before
    finally:
        holder.communicate(b"", timeout=30)  # closes stdin: it exits, and the lock with it
    assert cli("score", r.run_dir).code == 0
