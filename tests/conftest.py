"""Shared fixtures: configs in tmp_path, the CLI in-process, and loopback HTTP servers.

`evalrun run` starts its own event loop, so servers the tests script or inspect run on a
second event loop in a background thread, reached over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from evalrun.cli import main

# ---------------------------------------------------------------------------- retry waits


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_waits: keep evalrun's real retry/backoff waits")


@pytest.fixture(autouse=True)
def _no_retry_waits(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry waits are zero unless a test measures them (marker real_waits)."""
    if request.node.get_closest_marker("real_waits") is None:
        monkeypatch.setattr("evalrun.run.send.attempts.retry_wait", lambda *a, **k: 0.0)


# ---------------------------------------------------------------------------- configs


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    rows = [{"id": f"q{i}", "question": f"{i} + {i * 2}", "answer": i * 3} for i in range(1, 6)]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def arithmetic_rows(path: Path, n: int) -> Path:
    """`n` sums the simulator answers (ids q0…), written as JSONL at `path`."""
    path.write_bytes(
        b"".join(
            orjson.dumps({"id": f"q{i}", "question": f"{i * 7 + 3} + {i * 5 + 2}", "answer": i * 12 + 5}) + b"\n"
            for i in range(n)
        )
    )
    return path


def base_config(tmp_path: Path, dataset: Path, base_url: str | None = None, **extra: Any) -> dict[str, Any]:
    """A small valid experiment: the embedded simulator, or an OpenAI-compatible base_url."""
    if base_url is None:
        providers = {"sim": {"kind": "simulator", "simulator": {"latency_scale": 0}}}
    else:
        providers = {"sim": {"base_urls": [base_url], "max_concurrency": 4}}
    cfg: dict[str, Any] = {
        "experiment": "t",
        "provider": "sim",
        "providers": providers,
        "models": ["gemini-2.5-flash-lite"],
        "params": {"max_tokens": 256},
        "prompts": {"p": [{"role": "user", "content": "What is {question}? Only the number."}]},
        "dataset": {"path": str(dataset)},
        "reports_dir": str(tmp_path / "reports"),
        "retry": {"max_attempts": 4, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
    }
    cfg.update(extra)
    return cfg


def write_config(tmp_path: Path, cfg: dict[str, Any], name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def run_dir(self) -> Path:
        return Path(self.out.strip().splitlines()[-1])


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    def run(*args: str) -> CliResult:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


# ---------------------------------------------------------------------------- servers


class LoopThread:
    """An event loop in a daemon thread, for servers that outlive one `asyncio.run`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def completion(
    content: str = "42", *, usage: Any = "default", model: str = "m", n: int = 1, **choice: Any
) -> dict[str, Any]:
    """A chat.completion body in the provider's documented shape."""
    if usage == "default":
        usage = {
            "prompt_tokens": 13,
            "completion_tokens": 5,
            "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 0, "text_tokens": 13, "audio_tokens": 0, "image_tokens": 0},
            "completion_tokens_details": {"text_tokens": 5, "audio_tokens": 0, "reasoning_tokens": 0},
            "input_tokens": 0,
            "output_tokens": 0,
            "input_tokens_details": None,
        }
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": content},
            "logprobs": None,
            "finish_reason": "stop",
            **choice,
        }
        for i in range(n)
    ]
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False  # accept, never answer
    stream: list[bytes | float] | None = None  # an SSE body sent piece by piece; a float pauses (s)


@dataclass
class Scripted:
    """A scripted OpenAI-compatible server: answers from `script` in order, then `default`."""

    base_url: str
    script: list[Reply]
    default: Callable[[dict[str, Any]], Reply]
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


async def _start_scripted(
    script: list[Reply], default: Callable[[dict[str, Any]], Reply]
) -> tuple[Scripted, web.AppRunner]:
    state = Scripted("", list(script), default)

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = {"_raw": body.decode("utf-8", "replace")}
        state.requests.append(payload)
        state.headers.append(dict(request.headers))
        state.times.append(time.monotonic())
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            reply = state.script.pop(0) if state.script else state.default(payload)
            if reply.hang:
                await asyncio.sleep(60)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.stream is not None:
                sse = {"Content-Type": "text/event-stream", **reply.headers}
                resp = web.StreamResponse(status=reply.status, headers=sse)
                await resp.prepare(request)
                try:
                    for piece in reply.stream:
                        if isinstance(piece, float):
                            await asyncio.sleep(piece)
                        else:
                            await resp.write(piece)
                    await resp.write_eof()
                except ConnectionResetError:  # the client gave up on the stream (a bad chunk)
                    pass
                return resp
            raw = (
                reply.body
                if reply.body is not None
                else orjson.dumps(reply.json if reply.json is not None else completion())
            )
            return web.Response(
                status=reply.status, body=raw, headers={"Content-Type": "application/json", **reply.headers}
            )
        finally:
            state.in_flight -= 1

    state.base_url, runner = await serve_loopback(handle)
    return state, runner


async def serve_loopback(handle: Any) -> tuple[str, web.AppRunner]:
    """Serve `handle` as POST /v1/chat/completions on a free 127.0.0.1 port → (base_url, runner)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://127.0.0.1:{port}/v1", runner


@pytest.fixture
def scripted(loop_thread: LoopThread) -> Iterator[Callable[..., Scripted]]:
    """scripted([Reply(429, headers={'Retry-After': '1'}), Reply()]) → a live server."""
    runners: list[web.AppRunner] = []

    def start(script: list[Reply] | None = None, default: Callable[[dict[str, Any]], Reply] | None = None) -> Scripted:
        state, runner = loop_thread.call(_start_scripted(script or [], default or (lambda p: Reply())))
        runners.append(runner)
        return state

    yield start
    for r in runners:
        loop_thread.call(r.cleanup())


def read_results(run_dir: Path) -> Any:
    import pandas as pd

    return pd.read_parquet(run_dir / "results.parquet")


# ---------------------------------------------------------------------------- virtual time


class FakeClock:
    """A `limiter.Clock` on virtual time: `run(coro)` drives the event loop, and whenever every
    task is blocked it jumps straight to the next sleeper's deadline — minutes of pacing,
    Retry-After and backoff run in milliseconds, and every wait is exactly what the code asked."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        import heapq

        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.t + seconds, self._seq, fut))
        await fut

    async def run(self, coro: Any, max_t: float = 1e6, settle: int = 50) -> Any:
        import heapq

        task = asyncio.ensure_future(coro)
        idle = 0
        while not task.done():
            for _ in range(settle):  # let every runnable task reach its next wait
                await asyncio.sleep(0)
                if task.done():
                    break
            if task.done():
                break
            while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
                heapq.heappop(self._sleepers)
            if not self._sleepers:
                idle += 1
                assert idle < 1000, "deadlock: every task waits on something that is not the clock"
                continue
            idle = 0
            deadline = self._sleepers[0][0]
            assert deadline <= max_t, f"virtual time ran past {max_t} s"
            self.t = max(self.t, deadline)
            while self._sleepers and self._sleepers[0][0] <= self.t:
                _, _, fut = heapq.heappop(self._sleepers)
                if not fut.done():
                    fut.set_result(None)
        return task.result()
