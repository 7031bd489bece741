"""Rate control against scripted loopback servers that behave like real gateways: per-model
windows, sporadic upstream 429s, x-ratelimit-* headers. Assertions are on what the server saw
(counts and orders), with generous bounds where time is unavoidable."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import LoopThread, base_config, completion, read_results, serve_loopback, write_config

pytestmark = pytest.mark.real_waits


def _rows(tmp_path: Path, n: int) -> Path:
    p = tmp_path / "rows.jsonl"
    p.write_bytes(b"".join(orjson.dumps({"id": f"r{i}", "question": f"{i} + 1"}) + b"\n" for i in range(n)))
    return p


@dataclass
class Seen:
    """One request as the server saw it."""

    t: float
    model: str
    key: str  # the request's messages: the same for every attempt of one request
    status: int


@dataclass
class Gateway:
    """A server with a fixed 1-s window per model (`limits`: model → requests per window; absent =
    unlimited), optional x-ratelimit headers, and a `sporadic(key, attempt)` 429 rule."""

    limits: dict[str, int] = field(default_factory=dict)
    headers: bool = False
    sporadic: Callable[[str, int], bool] = lambda key, attempt: False
    seen: list[Seen] = field(default_factory=list)
    base_url: str = ""
    _windows: dict[str, tuple[int, int]] = field(default_factory=dict)  # model → (window, used)
    _attempts: dict[str, int] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        model, key = body["model"], orjson.dumps(body["messages"]).decode()
        now = time.monotonic()
        self._attempts[key] = attempt = self._attempts.get(key, 0) + 1
        headers: dict[str, str] = {}
        status = 200
        limit = self.limits.get(model)
        if limit is not None:
            window = int(now)
            w, used = self._windows.get(model, (window, 0))
            if w != window:
                used = 0
            reset_ms = max(1, int((window + 1 - now) * 1000))
            if used >= limit:
                status = 429
                headers["Retry-After"] = str(max(1, round(reset_ms / 1000)))
            else:
                used += 1
            self._windows[model] = (window, used)
            if self.headers:
                headers.update(
                    {
                        "x-ratelimit-limit-requests": str(limit * 60),
                        "x-ratelimit-remaining-requests": str(limit - used),
                        "x-ratelimit-reset-requests": f"{reset_ms}ms",
                    }
                )
        if status == 200 and self.sporadic(key, attempt):
            status = 429
            headers["Retry-After"] = "1"
        self.seen.append(Seen(now, model, key, status))
        if status == 429:
            err = {"error": {"message": "rate limited", "type": "rate_limit_error"}}
            return web.Response(
                status=429, body=orjson.dumps(err), headers={"Content-Type": "application/json", **headers}
            )
        return web.Response(body=orjson.dumps(completion()), headers={"Content-Type": "application/json", **headers})


@pytest.fixture
def gateway(loop_thread: LoopThread) -> Iterator[Callable[..., Gateway]]:
    runners: list[web.AppRunner] = []

    def start(**kw: Any) -> Gateway:
        gw = Gateway(**kw)
        gw.base_url, runner = loop_thread.call(serve_loopback(gw.handle))
        runners.append(runner)
        return gw

    yield start
    for r in runners:
        loop_thread.call(r.cleanup())


def _run(cli, tmp_path: Path, url: str, rows: int, models: list[str], **provider: Any):
    cfg = base_config(tmp_path, _rows(tmp_path, rows), url)
    cfg["models"] = models
    cfg["providers"]["sim"].update(provider)
    cfg["retry"] = {"max_attempts": 8, "backoff_initial_s": 0.05, "backoff_max_s": 0.5}
    r = cli("run", write_config(tmp_path, cfg), "--no-progress")
    assert r.code == 0, r.err
    df = read_results(r.run_dir)
    assert len(df) == rows * len(models) and df.request_id.is_unique and set(df.status) == {"ok"}
    return r, df


@pytest.mark.parametrize("p", [0.05, 0.15, 0.30])
def test_sporadic_429s_delay_their_own_request_only(tmp_path, gateway, cli, p: float) -> None:
    every = round(1 / p)
    order: dict[str, int] = {}

    def sporadic(key: str, attempt: int) -> bool:
        return attempt == 1 and order.setdefault(key, len(order)) % every == 0

    gw = gateway(sporadic=sporadic)
    n = 40
    _run(cli, tmp_path, gw.base_url, n, ["m"], max_concurrency=8)
    firsts = [s for i, s in enumerate(gw.seen) if s.key not in {x.key for x in gw.seen[:i]}]
    retries = [s for i, s in enumerate(gw.seen) if s.key in {x.key for x in gw.seen[:i]}]
    assert len(firsts) == n and len(retries) == len(range(0, n, every))
    # nothing waited for another request's Retry-After: every first attempt went out before the
    # first retry (the old limiter blocked the whole model for each 429's Retry-After, and cut
    # its rate by 0.7 per 429)
    assert max(s.t for s in firsts) < min(s.t for s in retries)


def test_two_models_with_different_server_limits_do_not_hold_each_other(tmp_path, gateway, cli) -> None:
    gw = gateway(limits={"slow": 3})  # 3 per 1-s window for "slow"; "fast" is unlimited
    _run(cli, tmp_path, gw.base_url, 12, ["slow", "fast"], max_concurrency=4)
    slow_ok = [s.t for s in gw.seen if s.model == "slow" and s.status == 200]
    fast = [s.t for s in gw.seen if s.model == "fast"]
    assert len(fast) == 12 and all(s.status == 200 for s in gw.seen if s.model == "fast")
    # slow needs at least 4 windows for its 12; fast is done before slow's third window opens
    assert max(fast) < sorted(slow_ok)[6]
    slow_429 = sum(1 for s in gw.seen if s.model == "slow" and s.status == 429)
    assert slow_429 <= 12  # learned the window instead of hammering it


def test_a_server_window_announced_in_x_ratelimit_headers_is_learned(tmp_path, gateway, cli) -> None:
    gw = gateway(limits={"m": 5}, headers=True)  # 5 per 1-s window, announced as 300 per minute
    _run(cli, tmp_path, gw.base_url, 20, ["m"], max_concurrency=4)
    rejected = [s for s in gw.seen if s.status == 429]
    # at most the first burst, sent before any answer told the limit; after that, even pacing
    assert len(rejected) <= 4
    first_answer = gw.seen[0].t
    late = [s for s in rejected if s.t > first_answer + 0.5]
    assert late == []


def test_a_full_window_told_by_headers_holds_the_lane_not_the_other_model(tmp_path, gateway, cli) -> None:
    gw = gateway(limits={"slow": 2}, headers=True)
    _run(cli, tmp_path, gw.base_url, 8, ["slow", "fast"], max_concurrency=2)
    fast = [s.t for s in gw.seen if s.model == "fast"]
    slow_ok = sorted(s.t for s in gw.seen if s.model == "slow" and s.status == 200)
    assert len(fast) == 8 and max(fast) < slow_ok[4]  # fast finished within slow's first two windows
