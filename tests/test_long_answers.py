"""Long answers in small memory (issue 23): the results writer holds bytes, not rows; a run of
2,000-token answers with top-5 logprobs stays far below what it took when rows waited as Python
objects; a streamed answer's logprobs are flattened as the chunks come, and come out the same."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import LoopThread, base_config, read_results, serve_loopback, write_config
from own_rusage import MeasuredProcess

import evalrun.run.store.sink as sink
from evalrun.run.records.records import Logprobs

ROOT = Path(__file__).resolve().parents[1]


def _logprobs(tokens: int) -> Logprobs:
    words = [f" w{i % 97}" for i in range(tokens)]
    tops = [w for w in words for _ in range(5)]
    return Logprobs(words, [-0.5] * tokens, [5] * tokens, tops, [-1.5] * len(tops))


class _SlowHook:
    """A summary that takes its time: the writer lags, so the queue in front of it fills up."""

    score_names: tuple[str, ...] = ()
    extra_columns: tuple[tuple[str, str], ...] = ()
    reads_logprobs = False

    def __init__(self) -> None:
        self.rows = 0

    def on_batch(self, rows: list[dict[str, Any]]) -> None:
        time.sleep(0.02)
        self.rows += len(rows)


def test_the_results_writer_holds_bytes_not_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink, "SEND_BYTES", 2**20)
    monkeypatch.setattr(sink, "GROUP_BYTES", 4 * 2**20)
    monkeypatch.setattr(sink, "FLUSH_S", 3600.0)  # by size alone
    lp = _logprobs(1000)  # 6,000 entries: ≈ 0.6 MB a row as Python objects
    one = sink.row_bytes({"logprobs": lp, "content": "x" * 4000})
    assert 500_000 < one < 700_000
    hook = _SlowHook()
    s = sink.ResultsSink(tmp_path, (), hook)
    for i in range(60):
        s.add("ok", [{"request_id": f"q{i}", "status": "ok", "content": "x" * 4000, "logprobs": lp}])
    counts = s.finish()
    assert counts["rows"] == hook.rows == 60
    # rows sent to the writer and not yet converted: the queue's batches, each about SEND_BYTES
    assert s.peak_held_bytes <= (sink.QUEUED_BATCHES + 1) * (sink.SEND_BYTES + one)
    # Arrow waiting to be written: a row group's worth, and the one batch that completes it
    assert 0 < s.peak_arrow_bytes <= sink.GROUP_BYTES + 2 * 2**20
    meta = pq.ParquetFile(tmp_path / "results.parquet").metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(groups) == 60 and len(groups) >= 4  # rows by bytes, far under PARQUET_BATCH_ROWS
    back = pq.read_table(tmp_path / "results.parquet", columns=["logprobs"]).column(0)[59].as_py()
    assert [t["token"] for t in back] == lp.token and back[3]["top_logprobs"][4]["token"] == lp.top_token[19]


# ---- a whole run, its peak RSS --------------------------------------------------------------

TOKENS = 2000


def _long_body() -> bytes:
    def entry(i: int) -> dict[str, Any]:
        w = f" w{i % 89}"
        return {"token": w, "logprob": -0.25 - i % 7, "bytes": list(w.encode())}

    content = [{**entry(i), "top_logprobs": [entry(i + k) for k in range(5)]} for i in range(TOKENS)]
    choice = {"index": 0, "message": {"role": "assistant", "content": "x" * 8000}, "finish_reason": "length"}
    usage = {"prompt_tokens": 10, "completion_tokens": TOKENS, "total_tokens": TOKENS + 10}
    body = {"id": "c", "model": "m", "choices": [{**choice, "logprobs": {"content": content}}], "usage": usage}
    return orjson.dumps(body)


def _peak_rss_mb(cmd: list[str]) -> tuple[int, float, str]:
    """The command's own peak RSS: own_rusage's launcher, not wait4 on a child of this pytest
    process (that reports this process's peak when it is higher — 463 MB late in a CI run)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = MeasuredProcess(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    err = proc.proc.communicate()[1].decode(errors="replace")
    code, usage = proc.wait()
    assert usage is not None, err
    return code, usage.maxrss_mb, err


def test_a_child_peak_rss_is_its_own_not_its_parents() -> None:
    """The trap _peak_rss_mb avoids: while this process holds 400 MB more, a small child still
    measures small (wait4 on a Popen child would say ≥ 400 MB)."""
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touched: resident
    code, rss_mb, err = _peak_rss_mb(
        [sys.executable, "-c", "x = bytearray(60 * 2**20); x[::4096] = b'y' * len(x[::4096])"]
    )
    del ballast
    assert code == 0, err
    assert 60 < rss_mb < 150


@pytest.mark.parametrize("n", [500])
def test_a_run_of_long_answers_keeps_its_memory_small(tmp_path: Path, loop_thread: LoopThread, n: int) -> None:
    """At n = 500 the rows that waited as Python objects (128-row batches, 1,024-row groups) and
    the answers each worker kept until its next one came took ≈ 700 MB (measured: 527 MB at
    n = 300); bounded by bytes the run peaks near 250 MB whatever n (204–230 MB measured, alone
    and beside three CPU burners and two other test runs)."""
    body = _long_body()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    base_url, runner = loop_thread.call(serve_loopback(handle))
    try:
        data = tmp_path / "data.jsonl"
        data.write_bytes(b"".join(orjson.dumps({"id": f"q{i}", "question": i}) + b"\n" for i in range(n)))
        cfg = base_config(tmp_path, data, base_url, params={"max_tokens": 2100, "logprobs": True, "top_logprobs": 5})
        cfg["providers"]["sim"]["max_concurrency"] = 100
        config = write_config(tmp_path, cfg)
        run_dir = tmp_path / "run"
        cmd = [sys.executable, "-m", "evalrun", "run", str(config), "--no-progress", "--run-dir", str(run_dir)]
        code, rss_mb, err = _peak_rss_mb(cmd)
    finally:
        loop_thread.call(runner.cleanup())
    assert code == 0, err
    assert len(read_results(run_dir)) == n
    assert rss_mb < 350, f"peak RSS {rss_mb:.0f} MB"


# ---- streamed logprobs, flattened as they come ------------------------------------------------


def _chunk(token: dict[str, Any] | None, finish: str | None = None) -> bytes:
    ch: dict[str, Any] = {"index": 0, "delta": {"content": token["token"]} if token else {}, "finish_reason": finish}
    if token is not None:
        ch["logprobs"] = {"content": [token]}
    return b"data: " + orjson.dumps({"id": "s", "model": "m", "choices": [ch]}) + b"\n\n"


def _stream_server(loop_thread: LoopThread, tokens: list[dict[str, Any]]) -> tuple[str, web.AppRunner]:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for t in tokens:
            await resp.write(_chunk(t))
        await resp.write(_chunk(None, "stop"))
        usage = {"prompt_tokens": 3, "completion_tokens": len(tokens), "total_tokens": 3 + len(tokens)}
        await resp.write(b"data: " + orjson.dumps({"id": "s", "model": "m", "choices": [], "usage": usage}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return loop_thread.call(serve_loopback(handle))


def _tok(text: str, raw: list[int] | None = None, tops: int = 2) -> dict[str, Any]:
    b = list(text.encode()) if raw is None else raw
    alt = [{"token": f"{text}{k}", "logprob": -1.0 - k, "bytes": list(f"{text}{k}".encode())} for k in range(tops)]
    return {"token": text, "logprob": -0.5, "bytes": b, "top_logprobs": alt}


def _streamed_run(tmp_path: Path, cli: Any, loop_thread: LoopThread, tokens: list[dict[str, Any]]) -> Any:
    base_url, runner = _stream_server(loop_thread, tokens)
    try:
        data = tmp_path / "data.jsonl"
        data.write_bytes(orjson.dumps({"id": "q1", "question": 1}) + b"\n")
        params = {"max_tokens": 64, "logprobs": True, "top_logprobs": 2, "stream": True}
        r = cli("run", write_config(tmp_path, base_config(tmp_path, data, base_url, params=params)), "--no-progress")
    finally:
        loop_thread.call(runner.cleanup())
    assert r.code == 0, r.err
    return read_results(r.run_dir).iloc[0]


def test_streamed_logprobs_keep_bytes_that_are_not_utf8_from_a_later_chunk(tmp_path, cli, loop_thread) -> None:
    tokens = [_tok("a"), _tok("b"), _tok("\ufffd", raw=[0xE2, 0x82]), _tok("c")]
    row = _streamed_run(tmp_path, cli, loop_thread, tokens)
    got = list(row["logprobs"])
    assert [t["token"] for t in got] == ["a", "b", "\ufffd", "c"]
    assert [list(t["bytes"]) for t in got] == [[97], [98], [0xE2, 0x82], [99]]
    assert [x["token"] for x in got[3]["top_logprobs"]] == ["c0", "c1"]
    assert row["error_type"] is None or row["error_type"] != row["error_type"]  # null: nothing dropped


def test_a_bad_token_in_a_later_chunk_drops_the_streamed_logprobs_and_names_its_position(
    tmp_path, cli, loop_thread
) -> None:
    bad = {"token": "x", "logprob": "high", "bytes": [120]}
    row = _streamed_run(tmp_path, cli, loop_thread, [_tok("a"), _tok("b"), bad, _tok("c")])
    assert row["content"] == "abxc" and row["status"] == "ok"
    assert row["logprobs"] is None or len(row["logprobs"]) == 0 or row["logprobs"] != row["logprobs"]
    assert row["error_type"] == "malformed_response"
    assert "choices[0].logprobs.content[2]" in row["error_message"]


def test_a_null_logprob_in_a_later_chunk_is_kept_as_null(tmp_path, cli, loop_thread) -> None:
    """The streamed logprobs are kept in arrays of doubles until a null comes: it stays a null."""
    tokens = [_tok("a"), _tok("b"), {**_tok("c"), "logprob": None}, _tok("d")]
    tokens[3]["top_logprobs"][1]["logprob"] = None
    got = list(_streamed_run(tmp_path, cli, loop_thread, tokens)["logprobs"])
    assert [t["logprob"] for t in got] == [-0.5, -0.5, None, -0.5]
    assert [x["logprob"] for x in got[3]["top_logprobs"]] == [-1.0, None]
    assert [x["logprob"] for x in got[0]["top_logprobs"]] == [-1.0, -2.0]
