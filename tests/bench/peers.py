"""Peers beside evalrun and the floor, in one invocation, on the same simulator and workload
(issue 13): the OpenAI Python SDK with asyncio.gather, and inspect_ai.

    python tests/bench/peers.py [--n 2000] [--reps 3] [--latency-ms 0]
    python tests/bench/bench.py --peers [--only 1]      (the same, as case 6 of the benchmark)

The peers are installed from PyPI with pip's ordinary client into a cache folder
(~/.cache/evalrun-bench-peers/<name>), never into the project's environment, and put on the
PYTHONPATH of their own subprocess only. A peer that cannot be installed or run is reported
with the reason. Each run is measured as its own process with os.wait4 (bench.measure).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "evalrun-bench-peers"

OPENAI_CLIENT = """
import asyncio, json, sys
from openai import AsyncOpenAI

async def main(url, path, concurrency):
    bodies = [json.loads(line) for line in open(path) if line.strip()]
    client = AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=0, timeout=60)
    sem = asyncio.Semaphore(concurrency)

    async def one(body):
        async with sem:
            r = await client.chat.completions.create(**body)
            return r.choices[0].logprobs is not None

    ok = await asyncio.gather(*(one(b) for b in bodies))
    print(f"ok={sum(ok)} total={len(ok)}")
    await client.close()
    return 0 if all(ok) else 1

sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
"""


INSPECT_TASK = """
import json, os
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.solver import generate

PROMPT = "Write a short note about the {op} of {a} and {b}."  # bench.PROMPT

@task
def bench():
    rows = [json.loads(line) for line in open(os.environ["BENCH_DATA"]) if line.strip()]
    return Task(dataset=[Sample(input=PROMPT.format(**r), id=r["id"]) for r in rows], solver=generate())
"""


def inspect_cmd(task: Path, log_dir: Path) -> list[str]:
    """inspect_ai takes the task file relative to the working directory (the work dir here)."""
    # -M responses_api=false: inspect's openai provider otherwise calls /v1/responses, which an
    # OpenAI-compatible chat server (the simulator, most gateways) answers 404
    return [
        bench.PY,
        "-m",
        "inspect_ai",
        "eval",
        task.name,
        "--model",
        f"openai/{bench.MODEL}",
        "-M",
        "responses_api=false",
        "--max-connections",
        str(bench.CONCURRENCY),
        "--max-tokens",
        "16",
        "--logprobs",
        "--top-logprobs",
        "5",
        "--display",
        "none",
        "--log-dir",
        str(log_dir),
    ]


def install(name: str, spec: str) -> tuple[Path | None, str]:
    target = CACHE / name
    if (target / ".installed").exists():
        return target, "cached"
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [bench.PY, "-m", "pip", "install", "-q", "--target", str(target), spec],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if r.returncode != 0:
        return None, f"pip install {spec} failed: {r.stderr.strip()[-400:]}"
    (target / ".installed").write_text(spec)
    return target, "installed"


def run_peers(
    b: bench.Bench, n: int, reps: int, latency_ms: float
) -> tuple[dict[str, list[tuple[float, float, float]]], list[str]]:
    """(who → [(wall s, CPU ms per request, peak RSS MB)] per repetition, notes), all in this
    invocation, alternated so that other people's load falls on each alike."""
    work = b.work
    notes = []
    sdk, how = install("openai", "openai")
    notes.append(f"openai: {how}")
    script = work / "openai_client.py"
    script.write_text(OPENAI_CLIENT)
    data = b.dataset(n)
    bodies = bench.write_bodies(data, work / f"bodies_{n}.jsonl")
    insp, how = install("inspect_ai", "inspect-ai")
    notes.append(f"inspect_ai: {how}")
    task = work / "inspect_task.py"
    task.write_text(INSPECT_TASK)
    results: dict[str, list[tuple[float, float, float]]] = {
        "floor": [],
        "evalrun": [],
        "openai SDK + gather": [],
        "inspect_ai": [],
    }
    for _ in range(reps):
        f = b.run_floor("floor", n, latency_ms=latency_ms, timeout_s=300)
        results["floor"].append((f.m.wall_s, f.cpu_ms_per_req, f.m.maxrss_mb))
        e = b.run_evalrun("evalrun", n, latency_ms=latency_ms, timeout_s=300)
        results["evalrun"].append((e.m.wall_s, e.cpu_ms_per_req, e.m.maxrss_mb))
        if sdk is not None:
            with bench.Sim(work, latency_ms) as sim:
                bench.wait_quiet()
                env = {**bench.ENV, "PYTHONPATH": str(sdk)}
                m = bench.measure(
                    [bench.PY, str(script), sim.base_url, str(bodies), str(bench.CONCURRENCY)], 600, env=env
                )
            if m.rc != 0:
                notes.append(f"openai SDK run exit {m.rc}: {m.stderr.strip()[-300:]}")
            else:
                results["openai SDK + gather"].append((m.wall_s, m.cpu_s / n * 1000, m.maxrss_mb))
        if insp is not None and sdk is not None:
            with bench.Sim(work, latency_ms) as sim:
                bench.wait_quiet()
                env = {
                    **bench.ENV,
                    "PYTHONPATH": f"{insp}{os.pathsep}{sdk}",
                    "OPENAI_BASE_URL": sim.base_url,
                    "OPENAI_API_KEY": "sk-bench",
                    "BENCH_DATA": str(data),
                }
                m = bench.measure(inspect_cmd(task, work / "inspect-logs"), 900, env=env)
                served = sim.stats().get("by_status", {}).get("200", 0)
            if m.rc != 0 or served < n:
                notes.append(f"inspect_ai run exit {m.rc}, {served} answers: {m.stderr.strip()[-300:]}")
            else:
                results["inspect_ai"].append((m.wall_s, m.cpu_s / n * 1000, m.maxrss_mb))
    return results, notes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    args = ap.parse_args()
    bench.QUIET_WAIT_S = 10.0  # many runs in one invocation: see bench.QUIET_WAIT_S
    work = Path(tempfile.mkdtemp(prefix="evalrun-peers-"))
    os.chdir(work)
    results, notes = run_peers(bench.Bench(work, sys.stderr), args.n, args.reps, args.latency_ms)
    print(f"N={args.n}, {args.latency_ms:g} ms latency, concurrency {bench.CONCURRENCY}, {args.reps} reps (median)")
    print("| who | wall s | CPU ms/request | peak RSS MB |")
    print("|---|---:|---:|---:|")
    for who, rs in results.items():
        if rs:
            w, c, r = (statistics.median(x[i] for x in rs) for i in range(3))
            print(f"| {who} | {w:.2f} | {c:.3f} | {r:.0f} |")
    for n in notes:
        print(f"- {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
