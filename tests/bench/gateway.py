"""A scripted OpenAI-compatible gateway for the rate-control benchmark (tests/bench/rate_bench.py).

    python tests/bench/gateway.py --port 0 [--latency-ms 0] [--p429 0.15] [--window-limit 10]
                                  [--window-s 1] [--headers] [--seed 1]

Behaviours, each like a real gateway:
  --p429 P          sporadic upstream 429s: each request, whatever the client's rate, gets 429
                    with `Retry-After: 1` with probability P (seeded)
  --window-limit L  a fixed window per model: at most L requests per --window-s; more get 429 with
                    Retry-After = seconds to the window's end (rounded up)
  --headers         send x-ratelimit-limit/remaining/reset-requests (the limit as per minute)

Every arrival is logged; GET /stats returns them: [[t, model, key, status], ...] with t in
monotonic seconds of this process and key a hash of the messages (the same for every attempt
of one request). Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--p429", type=float, default=0.0)
    ap.add_argument("--window-limit", type=int)
    ap.add_argument("--window-s", type=float, default=1.0)
    ap.add_argument("--headers", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    log: list[list[object]] = []
    windows: dict[str, tuple[int, int]] = {}
    ok_body = json.dumps(BODY).encode()
    err_body = json.dumps({"error": {"message": "rate limited", "type": "rate_limit_error"}}).encode()

    async def chat(request: web.Request) -> web.Response:
        raw = await request.read()
        now = time.monotonic()
        payload = json.loads(raw)
        model = payload.get("model", "")
        key = hashlib.blake2b(json.dumps(payload.get("messages")).encode(), digest_size=6).hexdigest()
        headers = {"Content-Type": "application/json"}
        status = 200
        if a.window_limit is not None:
            w = math.floor(now / a.window_s)
            cur, used = windows.get(model, (w, 0))
            if cur != w:
                used = 0
            left_s = (w + 1) * a.window_s - now
            if used >= a.window_limit:
                status = 429
                headers["Retry-After"] = str(max(1, math.ceil(left_s)))
            else:
                used += 1
            windows[model] = (w, used)
            if a.headers:
                headers["x-ratelimit-limit-requests"] = str(round(a.window_limit * 60 / a.window_s))
                headers["x-ratelimit-remaining-requests"] = str(a.window_limit - used)
                headers["x-ratelimit-reset-requests"] = f"{max(1, int(left_s * 1000))}ms"
        if status == 200 and a.p429 and rng.random() < a.p429:
            status = 429
            headers["Retry-After"] = "1"
        log.append([now, model, key, status])
        if a.latency_ms:
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
