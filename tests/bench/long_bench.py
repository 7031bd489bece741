"""Long answers (issue 23): ~2,000 completion tokens with top-5 logprobs, evalrun beside the floor.

    python tests/bench/long_bench.py [--n 1000] [--reps 3] [--concurrency 100] [--stream]
                                     [--worktree] [--startup]

A fake OpenAI-compatible server (`serve`, below: aiohttp.web in its own process on 127.0.0.1,
0 ms) answers every chat completion with the same ~2,000-token answer, each token with its
top-5 logprobs (≈ 0.9 MB of JSON); with `stream: true` the same answer as one SSE chunk per
token, then the finish chunk and a usage chunk. The bodies are built once, so the server's
CPU is the same for every client.

The floor is bare aiohttp in the same invocation: floor_client.py (json.loads of every body),
or, with --stream, `stream_floor` below (json.loads of every SSE data line). Runs alternate
floor, evalrun, floor, evalrun, … against one fresh server each; every process is measured
through bench.measure (a launcher's os.wait4: user+sys CPU and peak RSS of exactly that process). Medians of
--reps are printed as a Markdown table.

--startup measures `evalrun run` of 1 request against the simulator instead: the CPU the
process has used when its first request goes out (tests/bench/startup_probe.py), and `--help`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench

TOKENS = 2000
HEAP = False  # --heap: evalrun under tests/bench/heap_top.py (tracemalloc), the top sites printed
WORDS = ("the", " model", " answer", " of", " a", " long", " note", "é", " 42", ",", " and", " then", ".", " ∑")


def _entry(rng: random.Random) -> dict[str, Any]:
    def one() -> dict[str, Any]:
        w = rng.choice(WORDS)
        return {"token": w, "logprob": round(-rng.random() * 8, 6), "bytes": list(w.encode())}

    head = one()
    return {**head, "top_logprobs": [one() for _ in range(5)]}


def answer_bodies() -> tuple[bytes, bytes]:
    """(the JSON answer, the SSE stream) of one long answer."""
    rng = random.Random(23)
    entries = [_entry(rng) for _ in range(TOKENS)]
    content = "".join(e["token"] for e in entries)
    usage = {"prompt_tokens": 14, "completion_tokens": TOKENS, "total_tokens": TOKENS + 14}
    base = {"id": "chatcmpl-long", "created": 1, "model": bench.MODEL}
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "message": message, "logprobs": {"content": entries}, "finish_reason": "length"}
    body = json.dumps({**base, "object": "chat.completion", "choices": [choice], "usage": usage}).encode()
    chunks = []
    for i, e in enumerate(entries):
        delta = {"role": "assistant", "content": e["token"]} if i == 0 else {"content": e["token"]}
        ch = {"index": 0, "delta": delta, "logprobs": {"content": [e]}, "finish_reason": None}
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [ch]})
    chunks.append(
        {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    )
    chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    stream = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    return body, stream


def serve() -> None:
    """The fake server: prints `listening on http://127.0.0.1:<port>/v1` once ready."""
    import asyncio

    from aiohttp import web

    body, stream = answer_bodies()
    served = {"n": 0}

    async def chat(request: web.Request) -> web.StreamResponse:
        req = await request.json()
        served["n"] += 1
        if not req.get("stream"):
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(0, len(stream), 65536):
            await resp.write(stream[i : i + 65536])
        await resp.write_eof()
        return resp

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"served": served["n"]})

    async def main() -> None:
        app = web.Application(client_max_size=2**24)
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"listening on http://127.0.0.1:{port}/v1", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


STREAM_FLOOR = """
import asyncio, json, sys
import aiohttp

async def main(url, path, concurrency):
    bodies = [line.rstrip(b"\\n") for line in open(path, "rb") if line.strip()]
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(body):
            async with sem, session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                usage = None
                async for line in resp.content:
                    if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
                        usage = json.loads(line[6:]).get("usage") or usage
                return resp.status == 200 and usage is not None
        ok = await asyncio.gather(*(one(b) for b in bodies))
    print(f"ok={sum(ok)} total={len(ok)}")
    return 0 if all(ok) else 1

sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
"""


class Server:
    def __init__(self, workdir: Path) -> None:
        self.proc = subprocess.Popen(
            [bench.PY, __file__, "serve"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=bench.ENV
        )
        line = self.proc.stdout.readline().decode()  # type: ignore[union-attr]
        if "listening on " not in line:
            self.close()
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.base_url = line.split("listening on ", 1)[1].strip()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        if self.proc.stdout:
            self.proc.stdout.close()


def params(stream: bool) -> dict[str, Any]:
    p: dict[str, Any] = {"max_tokens": TOKENS + 48, "logprobs": True, "top_logprobs": 5}
    if stream:
        p.update(stream=True, stream_options={"include_usage": True})
    return p


def write_inputs(work: Path, n: int, stream: bool) -> tuple[Path, Path]:
    data = bench.write_dataset(work / f"data_{n}.jsonl", n)
    bodies = work / f"bodies_{n}_{int(stream)}.jsonl"
    with data.open() as src, bodies.open("w") as out:
        for line in src:
            msg = {"role": "user", "content": bench.PROMPT.format(**json.loads(line))}
            out.write(json.dumps({"model": bench.MODEL, **params(stream), "messages": [msg]}) + "\n")
    return data, bodies


def run_one(work: Path, who: str, n: int, concurrency: int, stream: bool, k: int) -> dict[str, Any]:
    data, bodies = write_inputs(work, n, stream)
    server = Server(work)
    try:
        url = server.base_url
        if who == "floor":
            script = [bench.PY, "-c", STREAM_FLOOR] if stream else bench.FLOOR
            m = bench.measure([*script, url + "/chat/completions", str(bodies), str(concurrency)], 1800)
            ok = m.rc == 0 and f"ok={n} total={n}" in m.stdout
            extra: dict[str, Any] = {}
        else:
            d = work / f"run{k:03d}"
            d.mkdir()
            cfg = {
                "experiment": "long",
                "providers": {"local": {"kind": "openai", "base_urls": [url], "max_concurrency": concurrency}},
                "models": [bench.MODEL],
                "params": params(stream),
                "prompts": {"note": [{"role": "user", "content": bench.PROMPT}]},
                "dataset": {"path": str(data)},
                "reports_dir": str(d / "reports"),
            }
            (d / "experiment.yaml").write_text(json.dumps(cfg))
            run = d / "run"
            evalrun = [bench.PY, str(bench.HERE / "heap_top.py")] if HEAP else bench.EVALRUN
            cmd = [*evalrun, "run", str(d / "experiment.yaml"), "--no-progress", "--run-dir", str(run)]
            m = bench.measure(cmd, 1800, watch=run)
            if HEAP:
                print("\n".join(ln for ln in m.stderr.splitlines() if ln.startswith("heap:")), file=sys.stderr)
            man = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").exists() else {}
            c = man.get("counts", {})
            ok = m.rc == 0 and (c.get("ok"), c.get("rows")) == (n, n)
            extra = {"rss_by_phase": {k: round(v) for k, v in m.rss_by_phase.items()}}
            if run.exists():
                extra["journal_mb"] = round((run / "journal.jsonl").stat().st_size / 2**20, 1)
            extra["parquet_mb"] = round((run / "results.parquet").stat().st_size / 2**20, 1) if ok else None
            shutil.rmtree(d, ignore_errors=True)  # N × 0.9 MB answers: keep the disk free
    finally:
        server.close()
    row = {"who": who, "n": n, "c": concurrency, "stream": stream, "ok": ok, "wall_s": round(m.wall_s, 2)}
    row.update(cpu_s=round(m.cpu_s, 2), rss_mb=round(m.maxrss_mb), **extra)
    if not ok:
        row["err"] = (m.stdout + m.stderr)[-600:]
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def startup(work: Path, reps: int) -> None:
    """CPU of `evalrun run` (1 request, the simulator) up to its first request, and of --help."""
    rows = []
    for _ in range(reps):
        with bench.Sim(work) as sim:
            data = bench.write_dataset(work / "data_1.jsonl", 1)
            d = Path(tempfile.mkdtemp(dir=work))
            cfg = bench.write_config(d / "experiment.yaml", sim.base_url, data)
            probe = [bench.PY, str(bench.HERE / "startup_probe.py")]
            m = bench.measure([*probe, "run", str(cfg), "--no-progress", "--run-dir", str(d / "run")], 120)
        first = [ln for ln in m.stderr.splitlines() if ln.startswith("bench: first request at cpu")]
        cpu_first = float(first[0].split()[-2]) if first else float("nan")
        h = bench.measure([*bench.EVALRUN, "--help"], 60)
        rows.append((cpu_first, m.cpu_s, h.cpu_s, h.wall_s))
        print(rows[-1], file=sys.stderr, flush=True)
    med = [statistics.median(r[i] for r in rows) for i in range(4)]
    print(f"| what | median of {reps} |")
    print("|---|---:|")
    print(f"| `evalrun run`, 1 request: CPU before the first request is sent | {med[0]:.3f} s |")
    print(f"| `evalrun run`, 1 request: CPU of the whole process | {med[1]:.3f} s |")
    print(f"| `evalrun --help`: CPU / wall | {med[2]:.3f} s / {med[3]:.3f} s |")


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        serve()
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1000])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[100])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--startup", action="store_true")
    ap.add_argument(
        "--heap", action="store_true", help="evalrun under tracemalloc: print where the memory is at its peak"
    )
    ap.add_argument("--worktree", action="store_true", help="measure the checkout as is, not a snapshot of HEAD")
    args = ap.parse_args()
    global HEAP
    HEAP = args.heap
    work = Path(tempfile.mkdtemp(prefix="evalrun-long-"))
    os.chdir(work)
    if not args.worktree:
        bench.snapshot_head(work)
    bench.measure([bench.PY, "-c", bench.WARM], 300)
    if args.startup:
        startup(work, args.reps)
        return 0
    rows: list[dict[str, Any]] = []
    k = 0
    for n in args.n:
        for c in args.concurrency:
            for _ in range(args.reps):
                for who in ("floor", "evalrun")[1 if args.no_floor else 0 :]:
                    k += 1
                    rows.append(run_one(work, who, n, c, args.stream, k))
    mode = "streamed" if args.stream else "one JSON body"
    print(f"\n{TOKENS}-token answers, top-5 logprobs, {mode}; medians of {args.reps} (floor and evalrun alternated)")
    print("| who | N | concurrency | wall s | CPU s | CPU ÷ floor | peak RSS MB | all ok |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for n in args.n:
        for c in args.concurrency:
            floor_cpu = None
            for who in ("floor", "evalrun"):
                rs = [r for r in rows if (r["who"], r["n"], r["c"]) == (who, n, c)]
                if not rs:
                    continue
                cpu = statistics.median(r["cpu_s"] for r in rs)
                floor_cpu = cpu if who == "floor" else floor_cpu
                ratio = f"{cpu / floor_cpu:.2f}" if floor_cpu and who != "floor" else "—"
                wall = statistics.median(r["wall_s"] for r in rs)
                rss = statistics.median(r["rss_mb"] for r in rs)
                print(
                    f"| {who} | {n} | {c} | {wall:.1f} | {cpu:.1f} | {ratio} | {rss:.0f} | {all(r['ok'] for r in rs)} |"
                )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
