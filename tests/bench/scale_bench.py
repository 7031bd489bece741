"""Analysis at scale (issue 13): two 200k-request runs at 0 ms, then `summary`, `report`,
`cost` and `compare` of them, each measured as its own process.

    python tests/bench/scale_bench.py [--rows 10000] [--repeats 20] [--out FILE]

Reuses bench.py's machinery (a fresh simulator process per run, os.wait4 per subprocess for
wall, CPU and peak RSS, a wait for a quiet machine first). The code under test is the checkout
as it is (editable install). Prints a Markdown table (and writes it to --out if given).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def scored(run_dir: Path, pattern: str) -> Path:
    """The run's experiment with one regex scorer `s`: patterns that differ between the two runs
    make most items flip, the worst case for compare's matching and McNemar."""
    cfg = json.loads((run_dir.parent / "experiment.yaml").read_text())  # bench.write_config: JSON
    cfg["scorers"] = [{"name": "s", "type": "regex", "pattern": pattern}]
    path = run_dir.parent / f"scored-{pattern}.yaml"
    path.write_text(json.dumps(cfg))
    return path


def analysis(run_a: Path, run_b: Path) -> list[str]:
    """`score` of both runs (no requests: results.parquet rewritten), then summary, report, cost
    and compare, each its own process."""
    a, c = str(run_a), str(run_b)
    steps = {
        "score (run 1)": ["score", a, "--config", str(scored(run_a, "note"))],
        "score (run 2)": ["score", c, "--config", str(scored(run_b, "simple"))],
        "summary": ["summary", a],
        "report": ["report", a],
        "cost": ["cost", a],
        "compare": ["compare", a, c, "--scorer", "s"],
    }
    lines = []
    for name, argv in steps.items():
        bench.wait_quiet()
        m = bench.measure([*bench.EVALRUN, *argv], 600)
        note = f"exit {m.rc}" + (f": {m.stderr.strip()[-200:]!r}" if m.rc not in (0, 1) else "")
        lines.append(f"| `evalrun {name}` | {m.wall_s:.2f} | {m.cpu_s:.2f} | {m.maxrss_mb:.0f} | {note} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--analysis-of", nargs=2, type=Path, metavar="RUN_DIR", help="only the analysis, of two existing runs"
    )
    args = ap.parse_args()
    bench.QUIET_WAIT_S = 10.0  # many runs in one invocation: see bench.QUIET_WAIT_S
    if args.analysis_of:
        print(
            "\n".join(
                [
                    "| step | wall s | CPU s | peak RSS MB | notes |",
                    "|---|---:|---:|---:|---|",
                    *analysis(*args.analysis_of),
                ]
            )
        )
        return 0
    work = Path(tempfile.mkdtemp(prefix="evalrun-scale-"))
    os.chdir(work)
    b = bench.Bench(work, sys.stderr)
    for _ in range(2):
        bench.measure([bench.PY, "-c", bench.WARM], 300)
    n = args.rows * args.repeats
    runs = [b.run_evalrun(f"scale-{i}", args.rows, repeats=args.repeats, timeout_s=3600) for i in (1, 2)]
    lines = [
        f"N = {n:,} requests per run ({args.rows:,} rows × {args.repeats} repeats), 0 ms simulator, concurrency 100",
        "",
        "| step | wall s | CPU s | peak RSS MB | notes |",
        "|---|---:|---:|---:|---|",
    ]
    for i, r in enumerate(runs, 1):
        assert r.run_dir is not None
        lines.append(
            f"| run {i} | {r.m.wall_s:.1f} | {r.m.cpu_s:.1f} | {r.m.maxrss_mb:.0f} | "
            f"{r.cpu_ms_per_req:.3f} ms CPU/request; run dir {dir_mb(r.run_dir):.0f} MB "
            f"(journal {(r.run_dir / 'journal.jsonl').stat().st_size / 1e6:.0f} MB, "
            f"results.parquet {(r.run_dir / 'results.parquet').stat().st_size / 1e6:.0f} MB); "
            f"{'; '.join(r.problems) or 'ok'} |"
        )
    lines += analysis(runs[0].run_dir, runs[1].run_dir)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
