"""Before/after in one invocation: `evalrun run` from two commits, alternated, beside the floor.

    python tests/bench/ab_bench.py BEFORE AFTER [--latency-ms 0] [--n 2000] [--reps 3] [--sim-extra ARGS]

Each commit's evalrun/ is exported with `git archive` into a temp dir and put first on
PYTHONPATH of its subprocesses (as bench.py does for HEAD). Runs go floor, BEFORE, AFTER, floor,
BEFORE, AFTER, … each against a fresh simulator, so other people's load falls on all three
alike; medians are printed, with the time from the last answer to exit (from the simulator's
arrival times) and the journal size. `--sim-extra "--rate-500 0.1"` gives evalrun's simulators
faults, to measure the retry path (the floor's stays fault-free: it does not retry; the
"problems" lines then list the retries, as expected).
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


def export(commit: str, dest: Path) -> Path:
    dest.mkdir()
    archive = subprocess.run(["git", "archive", commit, "evalrun"], cwd=bench.ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sim-extra", default="", help="extra `evalrun serve-sim` flags for evalrun's runs")
    args = ap.parse_args()
    bench.QUIET_WAIT_S = 10.0  # many runs in one invocation: see bench.QUIET_WAIT_S
    work = Path(tempfile.mkdtemp(prefix="evalrun-ab-"))
    os.chdir(work)
    trees = {name: export(c, work / name) for name, c in (("before", args.before), ("after", args.after))}
    base_env = dict(bench.ENV)
    b = bench.Bench(work, sys.stderr)
    results: dict[str, list[bench.RunResult]] = {"floor": [], "before": [], "after": []}
    for _ in range(2):
        for tree in trees.values():
            bench.measure([bench.PY, "-c", bench.WARM], 300, env={**base_env, "PYTHONPATH": str(tree)})
    for _ in range(args.reps):
        results["floor"].append(b.run_floor("floor", args.n, latency_ms=args.latency_ms, timeout_s=300))
        for name, tree in trees.items():
            bench.ENV.clear()
            bench.ENV.update({**base_env, "PYTHONPATH": str(tree)})
            results[name].append(
                b.run_evalrun(name, args.n, latency_ms=args.latency_ms, sim_extra=args.sim_extra.split(), timeout_s=300)
            )
    bench.ENV.clear()
    bench.ENV.update(base_env)

    def tail(r: bench.RunResult) -> float:
        return r.m.wall_s - r.phase_s  # start-up + the end, outside the request phase

    print(f"N={args.n}, {args.latency_ms:g} ms latency, concurrency {bench.CONCURRENCY}, {args.reps} reps (median)")
    print("| who | wall s | CPU ms/request | outside the request phase s | peak RSS MB | journal KB/request |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rs in results.items():
        j = ""
        if name != "floor":
            sizes = [(r.run_dir / "journal.jsonl").stat().st_size / r.n / 1024 for r in rs if r.run_dir]
            j = f"{statistics.median(sizes):.2f}"
        print(
            f"| {name} | {statistics.median(r.m.wall_s for r in rs):.2f} | "
            f"{statistics.median(r.cpu_ms_per_req for r in rs):.3f} | {statistics.median(tail(r) for r in rs):.2f} | "
            f"{statistics.median(r.m.maxrss_mb for r in rs):.0f} | {j} |"
        )
    for rs in results.values():
        for r in rs:
            if r.problems:
                print(f"problems ({r.who}): {r.problems}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
