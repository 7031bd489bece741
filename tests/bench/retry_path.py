"""CPU of the retry loop alone: `Attempts.run` over an in-memory client, two commits alternated.

    python tests/bench/retry_path.py BEFORE AFTER [--n 20000] [--reps 3]

Each commit's evalrun/ is exported as ab_bench.py does, and each measurement runs in its own
process: N requests, 100 at a time, through `Attempts.run` with a client that answers at once
(no network, no parsing), so what is left is the loop's own work: slots, limiter, admission,
classify and, after a failure, the retry policy. Two cases: every request answered at once
(the fast path), and every request failing once with a retryable 500, then answered (the retry
path; the retry wait is 1 µs, so the wait itself costs one timer). Prints µs of CPU per request,
medians of `--reps`.
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
import ab_bench
import bench

CHILD = r"""
import asyncio, sys, time
from evalrun.config.models import RetryConfig
from evalrun.run.send import attempts as A
from evalrun.run.send.attempts import Admission, Attempts, Lane
from evalrun.run.http.client import Sent
from evalrun.run.http.errors import APIStatusError
from evalrun.run.rate.limiter import ModelLimiter
from evalrun.run.records.records import Cell, Choice, Completion, RequestSpec, Usage
from evalrun.run.send.slots import Slots
from evalrun.run.send.stops import Stops

n, fail = int(sys.argv[1]), sys.argv[2] == "1"
A.retry_wait = lambda *a, **k: 1e-6  # a real (timer) wait, without sleeping for long
OK = Completion("id", "m", [Choice(0, "42", "stop")], Usage(total_tokens=3))

class Client:
    def __init__(self):
        self.tried = set()
    async def send(self, spec):
        if fail and spec.request_id not in self.tried:
            self.tried.add(spec.request_id)
            return Sent("http://127.0.0.1:9/v1", 0.0, error=APIStatusError(500, "busy"))
        return Sent("http://127.0.0.1:9/v1", 0.0, completion=OK)
    def note_failure(self, url): ...
    def note_success(self, url): ...

async def main():
    cell = Cell("c", "p", "m", "p", {})
    specs = [RequestSpec(f"r{i}", cell, f"row{i}", 0, [], {}, 1) for i in range(n)]
    attempts = Attempts(RetryConfig(max_attempts=3), Stops(), Admission(), {})
    lane = Lane("p", "m", iter([]), Client(), ModelLimiter("m", None, None), Slots(100), 100)
    t0 = time.process_time()
    for i in range(0, n, 100):
        rows = await asyncio.gather(*(attempts.run(s, lane) for s in specs[i : i + 100]))
        assert all(r is not None and r.ok and r.attempts == (2 if fail else 1) for r in rows)
    print((time.process_time() - t0) / n * 1e6)

asyncio.run(main())
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="evalrun-retry-path-"))
    trees = {name: ab_bench.export(c, work / name) for name, c in (("before", args.before), ("after", args.after))}
    us: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.reps):
        for case in ("0", "1"):
            for name, tree in trees.items():
                env = {**os.environ, "PYTHONPATH": str(tree)}
                out = subprocess.run(
                    [bench.PY, "-c", CHILD, str(args.n), case], env=env, capture_output=True, text=True, check=True
                )
                us.setdefault((name, case), []).append(float(out.stdout))
    print(f"N={args.n}, 100 at a time, {args.reps} reps (median µs of CPU per request)")
    print("| who | answered at once | each failing once (a 500), then answered | retry path |")
    print("|---|---:|---:|---:|")
    for name in trees:
        fast, retried = statistics.median(us[(name, "0")]), statistics.median(us[(name, "1")])
        print(f"| {name} | {fast:.1f} | {retried:.1f} | {retried - fast:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
