"""Benchmark: one Redis-shared budget across processes (issue 11).

    python tests/bench/shared_bench.py [--requests 300] [--out tests/bench/RESULTS-shared.md]

A gateway (tests/bench/gateway.py) enforces 600 rpm as 10 requests per fixed 1-s window; a
redis-server (persistence off) holds the budget; three evalrun processes configured `rpm: 600`,
`limiter: redis://…` send N requests between them — as three `--shard I/3` processes and as one
`--workers 3` run. Measured at the gateway: 429s, and the request phase (first → last arrival)
against the ideal N/RPM. Every server is on a free 127.0.0.1 port and stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RPM = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=REPO, **kw)  # type: ignore[call-overload,no-any-return]


def wait_port(port: int) -> None:
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def case(name: str, tmp: Path, n: int, argvs: list[list[str]], shared: bool = True) -> dict[str, object]:
    gport, rport = free_port(), free_port()
    gw = start(
        [sys.executable, "tests/bench/gateway.py", "--port", str(gport), "--window-limit", "10"],
        stdout=subprocess.DEVNULL,
    )
    redis = start(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(gport)
        wait_port(rport)
        slug = "".join(c if c.isalnum() else "_" for c in name)
        data = tmp / f"{slug}.jsonl"
        data.write_text("".join(json.dumps({"id": f"q{i}", "q": f"{i}+{i}"}) + "\n" for i in range(n)))
        cfg = tmp / f"{slug}.yaml"
        cfg.write_text(
            f"experiment: bench\nprovider: gw\nproviders:\n  gw:\n    base_urls: [http://127.0.0.1:{gport}/v1]\n"
            f"    rpm: {RPM}\n    max_concurrency: 16\n"
            + (f"    limiter: redis://127.0.0.1:{rport}/0\n" if shared else "")
            + f"models: [m]\nparams: {{max_tokens: 8}}\nprompts:\n  p: [{{role: user, content: 'What is {{q}}?'}}]\n"
            f"dataset: {{path: {data}}}\nreports_dir: {tmp / 'reports'}\n"
        )
        t0 = time.monotonic()
        procs = [
            start(
                [sys.executable, "-m", "evalrun", "run", str(cfg), *a, "--no-progress"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for a in argvs
        ]
        codes = [p.wait() for p in procs]
        wall = time.monotonic() - t0
        log = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{gport}/stats").read())
    finally:
        for p in (gw, redis):
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    times = [t for t, _, _, _ in log]
    phase = max(times) - min(times)
    ideal = n / RPM * 60
    return {
        "case": name,
        "codes": codes,
        "sent": len(log),
        "429": sum(1 for *_, s in log if s == 429),
        "phase": phase,
        "wall": wall,
        "ideal": ideal,
        "ratio": phase / ideal,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = [
            case("shards", tmp, a.requests, [["--shard", f"{i}/3"] for i in (1, 2, 3)]),
            case("workers", tmp, a.requests, [["--workers", "3"]]),
            # before issue 11: three processes on one key, each told the key's whole rpm
            case("shards, no limiter", tmp, a.requests, [["--shard", f"{i}/3"] for i in (1, 2, 3)], shared=False),
        ]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    lines = [
        "# Shared-budget benchmark (issue 11)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit.strip()}; {os.cpu_count()} CPUs "
        "shared with other users",
        f"- command: `python tests/bench/shared_bench.py --requests {a.requests}`",
        f"- gateway: 10 requests per fixed 1-s window (= {RPM} rpm), 429 + Retry-After above it; "
        f"redis-server, persistence off; each evalrun process `rpm: {RPM}`, `limiter: redis://…`",
        "- request phase = first → last arrival at the gateway; ideal = N/RPM; target phase ≤ 1.05 × ideal, zero 429s",
        "- `shards, no limiter`: the same three processes without `limiter:` (each told the key's whole rpm), "
        "for comparison: what issue 11 was filed about",
        "",
        "| case | exit codes | requests at gateway | 429s | request phase (s) | ideal N/RPM (s) | ratio | whole wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['codes']} | {r['sent']} | {r['429']} | {r['phase']:.2f} | {r['ideal']:.2f} | "
            f"{r['ratio']:.3f} | {r['wall']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
