"""`evalrun history` at a year of nights: 365 run directories × 12 cells, read and drawn.

    python tests/bench/history_bench.py [--nights 365] [--rounds 3] [--histories 3000]

Runs the simulator once on a 12-cell config (3 models × 2 temperatures × 2 prompts, 10 rows ×
2 repeats), then makes NIGHTS run directories from it: the real manifest.json with its run id and
start time moved a day per night (and a prompt edit, a max_tokens change and a price change on
three nights, for drift markers), and a summary.parquet written by the project's own writer
(analysis.summary.write_summary) from the real summary rows with each cell's pass figures redrawn
per night by rowstats.row_rate on fresh per-row counts. Times, in one process:
build_history + every output format; and the CLI end to end in a subprocess (Python start and
imports included), `--out history.html`. Then the step test's false-flag rate and power on
seeded synthetic histories (tests/test_history.py's generator).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import orjson
import pyarrow.parquet as pq
import yaml

from evalrun.analysis.history import build_history
from evalrun.analysis.history_text import markdown, to_csv, to_json
from evalrun.analysis.rowstats import row_rate
from evalrun.analysis.summary import write_summary
from evalrun.cli import main as evalrun_main
from evalrun.report.history_html import render

ROOT = Path(__file__).resolve().parents[2]
EVALRUN = str(Path(sys.executable).with_name("evalrun"))


def _seed_run(tmp: Path) -> Path:
    cfg = {
        "experiment": "nightly",
        "provider": "sim",
        "providers": {"sim": {"kind": "simulator", "simulator": {"latency_scale": 0}}},
        "models": ["gemini-2.5-flash-lite", "gemini-3-pro-preview", "gemini-3.1-pro-preview"],
        "params": {"max_tokens": 2048, "reasoning_effort": "low"},
        "grid": {"temperature": [0.0, 1.0]},
        "prompts": {
            "direct": [{"role": "user", "content": "What is {question}? Only the number."}],
            "terse": [{"role": "user", "content": "{question} = ? Number only."}],
        },
        "dataset": {"path": str(ROOT / "datasets" / "arithmetic.jsonl"), "limit": 10},
        "repeats": 2,
        "prices": str(ROOT / "configs" / "prices.yaml"),
        "scorers": [{"name": "correct", "type": "numeric", "expected": "{answer}"}],
    }
    config = tmp / "seed.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_dir = tmp / "seed-run"
    assert evalrun_main(["run", str(config), "--no-progress", "--run-dir", str(run_dir)]) == 0
    return run_dir


def _night_rows(rows: list[dict], rng: np.random.Generator, night: int) -> list[dict]:
    """The seed run's summary rows with each cell's pass figures redrawn for one night."""
    out = []
    for r in rows:
        r = dict(r)
        p = float(
            np.clip(0.75 - 0.1 * (night > 300 and r["model"] == "gemini-3-pro-preview") + rng.normal(0, 0.02), 0, 1)
        )
        passes = rng.binomial(2, np.clip(rng.beta(2 * p + 0.1, 2 * (1 - p) + 0.1, size=10), 0, 1))
        rr = row_rate(passes.tolist(), [2] * 10)
        r.update(pass_rate_correct=rr.rate, pass_ci_low_correct=rr.low, pass_ci_high_correct=rr.high)
        r.update(eff_rows_correct=rr.effective_rows, latency_p50_s=r["latency_p50_s"] * rng.uniform(0.8, 1.2))
        out.append(r)
    return out


def build_nights(tmp: Path, nights: int) -> Path:
    seed = _seed_run(tmp)
    manifest = orjson.loads((seed / "manifest.json").read_bytes())
    rows = pq.read_table(seed / "summary.parquet").to_pylist()
    rng = np.random.default_rng(365)
    exp = tmp / "reports" / "nightly"
    for n in range(nights):
        day = np.datetime64("2026-01-01") + n
        run_id = f"{str(day).replace('-', '')}T020000Z-{n:04x}"
        m = copy.deepcopy(manifest)
        m.update(run_id=run_id, started_at=f"{day}T02:00:00.000Z", finished_at=f"{day}T02:10:00.000Z")
        if n >= 120:  # a prompt edit
            m["config"]["prompts"]["terse"][0]["content"] = "{question} = ? Reply with the number only."
        if n >= 200:  # every cell's max_tokens
            for c in m["cells"]:
                c["params"]["max_tokens"] = 4096
        if n >= 300:  # a price change
            m["prices"]["models"]["gemini-3-pro-preview"]["tiers"][0]["input"] = 1.25
        run = exp / run_id
        run.mkdir(parents=True)
        (run / "manifest.json").write_bytes(orjson.dumps(m))
        write_summary(run, _night_rows(rows, rng, n))
    return exp


def time_history(exp: Path, nights: int, rounds: int, out: Path) -> None:
    inproc, cli = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        h = build_history(str(exp), nights)
        page = render(h)
        md, csv, js = markdown(h), to_csv(h), to_json(h)
        inproc.append(time.perf_counter() - t)
        t = time.perf_counter()
        proc = subprocess.run(
            [EVALRUN, "history", str(exp), "--last", str(nights), "--out", str(out)], capture_output=True, text=True
        )
        cli.append(time.perf_counter() - t)
        assert proc.returncode == 0, proc.stderr
    print(f"{len(h.runs)} nights × {len(h.series)} cells × scorers, {len(h.drift)} drift markers, "
          f"{len(h.flagged)} flagged; page {len(page) / 1e6:.2f} MB, md {len(md) / 1e3:.0f} kB, "
          f"csv {len(csv) / 1e6:.2f} MB, json {len(js) / 1e6:.2f} MB")  # fmt: skip
    print(f"build_history + html + md + csv + json, in process: median {statistics.median(inproc):.2f} s "
          f"({', '.join(f'{x:.2f}' for x in inproc)})")  # fmt: skip
    print(f"evalrun history --out history.html, subprocess: median {statistics.median(cli):.2f} s "
          f"({', '.join(f'{x:.2f}' for x in cli)})")  # fmt: skip


def rates(histories: int) -> None:
    from test_history import _history_flags

    for fresh in (False, True):
        rng = np.random.default_rng(1)
        false = sum(any(_history_flags(rng, 12, 10, fresh=fresh)) for _ in range(histories))
        print(f"quiet 12-cell histories ({'fresh rows each night' if fresh else 'the same rows'}): "
              f"{false} of {histories} flagged a step ({false / histories:.1%})")  # fmt: skip
    for drop in (0.10, 0.15, 0.20):
        rng = np.random.default_rng(7)
        runs = [_history_flags(rng, 12, 10, drop=drop) for _ in range(400)]
        print(f"one cell {drop * 100:.0f} points down: flagged in {sum(f[0] for f in runs) / 400:.1%} of 400; "
              f"another cell flagged in {sum(any(f[1:]) for f in runs) / 400:.1%}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nights", type=int, default=365)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--histories", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        exp = build_nights(tmp, args.nights)
        print(f"built {args.nights} run directories in {time.perf_counter() - t:.1f} s")
        time_history(exp, args.nights, args.rounds, tmp / "history.html")
    if args.histories:
        rates(args.histories)


if __name__ == "__main__":
    main()
