"""A scripted OpenAI-compatible gateway for the rate-control benchmark (tests/bench/rate_bench.py).

    python tests/bench/gateway.py --port 0 [--latency-ms 0] [--p429 0.15] [--window-limit 10]
                                  [--window-s 1] [--sliding] [--headers-on none|429|all]
                                  [--retry-after window|none|SECONDS] [--reject-after-latency]
                                  [--token-limit T] [--raise-at S --raise-factor F] [--seed 1]

Behaviours, each like a real gateway (the scenario matrix of issue 24 is made of these knobs):
  --p429 P          sporadic upstream 429s: each request, whatever the client's rate, gets 429
                    with `Retry-After: 1` with probability P (seeded)
  --window-limit L  at most L requests per --window-s per model; more get 429. A fixed window by
                    default (resets at multiples of --window-s), a sliding one with --sliding
  --token-limit T   at most T tokens per window per model (each request costs its usage, 14)
  --headers-on W    where x-ratelimit-limit/remaining/reset-requests (and -tokens with a token
                    limit) are sent: none, on 429s only, or on every answer (limits per minute).
                    --headers is --headers-on all.
  --retry-after R   on window 429s: "window" (seconds to the window's end, rounded up; the
                    default), "none", or a fixed number of seconds
  --reject-after-latency  429s (window and sporadic) come after the latency like 200s (default:
                    at once, as real gateways reject before the upstream is asked)
  --raise-at S, --raise-factor F  the limits are multiplied by F S seconds after the first request

Every arrival is logged; GET /stats returns them: [[t, model, key, status], ...] with t in
monotonic seconds of this process and key a hash of the messages (the same for every attempt
of one request). Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import math
import random
import time

from aiohttp import web

BODY = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 13, "completion_tokens": 1, "total_tokens": 14},
}
COST = BODY["usage"]["total_tokens"]  # type: ignore[index]


class Window:
    """One model's window: the accepted requests (time, tokens) the server still counts."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.kept: collections.deque[float] = collections.deque()
        self.fixed_start = 0.0

    def _start(self, now: float) -> float:
        """Where the window counting `now` starts."""
        if self.a.sliding:
            return now - self.a.window_s
        return math.floor(now / self.a.window_s) * self.a.window_s

    def _reset_s(self, now: float) -> float:
        if self.a.sliding:
            return (self.kept[0] + self.a.window_s - now) if self.kept else 0.0
        return self._start(now) + self.a.window_s - now

    def admit(self, now: float, factor: float) -> tuple[bool, dict[str, str], float]:
        """(accepted, rate headers, seconds until the window frees)."""
        start = self._start(now)
        while self.kept and self.kept[0] < start:
            self.kept.popleft()
        req_limit = None if self.a.window_limit is None else int(self.a.window_limit * factor)
        tok_limit = None if self.a.token_limit is None else int(self.a.token_limit * factor)
        used = len(self.kept)
        ok = (req_limit is None or used < req_limit) and (tok_limit is None or (used + 1) * COST <= tok_limit)
        if ok:
            self.kept.append(now)
            used += 1
        reset = max(0.001, self._reset_s(now))
        per_min = 60 / self.a.window_s
        h: dict[str, str] = {}
        if req_limit is not None:
            h["x-ratelimit-limit-requests"] = str(round(req_limit * per_min))
            h["x-ratelimit-remaining-requests"] = str(max(0, req_limit - used))
            h["x-ratelimit-reset-requests"] = f"{int(reset * 1000)}ms"
        if tok_limit is not None:
            left = max(0, tok_limit - used * COST)
            h["x-ratelimit-limit-tokens"] = str(round(tok_limit * per_min))
            h["x-ratelimit-remaining-tokens"] = str(left if left >= COST else 0)
            h["x-ratelimit-reset-tokens"] = f"{int(reset * 1000)}ms"
        return ok, h, reset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--p429", type=float, default=0.0)
    ap.add_argument("--window-limit", type=int)
    ap.add_argument("--token-limit", type=int)
    ap.add_argument("--window-s", type=float, default=1.0)
    ap.add_argument("--sliding", action="store_true")
    ap.add_argument("--headers", action="store_true")
    ap.add_argument("--headers-on", choices=("none", "429", "all"), default="none")
    ap.add_argument("--retry-after", default="window")
    ap.add_argument("--reject-after-latency", action="store_true")
    ap.add_argument("--raise-at", type=float)
    ap.add_argument("--raise-factor", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.headers:
        a.headers_on = "all"
    rng = random.Random(a.seed)
    log: list[list[object]] = []
    windows: dict[str, Window] = {}
    ok_body = json.dumps(BODY).encode()
    err_body = json.dumps({"error": {"message": "rate limited", "type": "rate_limit_error"}}).encode()
    limited = a.window_limit is not None or a.token_limit is not None

    async def chat(request: web.Request) -> web.Response:
        raw = await request.read()
        now = time.monotonic()
        payload = json.loads(raw)
        model = payload.get("model", "")
        key = hashlib.blake2b(json.dumps(payload.get("messages")).encode(), digest_size=6).hexdigest()
        headers = {"Content-Type": "application/json"}
        status = 200
        if limited:
            factor = a.raise_factor if a.raise_at is not None and log and now - log[0][0] >= a.raise_at else 1.0
            ok, rate_headers, reset = windows.setdefault(model, Window(a)).admit(now, factor)
            if not ok:
                status = 429
                if a.retry_after == "window":
                    headers["Retry-After"] = str(max(1, math.ceil(reset)))
                elif a.retry_after != "none":
                    headers["Retry-After"] = a.retry_after
            if a.headers_on == "all" or (a.headers_on == "429" and status == 429):
                headers.update(rate_headers)
        sporadic = status == 200 and a.p429 and rng.random() < a.p429
        if sporadic:
            status = 429
            headers["Retry-After"] = "1"
        log.append([now, model, key, status])
        if a.latency_ms and (status == 200 or a.reject_after_latency):
            await asyncio.sleep(a.latency_ms / 1000)
        return web.Response(status=status, body=ok_body if status == 200 else err_body, headers=headers)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(log)

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", a.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"gateway listening on http://127.0.0.1:{port}/v1", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(start())
    except ImportError:
        asyncio.run(start())


if __name__ == "__main__":
    main()
