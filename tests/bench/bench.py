"""evalrun's throughput / pacing / memory benchmark against its own simulator (issue 7).

    python tests/bench/bench.py [--quick] [--only 1,2,3,4,5] [--out tests/bench/RESULTS.md] [--no-profile]

Everything runs on 127.0.0.1. The simulator is started in its own process
(`python -m evalrun serve-sim --port 0 ...`), a fresh one for every measured run, and both
`evalrun run` and the floor (tests/bench/floor_client.py: bare aiohttp + Semaphore + gather)
run as subprocesses. Each subprocess is measured through tests/own_rusage.py (wait4 in a small launcher): wall from fork to
exit, user+sys CPU and peak RSS (ru_maxrss) of exactly that process. The simulator's CPU
during a run is read from /proc/<pid>/stat before and after.

By default the code under test is a snapshot of HEAD (`git archive HEAD evalrun` into the temp
dir, first on PYTHONPATH; every subprocess starts in the temp dir), so that other people's
concurrent edits of evalrun/ can't mix into the figures; --worktree measures the checkout as is.
Before each timed run the script waits (bounded) for a quiet machine and re-measures a run during
which other processes took a real share of the CPU.

Timing cases run 3× (median reported; --quick: once). Case 4 (memory, ~200k requests, a few
minutes) runs once and is skipped by --quick. Not collected by pytest (tests/bench is in
norecursedirs and this file is not test_*.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # tests/: own_rusage
from own_rusage import MeasuredProcess  # noqa: E402

PY = sys.executable
_script = Path(PY).parent / "evalrun"
EVALRUN = [str(_script)] if _script.exists() else [PY, "-m", "evalrun"]
FLOOR = [PY, str(HERE / "floor_client.py")]

MODEL = "gemini-2.5-flash-lite"
PARAMS = {"max_tokens": 16, "logprobs": True, "top_logprobs": 5, "reasoning_effort": "none"}
# Worded so that the simulator does not recognise an arithmetic task (it would answer in 1–5
# tokens): it writes a generic sentence of 8–60 tokens, cut at max_tokens=16 (~86 % of rows
# give exactly 16 completion tokens, mean ≈ 15.6), each with 5 top logprobs (~8.7 KB body).
PROMPT = "Write a short note about the {op} of {a} and {b}."
OPS = ("sum", "difference", "product", "quotient")
CONCURRENCY = 100
ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
ENV["PYTHONUNBUFFERED"] = "1"
# This machine exports PYTHONDONTWRITEBYTECODE=1, so the editable evalrun checkout has no .pyc
# and every process would compile evalrun's sources at start. A real install has bytecode: write
# it under /tmp instead (never into evalrun/) and warm it up before measuring.
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
PYCACHE = Path(tempfile.gettempdir()) / "evalrun-bench-pycache"
ENV["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
WARM = (
    "import evalrun.cli, evalrun.run.runner, evalrun.run.store.store, evalrun.run.send.pool, evalrun.run.send.attempts, evalrun.run.http.client, evalrun.analysis.summary, "
    "evalrun.config.load, evalrun.run.grid.grid, evalrun.sim, evalrun.sim.server, pandas, pyarrow.parquet, aiohttp, "
    "rich.table, uvloop, yaml"
)
CLK = os.sysconf("SC_CLK_TCK")


# ---- measuring a subprocess ------------------------------------------------------------------


@dataclass
class Measured:
    cmd: list[str]
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_mb: float
    rc: int
    stdout: str
    stderr: str
    timed_out: bool = False
    rss_by_phase: dict[str, float] = field(default_factory=dict)  # MB, max sampled per phase of a run

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def _run_phase(run_dir: Path) -> str:
    """Which part of `evalrun run` is going on, from the files it has written so far.

    results.parquet.tmp is written while the requests go (run/store/sink.py), so it marks no phase of
    its own; once results.parquet is in place the run is at its end (summary, manifest). A run
    rebuilt from the journal (a resume) is never measured here."""
    if (run_dir / "summary.parquet").exists() or (run_dir / "results.parquet").exists():
        return "summary"
    return "requests"


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def measure(
    cmd: list[str],
    timeout_s: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    watch: Path | None = None,
) -> Measured:
    """Spawn through own_rusage's launcher (wall, user+sys CPU and peak RSS of exactly the command:
    wait4 on a child of this driver would report the driver's peak RSS when it is the higher),
    kill on timeout. With `watch` (an evalrun run dir), also sample the command's RSS every
    0.2 s, by phase of the run."""
    by_phase: dict[str, float] = {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = MeasuredProcess(
            cmd, stdout=out, stderr=err, cwd=cwd, env=env or ENV, stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while proc.proc.poll() is None and time.monotonic() < deadline:
            if watch is not None and proc.command_pid is not None:
                phase, rss = _run_phase(watch), _rss_mb(proc.command_pid)
                if rss is not None:
                    by_phase[phase] = max(by_phase.get(phase, 0.0), rss)
            try:
                proc.proc.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
        timed_out = proc.proc.poll() is None
        if timed_out:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's own session: the command and it
        wall = time.perf_counter() - t0
        code, usage = proc.wait(30)
        out.seek(0)
        err.seek(0)
        return Measured(
            cmd,
            usage.wall_s if usage is not None else wall,
            usage.user_s if usage is not None else 0.0,
            usage.sys_s if usage is not None else 0.0,
            usage.maxrss_mb if usage is not None else 0.0,
            code,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            timed_out,
            by_phase,
        )


# ---- other people's load ----------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / CLK


# How long wait_quiet waits at most by default. The scripts that alternate many runs in one
# invocation (ab_bench, peers, scale_bench) lower it to 10 s: a dozen runs would otherwise take
# half an hour on a shared machine, and their raw figures show others' CPU anyway.
QUIET_WAIT_S = 120.0


def wait_quiet(max_wait_s: float | None = None) -> float:
    """Wait (bounded) for a second in which the machine is nearly idle, so that other people's
    processes (e.g. a pytest run) don't share the 2 cores with a measurement. Returns the busy
    fraction of one core seen in the last probe."""
    deadline = time.monotonic() + (QUIET_WAIT_S if max_wait_s is None else max_wait_s)
    while True:
        b0 = machine_busy_s()
        time.sleep(1.0)
        busy = machine_busy_s() - b0
        if busy < 0.15 or time.monotonic() >= deadline:
            return busy


# ---- the simulator in its own process ------------------------------------------------------


class Sim:
    """`evalrun serve-sim` on a free loopback port; stats over HTTP; CPU from /proc."""

    def __init__(self, workdir: Path, latency_ms: float = 0.0, extra: list[str] | None = None) -> None:
        args = [PY, "-m", "evalrun", "serve-sim", "--port", "0", "--per-token-ms", "0"]
        if latency_ms > 0:
            args += ["--latency-ms", f"{latency_ms:g}"]
        else:
            args += ["--latency-ms", "0", "--latency-scale", "0"]
        args += extra or []
        self.latency_s = latency_ms / 1000.0
        self.log = open(workdir / f"sim-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115  # closed in close()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, env=ENV, stdin=subprocess.DEVNULL)
        self.base_url = self._wait_ready(30.0)
        self.root = self.base_url.removesuffix("/v1")
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _wait_ready(self, timeout_s: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout_s
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(self.proc.stdout.fileno(), 4096)  # type: ignore[union-attr]
            if not chunk:
                break
            line += chunk
        sel.close()
        text = line.decode(errors="replace").strip()
        if "listening on " not in text:
            self.close()
            raise RuntimeError(f"simulator did not start: {text!r}")
        return text.split("listening on ", 1)[1].split()[0]

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK  # utime, stime

    def stats(self) -> dict[str, Any]:
        with self._opener.open(self.root + "/sim/stats", timeout=30) as r:
            return json.loads(r.read())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()

    def __enter__(self) -> Sim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- inputs --------------------------------------------------------------------------------


def write_dataset(path: Path, rows: int) -> Path:
    if path.exists():
        return path
    rng = random.Random(7)
    with path.open("w") as f:
        for i in range(rows):
            row = {"id": f"q{i:07d}", "a": rng.randint(1, 999), "b": rng.randint(1, 99), "op": OPS[rng.randrange(4)]}
            f.write(json.dumps(row) + "\n")
    return path


def write_bodies(dataset: Path, path: Path) -> Path:
    """The request bodies evalrun sends for the dataset, one per line, for the floor client."""
    if path.exists():
        return path
    with dataset.open() as src, path.open("w") as out:
        for line in src:
            row = json.loads(line)
            body = {"model": MODEL, **PARAMS, "messages": [{"role": "user", "content": PROMPT.format(**row)}]}
            out.write(json.dumps(body, separators=(",", ":")) + "\n")
    return path


def write_config(
    path: Path,
    base_url: str,
    dataset: Path,
    repeats: int = 1,
    limits: dict | None = None,
    experiment: str = "bench",
    grid: dict | None = None,
) -> Path:
    provider: dict[str, Any] = {"kind": "openai", "base_urls": [base_url], "max_concurrency": CONCURRENCY}
    provider.update(limits or {})
    cfg: dict[str, Any] = {
        "experiment": experiment,
        "providers": {"local": provider},
        "models": [MODEL],
        "params": PARAMS,
        "prompts": {"note": [{"role": "user", "content": PROMPT}]},
        "dataset": {"path": str(dataset)},
        "repeats": repeats,
        "reports_dir": str(path.parent / "reports"),
    }
    if grid:
        cfg["grid"] = grid
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


# ---- one evalrun run / one floor run against a fresh simulator -------------------------------


@dataclass
class RunResult:
    who: str  # evalrun | floor
    n: int
    m: Measured
    sim_cpu_s: float
    stats: dict[str, Any]
    latency_s: float
    manifest: dict[str, Any] | None = None
    run_dir: Path | None = None
    journal_mb: float | None = None
    problems: list[str] = field(default_factory=list)
    load: float = float("nan")  # busy fraction of one core (others) just before the run started
    others_cpu_s: float = float("nan")  # CPU used on the machine during the run by anything else

    @property
    def arrivals(self) -> list[float]:
        return self.stats.get("arrivals") or []

    @property
    def phase_s(self) -> float:
        """First request the simulator saw → last answer (last arrival + fixed latency)."""
        a = self.arrivals
        if not a or len(a) < self.n:  # the simulator keeps the last 100,000 arrivals only
            return float("nan")
        return max(a) - min(a) + self.latency_s

    @property
    def span_s(self) -> float:
        a = self.arrivals
        if not a or len(a) < self.n:
            return float("nan")
        return max(a) - min(a)

    @property
    def cpu_ms_per_req(self) -> float:
        return self.m.cpu_s / self.n * 1000

    @property
    def rps(self) -> float:
        return self.n / self.m.wall_s


class Bench:
    def __init__(self, work: Path, log: Any) -> None:
        self.work = work
        self.log = log
        self.counter = 0
        self.observations: list[str] = []
        self.raw: list[dict[str, Any]] = []

    def say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    def clean(self, fn: Any, *args: Any, attempts: int = 3, **kwargs: Any) -> RunResult:
        """Run a timed measurement again (≤ `attempts` in all) when other processes took a real
        share of the CPU meanwhile; the discarded runs stay in the raw table, marked."""
        for i in range(attempts):
            r = fn(*args, **kwargs)
            limit = max(0.3, 0.15 * r.m.wall_s)
            if r.others_cpu_s <= limit or i == attempts - 1:
                return r
            self.raw[-1]["case"] += f" (discarded: others used {r.others_cpu_s:.2f} s CPU)"
            self.say(f"  (contended: others used {r.others_cpu_s:.2f} s CPU; measuring again)")
        raise AssertionError("unreachable")

    def dataset(self, rows: int) -> Path:
        return write_dataset(self.work / f"data_{rows}.jsonl", rows)

    def run_evalrun(
        self,
        label: str,
        rows: int,
        repeats: int = 1,
        latency_ms: float = 0.0,
        sim_extra: list[str] | None = None,
        limits: dict | None = None,
        timeout_s: float = 600.0,
        whatif: str | None = None,
    ) -> RunResult:
        self.counter += 1
        data = self.dataset(rows)
        n = rows * repeats
        d = self.work / f"run{self.counter:03d}-{label}"
        d.mkdir()
        with Sim(self.work, latency_ms, sim_extra) as sim:
            cfg = write_config(d / "experiment.yaml", sim.base_url, data, repeats, limits)
            run_dir = d / "run"
            cmd, env = EVALRUN, ENV
            if whatif:
                cmd, env = [PY, str(HERE / "whatif.py")], {**ENV, "BENCH_WHATIF": whatif}
            load = wait_quiet()
            c0, busy0 = sim.cpu_s(), machine_busy_s()
            m = measure(
                [*cmd, "run", str(cfg), "--no-progress", "--run-dir", str(run_dir)], timeout_s, env=env, watch=run_dir
            )
            sim_cpu = sim.cpu_s() - c0
            others = machine_busy_s() - busy0 - m.cpu_s - sim_cpu
            stats = sim.stats()
        r = RunResult(
            "evalrun" if not whatif else f"what-if {whatif}",
            n,
            m,
            sim_cpu,
            stats,
            latency_ms / 1000.0,
            run_dir=run_dir,
            load=load,
            others_cpu_s=others,
        )
        if whatif:
            for mode in whatif.split(","):
                if f"whatif: {mode} applied" not in m.stderr:
                    r.problems.append(f"what-if {mode!r} did not hook into evalrun (its code changed?)")
        self._check_evalrun(label, r)
        self._record(label, r)
        return r

    def run_floor(self, label: str, rows: int, latency_ms: float = 0.0, timeout_s: float = 600.0) -> RunResult:
        self.counter += 1
        data = self.dataset(rows)
        bodies = write_bodies(data, self.work / f"bodies_{rows}.jsonl")
        with Sim(self.work, latency_ms) as sim:
            load = wait_quiet()
            c0, busy0 = sim.cpu_s(), machine_busy_s()
            m = measure([*FLOOR, sim.base_url + "/chat/completions", str(bodies), str(CONCURRENCY)], timeout_s)
            sim_cpu = sim.cpu_s() - c0
            others = machine_busy_s() - busy0 - m.cpu_s - sim_cpu
            stats = sim.stats()
        r = RunResult("floor", rows, m, sim_cpu, stats, latency_ms / 1000.0, load=load, others_cpu_s=others)
        if m.rc != 0 or m.timed_out:
            r.problems.append(
                f"floor exit {m.rc} (timed out: {m.timed_out}): {m.stdout.strip()} {m.stderr.strip()[-500:]}"
            )
        self._record(label, r)
        return r

    def _check_evalrun(self, label: str, r: RunResult) -> None:
        m = r.m
        if m.timed_out:
            r.problems.append("evalrun timed out and was killed")
        if m.rc != 0:
            r.problems.append(f"evalrun exit code {m.rc}: {m.stderr.strip()[-800:]}")
        noisy = [
            ln
            for ln in m.stderr.splitlines()
            if any(w in ln for w in ("ERROR", "WARNING", "Traceback", "error")) and not ln.startswith("whatif:")
        ]
        if noisy:
            r.problems.append(f"evalrun stderr: {len(noisy)} warning/error lines, e.g. {noisy[0][:300]!r}")
        try:
            r.manifest = json.loads((r.run_dir / "manifest.json").read_text())  # type: ignore[operator]
        except (OSError, ValueError) as exc:
            r.problems.append(f"no readable manifest.json: {exc}")
            return
        c = r.manifest.get("counts", {})
        if r.manifest.get("status") != "completed":
            r.problems.append(f"manifest status {r.manifest.get('status')!r}")
        if (c.get("recorded"), c.get("ok"), c.get("rows"), c.get("errors")) != (r.n, r.n, r.n, 0):
            r.problems.append(f"counts {c} (expected {r.n} recorded/ok/rows, 0 errors)")
        sess = c.get("this_session", {})
        if sess.get("retries"):
            r.problems.append(f"{sess['retries']} retries: {sess.get('retries_by_type')}")
        served = r.stats.get("by_status", {}).get("200", 0)
        if served != r.n:
            r.problems.append(
                f"the simulator answered 200 to {served} requests, expected {r.n} (by_status {r.stats.get('by_status')})"
            )
        j = r.run_dir / "journal.jsonl"  # type: ignore[operator]
        if j.exists():
            r.journal_mb = j.stat().st_size / 2**20

    def _record(self, label: str, r: RunResult) -> None:
        m = r.m
        row = {
            "case": label,
            "who": r.who,
            "n": r.n,
            "wall_s": round(m.wall_s, 3),
            "user_s": round(m.user_s, 3),
            "sys_s": round(m.sys_s, 3),
            "cpu_ms_per_req": round(r.cpu_ms_per_req, 4),
            "maxrss_mb": round(m.maxrss_mb, 1),
            "sim_cpu_s": round(r.sim_cpu_s, 2),
            "rc": m.rc,
            "phase_s": round(r.phase_s, 3),
            "count_429": r.stats.get("count_429"),
            "max_in_window": r.stats.get("max_in_window"),
            "max_tokens_in_window": r.stats.get("max_tokens_in_window"),
            "tokens_total": r.stats.get("tokens_total"),
            "max_in_flight": r.stats.get("max_in_flight"),
            "load": round(r.load, 2),
            "others_cpu_s": round(r.others_cpu_s, 2),
            "rss_by_phase": {k: round(v) for k, v in m.rss_by_phase.items()},
        }
        if r.journal_mb is not None:
            row["journal_mb"] = round(r.journal_mb, 1)
        self.raw.append(row)
        self.say(
            f"  {label:<14} {r.who:<8} n={r.n:<7} wall {m.wall_s:7.2f} s  cpu {m.cpu_s:7.2f} s "
            f"({r.cpu_ms_per_req:.3f} ms/req)  rss {m.maxrss_mb:7.1f} MB  sim cpu {r.sim_cpu_s:6.2f} s  "
            f"phase {r.phase_s:7.2f} s  429s {r.stats.get('count_429')}  others' cpu {r.others_cpu_s:.2f} s"
        )
        for p in r.problems:
            msg = f"{label} ({r.who}, n={r.n}): {p}"
            self.observations.append(msg)
            self.say("  !! " + msg)


# ---- reporting -----------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    metric: str
    value: str
    floor: str = "—"
    ratio: str = "—"
    target: str = "—"
    verdict: str = ""


def med(values: list[float]) -> float:
    return statistics.median(values)


def f2(x: float, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{nd}f}"


def spread(values: list[float], nd: int = 2) -> str:
    """median, plus the range when there are several runs."""
    if len(values) == 1:
        return f2(values[0], nd)
    return f"{f2(med(values), nd)} ({f2(min(values), nd)}–{f2(max(values), nd)})"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**MISS**"


def max_in_any_window(times: list[float], width: float) -> int:
    ts = sorted(times)
    best = j = 0
    for i, t in enumerate(ts):
        while ts[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


# ---- the cases -----------------------------------------------------------------------------


def case1(b: Bench, reps: int, rows: list[Row]) -> None:
    n = 2000
    b.say(f"case 1: N={n}, concurrency {CONCURRENCY}, 0 ms latency, 16-token answers with top-5 logprobs, {reps}×")
    ev, fl, wi = [], [], []
    for _ in range(reps):
        fl.append(b.clean(b.run_floor, "1-floor", n, timeout_s=120))
        ev.append(b.clean(b.run_evalrun, "1-evalrun", n, timeout_s=120))
        wi.append(b.clean(b.run_evalrun, "1-whatif-gc", n, timeout_s=120, whatif="gc"))
    ew, fw = [r.m.wall_s for r in ev], [r.m.wall_s for r in fl]
    ec, fc = [r.cpu_ms_per_req for r in ev], [r.cpu_ms_per_req for r in fl]
    er, fr = [r.rps for r in ev], [r.rps for r in fl]
    ratio_cpu = med(ec) / med(fc)
    tok = med([r.stats.get("tokens_total", 0) / n for r in ev])
    c = "1 · 2k @ 0 ms"
    rows += [
        Row(c, "wall, whole process (s)", spread(ew), spread(fw), f"{med(ew) / med(fw):.2f}×"),
        Row(
            c,
            "CPU per request, user+sys (ms)",
            spread(ec, 3),
            spread(fc, 3),
            f"{ratio_cpu:.2f}×",
            "≤ 2.5 × floor",
            verdict(ratio_cpu <= 2.5),
        ),
        Row(c, "CPU per request, absolute (ms)", f2(med(ec), 3), "", "", "≈ ≤ 1 ms", verdict(med(ec) <= 1.0)),
        Row(
            c,
            "requests/s end to end",
            spread(er, 0),
            spread(fr, 0),
            f"{med(er) / med(fr):.2f}×",
            "≥ 1,000",
            verdict(med(er) >= 1000),
        ),
        Row(
            c,
            "request phase: first → last arrival at the sim (s); wall − phase (s)",
            f"{f2(med([r.phase_s for r in ev]))}; {f2(med(ew) - med([r.phase_s for r in ev]))}",
            f"{f2(med([r.phase_s for r in fl]))}; {f2(med(fw) - med([r.phase_s for r in fl]))}",
        ),
        Row(c, "peak RSS (MB)", spread([r.m.maxrss_mb for r in ev], 0), spread([r.m.maxrss_mb for r in fl], 0)),
        Row(
            c,
            "simulator CPU during the run (ms/request)",
            f2(med([r.sim_cpu_s / n * 1000 for r in ev]), 3),
            f2(med([r.sim_cpu_s / n * 1000 for r in fl]), 3),
        ),
        Row(c, "tokens/request the sim counted (prompt+completion)", f2(tok, 1)),
        Row(
            c,
            "RSS by phase, sampled (MB): requests (results written meanwhile) / the end",
            " / ".join(
                f2(med([r.m.rss_by_phase.get(k, float("nan")) for r in ev]), 0) for k in ("requests", "summary")
            ),
        ),
        Row(
            c,
            "what-if `gc.set_threshold(100_000, 50, 1000)` (tests/bench/whatif.py): CPU per request (ms)",
            spread([r.cpu_ms_per_req for r in wi], 3),
            spread(fc, 3),
            f"{med([r.cpu_ms_per_req for r in wi]) / med(fc):.2f}×",
            "(not evalrun as shipped)",
        ),
        Row(
            c,
            "what-if gc: wall (s); requests/s",
            f"{f2(med([r.m.wall_s for r in wi]))}; {f2(med([r.rps for r in wi]), 0)}",
        ),
    ]


def case2(b: Bench, reps: int, rows: list[Row]) -> None:
    n, lat = 2000, 200.0
    ideal = n * lat / 1000 / CONCURRENCY
    b.say(f"case 2: N={n}, concurrency {CONCURRENCY}, {lat:g} ms latency, {reps}×")
    ev, fl = [], []
    for _ in range(reps):
        fl.append(b.clean(b.run_floor, "2-floor", n, latency_ms=lat, timeout_s=120))
        ev.append(b.clean(b.run_evalrun, "2-evalrun", n, latency_ms=lat, timeout_s=120))
    ew, fw = [r.m.wall_s for r in ev], [r.m.wall_s for r in fl]
    ep, fp = [r.phase_s for r in ev], [r.phase_s for r in fl]
    c = "2 · 2k @ 200 ms"
    rows += [
        Row(c, "ideal N·latency/concurrency (s)", f2(ideal)),
        Row(
            c,
            "request phase: first arrival → last arrival + 200 ms (s)",
            spread(ep),
            spread(fp),
            f"{med(ep) / med(fp):.2f}×",
            f"≤ 1.05 × ideal = {1.05 * ideal:.2f}",
            verdict(med(ep) <= 1.05 * ideal),
        ),
        Row(
            c,
            "extra check (not in the issue): request phase vs the floor's in the same run",
            f2(med(ep)),
            f2(med(fp)),
            f"{med(ep) / med(fp):.3f}×",
            "≤ 1.05 × floor",
            verdict(med(ep) <= 1.05 * med(fp)),
        ),
        Row(
            c,
            "wall, whole process (s)",
            spread(ew),
            spread(fw),
            f"{med(ew) / med(fw):.2f}×",
            f"≤ ideal + 1 = {ideal + 1:.2f}",
            verdict(med(ew) <= ideal + 1),
        ),
        Row(c, "outside the request phase: wall − phase (s)", f2(med(ew) - med(ep)), f2(med(fw) - med(fp))),
        Row(
            c,
            "CPU per request (ms)",
            spread([r.cpu_ms_per_req for r in ev], 3),
            spread([r.cpu_ms_per_req for r in fl], 3),
        ),
        Row(
            c,
            "max requests in flight at the sim",
            f2(med([r.stats.get("max_in_flight", 0) for r in ev]), 0),
            f2(med([r.stats.get("max_in_flight", 0) for r in fl]), 0),
        ),
    ]


def case6(b: Bench, reps: int, rows: list[Row]) -> None:
    """Peers on the same simulator and workload, in this invocation (tests/bench/peers.py)."""
    sys.modules.setdefault("bench", sys.modules[__name__])  # peers.py's `import bench` is this module
    import peers

    results, notes = peers.run_peers(b, 2000, reps, 0.0)
    floor_cpu = med([x[1] for x in results["floor"]]) if results["floor"] else float("nan")
    c = "6 · peers, 2k @ 0 ms"
    for who, rs in results.items():
        if not rs:
            continue
        cpu = med([x[1] for x in rs])
        rows.append(
            Row(
                c,
                f"{who}: wall s / CPU ms per request / peak RSS MB",
                f"{f2(med([x[0] for x in rs]))} / {f2(cpu, 3)} / {f2(med([x[2] for x in rs]), 0)}",
                "" if who == "floor" else f2(floor_cpu, 3),
                "" if who == "floor" else f"{cpu / floor_cpu:.2f}×",
                "measured, not quoted",
                "",
            )
        )
    b.observations.extend(f"peers: {n}" for n in notes)


def _tokens_for(rows_n: int, b: Bench) -> list[int]:
    """prompt+completion tokens the simulator will count for each of the first rows (its answers
    are a pure function of the request body)."""
    from evalrun.sim.behaviour import answer_request

    out = []
    with b.dataset(rows_n).open() as f:
        for line in f:
            row = json.loads(line)
            body = {"model": MODEL, **PARAMS, "messages": [{"role": "user", "content": PROMPT.format(**row)}]}
            out.append(answer_request(body).total_tokens)
    return out


def case3(b: Bench, reps: int, rows: list[Row], stress: bool) -> None:
    n, rpm = 300, 600
    ideal_span = (n - 1) * 60 / rpm
    b.say(f"case 3a: rate limit {rpm} rpm on both sides, N={n}, 0 ms latency, {reps}×")
    runs = [
        b.run_evalrun("3a-rpm", n, sim_extra=["--rpm-limit", str(rpm)], limits={"rpm": rpm}, timeout_s=240)
        for _ in range(reps)
    ]
    _rate_rows(rows, "3a · rpm 600, N=300", runs, n, rpm, ideal_span, n / rpm * 60)

    tokens = _tokens_for(n, b)
    total = sum(tokens)
    tpm = math.ceil(total * 60 / 25)  # ≈ 25 s of tokens
    b.say(f"case 3b: {tpm} tpm on both sides, N={n} ({total} tokens), 0 ms latency, {reps}×")
    runs = [
        b.run_evalrun("3b-tpm", n, sim_extra=["--tpm-limit", str(tpm)], limits={"tpm": tpm}, timeout_s=240)
        for _ in range(reps)
    ]
    _tpm_rows(rows, f"3b · tpm {tpm:,}, N=300", runs, tpm, total, tokens)

    if not stress:
        return
    # The two runs above are shorter than the 60 s window, so the server's window can never
    # fill and a client that did not pace at all would also get zero 429s. These run once,
    # ~70 s each, so that a 60 s window really is at its limit.
    n2 = 700
    b.say(f"case 3c: {rpm} rpm, N={n2} (> 60 s, the window fills), once")
    runs = [b.run_evalrun("3c-rpm-long", n2, sim_extra=["--rpm-limit", str(rpm)], limits={"rpm": rpm}, timeout_s=400)]
    _rate_rows(rows, f"3c · rpm 600, N={n2} (> 60 s)", runs, n2, rpm, (n2 - 1) * 60 / rpm, n2 / rpm * 60)
    n3 = 840
    tokens3 = _tokens_for(n3, b)
    b.say(f"case 3d: {tpm} tpm, N={n3} ({sum(tokens3)} tokens, > 60 s), once")
    runs = [b.run_evalrun("3d-tpm-long", n3, sim_extra=["--tpm-limit", str(tpm)], limits={"tpm": tpm}, timeout_s=400)]
    _tpm_rows(rows, f"3d · tpm {tpm:,}, N={n3} (> 60 s)", runs, tpm, sum(tokens3), tokens3)


def _rate_rows(rows: list[Row], c: str, runs: list[RunResult], n: int, rpm: int, ideal_span: float, nr: float) -> None:
    c429 = [r.stats.get("count_429", 0) for r in runs]
    win = [max((r.stats.get("max_in_window") or {}).values() or [0]) for r in runs]
    span = [r.span_s for r in runs]
    w6 = [max_in_any_window(r.arrivals, 6.0) for r in runs]
    gaps = [min(b_ - a for a, b_ in zip(sorted(r.arrivals), sorted(r.arrivals)[1:])) for r in runs]
    rows += [
        Row(c, "429s received (sim count_429)", spread(c429, 0), target="0", verdict=verdict(max(c429) == 0)),
        Row(
            c,
            "max requests in any 60 s window (sim)",
            spread(win, 0),
            target=f"≤ {rpm}",
            verdict=verdict(max(win) <= rpm),
        ),
        Row(
            c,
            "request phase: first → last arrival (s)",
            spread(span),
            target=f"≤ 1.02 × N/R = {1.02 * nr:.2f}",
            verdict=verdict(med(span) <= 1.02 * nr),
        ),
        Row(c, "ideal (N−1)·60/R (s); phase / ideal", f"{ideal_span:.2f}; {med(span) / ideal_span:.3f}×"),
        Row(
            c,
            "evenness: max in any 6 s window; min gap between sends (s)",
            f"{max(w6)} (R/10 = {rpm // 10}); {min(gaps):.3f} (60/R = {60 / rpm:.3f})",
        ),
        Row(c, "wall, whole process (s)", spread([r.m.wall_s for r in runs])),
    ]


def _tpm_rows(rows: list[Row], c: str, runs: list[RunResult], tpm: int, total: int, tokens: list[int]) -> None:
    c429 = [r.stats.get("count_429", 0) for r in runs]
    win = [max((r.stats.get("max_tokens_in_window") or {}).values() or [0]) for r in runs]
    span = [r.span_s for r in runs]
    ideal = (total - tokens[-1]) * 60 / tpm
    bound = total * 60 / tpm
    rows += [
        Row(c, "429s received (sim count_429)", spread(c429, 0), target="0", verdict=verdict(max(c429) == 0)),
        Row(
            c,
            "max tokens in any 60 s window (sim)",
            spread(win, 0),
            target=f"≤ {tpm:,}",
            verdict=verdict(max(win) <= tpm),
        ),
        Row(
            c,
            "request phase: first → last arrival (s)",
            spread(span),
            target=f"≤ 1.02 × tokens·60/T = {1.02 * bound:.2f}",
            verdict=verdict(med(span) <= 1.02 * bound),
        ),
        Row(
            c,
            "ideal (tokens before the last request)·60/T (s); phase / ideal",
            f"{ideal:.2f}; {med(span) / ideal:.3f}×",
        ),
        Row(c, "wall, whole process (s)", spread([r.m.wall_s for r in runs])),
    ]


def case4(b: Bench, rows: list[Row], base_rows: int = 10_000, big_repeats: int = 20) -> None:
    b.say("case 4: memory — 10,000 rows × 1 repeat and × 20 repeats, 0 ms latency, once each")
    small = b.clean(b.run_evalrun, "4-10k", base_rows, repeats=1, timeout_s=900)
    big = b.run_evalrun("4-200k", base_rows, repeats=big_repeats, timeout_s=3600)
    c = "4 · memory"
    d = big.m.maxrss_mb - small.m.maxrss_mb

    def phases(r: RunResult) -> str:
        return " / ".join(f2(r.m.rss_by_phase.get(k, float("nan")), 0) for k in ("requests", "summary"))

    rows += [
        Row(c, "dataset", "10,000 rows; N=10k: repeats 1; N=200k: repeats 20"),
        Row(c, "peak RSS, N=10,000 (MB)", f2(small.m.maxrss_mb, 0)),
        Row(c, "peak RSS, N=200,000 (MB)", f2(big.m.maxrss_mb, 0)),
        Row(c, "peak RSS(200k) − peak RSS(10k) (MB)", f2(d, 0), target="≤ 50", verdict=verdict(d <= 50)),
        Row(
            c,
            "wall (s) / req/s / CPU ms per req, N=10k",
            f"{small.m.wall_s:.1f} / {small.rps:,.0f} / {small.cpu_ms_per_req:.3f}",
        ),
        Row(
            c,
            "wall (s) / req/s / CPU ms per req, N=200k",
            f"{big.m.wall_s:.1f} / {big.rps:,.0f} / {big.cpu_ms_per_req:.3f}",
        ),
        Row(c, "journal.jsonl size, N=200k (MB)", f2(big.journal_mb or float("nan"), 0)),
        Row(c, "RSS by phase, sampled (MB): requests (results written meanwhile) / the end, N=10k", phases(small)),
        Row(c, "RSS by phase, sampled (MB): requests (results written meanwhile) / the end, N=200k", phases(big)),
    ]


def case5(b: Bench, reps: int, rows: list[Row]) -> None:
    b.say("case 5: evalrun --help (best of 5), evalrun plan on 10 cells × 100,000 rows")
    wait_quiet(60)
    helps = [measure([*EVALRUN, "--help"], 60) for _ in range(5)]
    for h in helps:
        if h.rc != 0:
            b.observations.append(f"evalrun --help exit {h.rc}: {h.stderr[-300:]}")
    d = b.work / "plan"
    d.mkdir(exist_ok=True)
    grid = {"temperature": [round(0.1 * i, 1) for i in range(10)]}
    big = write_config(d / "plan-1m.yaml", "http://127.0.0.1:9/v1", b.dataset(100_000), grid=grid)
    small = write_config(d / "plan-1k.yaml", "http://127.0.0.1:9/v1", b.dataset(100), grid=grid)
    plans, base = [], []
    for _ in range(reps):
        wait_quiet(60)
        plans.append(measure([*EVALRUN, "plan", str(big)], 120))
        wait_quiet(60)
        base.append(measure([*EVALRUN, "plan", str(small)], 120))
    for p in plans + base:
        if p.rc != 0:
            b.observations.append(f"evalrun plan exit {p.rc}: {p.stderr[-500:]}")
    if "1,000,000" not in plans[0].stdout:
        b.observations.append(f"evalrun plan output does not mention 1,000,000 requests: {plans[0].stdout[:500]!r}")
    c = "5 · CLI"
    hw = min(h.wall_s for h in helps)
    pw = [p.wall_s for p in plans]
    drss = med([p.maxrss_mb for p in plans]) - med([p.maxrss_mb for p in base])
    rows += [
        Row(
            c,
            "evalrun --help wall, best of 5 (s)",
            f"{hw:.3f} (median {med([h.wall_s for h in helps]):.3f})",
            target="≤ 0.3",
            verdict=verdict(hw <= 0.3),
        ),
        Row(
            c,
            "evalrun plan, 10 cells × 100,000 rows = 1,000,000 requests, wall (s)",
            spread(pw),
            target="≤ 3",
            verdict=verdict(med(pw) <= 3),
        ),
        Row(
            c,
            "plan peak RSS: 1M-request grid vs 1k-request grid (MB)",
            f"{med([p.maxrss_mb for p in plans]):.0f} vs {med([p.maxrss_mb for p in base]):.0f} (+{drss:.0f})",
            target="not materialised: ≤ +50",
            verdict=verdict(drss <= 50),
        ),
        Row(c, "plan wall, 1k-request grid (s)", spread([p.wall_s for p in base])),
    ]
    b.plan_output = plans[0].stdout  # type: ignore[attr-defined]


# ---- profile -------------------------------------------------------------------------------

_HOT = [  # innermost frame first; (predicate on (function, file, class), category); paths as run/ lays them out
    (
        lambda fn, fl, cl: "/aiohttp/" in fl or "/multidict/" in fl or "/yarl/" in fl,
        "request: aiohttp client (request build, connection pool, HTTP parse, read body)",
    ),
    (
        lambda fn, fl, cl: fl.endswith(("run/http/parse.py", "run/records/coerce.py", "run/records/logprobs.py")),
        "request: parse response (orjson.loads + parse_completion/usage)",
    ),
    (lambda fn, fl, cl: fl.endswith("run/http/client.py"), "request: ProviderClient.send (orjson.dumps body, headers)"),
    (
        lambda fn, fl, cl: fl.endswith("run/store/store.py") and fn in ("result_rows", "_json_text"),
        "request: Result → report rows (result_rows, orjson messages)",
    ),
    (
        lambda fn, fl, cl: fl.endswith(("run/store/journal.py", "run/store/framing.py")),
        "request: journal append (orjson.dumps + write + flush)",
    ),
    (lambda fn, fl, cl: fl.endswith(("run/store/sink.py", "run/store/convert.py")), "request: results.parquet writer"),
    (lambda fn, fl, cl: fl.endswith("run/recorder.py"), "request: record() stats"),
    (lambda fn, fl, cl: "/tenacity/" in fl, "request: tenacity retry wrapper"),
    (lambda fn, fl, cl: "/run/rate/" in fl, "request: limiter acquire"),
    (lambda fn, fl, cl: "/run/send/" in fl, "request: pool worker, attempts (+ Result)"),
    (lambda fn, fl, cl: "/run/grid/" in fl, "request: lazy spec stream (read row, render, ids)"),
    (lambda fn, fl, cl: fl.endswith("run/progress.py"), "request: progress"),
    (lambda fn, fl, cl: "/asyncio/" in fl and not fl.endswith("runners.py"), "request: asyncio (queues, tasks, wait)"),
    (
        lambda fn, fl, cl: fl.endswith("asyncio/runners.py") or "uvloop" in fl,
        "request: event loop (uvloop, incl. idle in epoll)",
    ),
]


def categorize(stack: list[tuple[str, str, str]]) -> str:
    names = {fn for fn, _, _ in stack}
    if "_find_and_load" in names:
        return "startup: imports (all import time, wherever it happens)"
    if names & {"prepare_run", "load_experiment", "build_plan", "api_keys"}:
        return "config: load YAML + validate + plan + grid fingerprint"
    if "_finish" in names:
        if "write_results" in names:
            return "finalize: journal.jsonl → results.parquet (write_results)"
        if "write_summary" in names:
            return "finalize: summary (pandas read_parquet + groupby + to_parquet)"
        return "finalize: manifest + other"
    if "_run_loop" in names:
        if "start_simulator" in names or "ClientSession" in names:
            return "request: session setup"
        for fn, fl, cl in reversed(stack):
            for pred, cat in _HOT:
                if pred(fn, fl, cl):
                    return cat
        return "request: other"
    if any("/rich/" in fl for _, fl, _ in stack):
        return "report: print summary table (rich)"
    if "run" in names and any(fl.endswith("evalrun/run/runner.py") for _, fl, _ in stack):
        return "run: manifest, run dir, journal open/close"
    return "other (cli, logging setup, interpreter)"


def profile_case1(b: Bench) -> list[str]:
    """pyinstrument over one `evalrun run` of case 1; returns Markdown lines."""
    try:
        import pyinstrument  # noqa: F401
        from pyinstrument.session import Session
    except ImportError:
        return ["(pyinstrument is not installed: `pip install pyinstrument` to get this section)"]
    n = 2000
    data = b.dataset(n)
    d = b.work / "profile"
    d.mkdir()
    out = d / "evalrun.pyisession"
    with Sim(b.work, 0.0) as sim:
        cfg = write_config(d / "experiment.yaml", sim.base_url, data)
        wait_quiet()
        m = measure(
            [
                PY,
                "-m",
                "pyinstrument",
                "-r",
                "session",
                "-o",
                str(out),
                "-m",
                "evalrun",
                "run",
                str(cfg),
                "--no-progress",
                "--run-dir",
                str(d / "run"),
            ],
            600,
        )
    if m.rc != 0 or not out.exists():
        return [f"(profiling failed: exit {m.rc}: {m.stderr[-500:]})"]
    s = Session.load(str(out))
    cats: dict[str, float] = {}
    leaves: dict[str, float] = {}
    total = 0.0
    for stack_ids, t in s.frame_records:
        stack = []
        for ident in stack_ids[1:]:  # [0] is the thread
            parts = ident.split("\x00")
            fn, fl = parts[0], parts[1] if len(parts) > 1 else ""
            attrs = parts[2].split("\x01") if len(parts) > 2 else []
            cl = next((a[1:] for a in attrs if a.startswith("c")), "")
            stack.append((fn, fl, cl))
        cat = categorize(stack)
        cats[cat] = cats.get(cat, 0.0) + t
        if stack:
            fn, fl, cl = stack[-1]
            short = fl.split("site-packages/")[-1]
            if "/evalrun/" in short:
                short = "evalrun/" + short.split("/evalrun/", 1)[1]
            key = f"{cl + '.' if cl else ''}{fn} ({short})"
            leaves[key] = leaves.get(key, 0.0) + t
        total += t
    lines = [
        (
            f"pyinstrument 1 ms wall-clock sampling of one case-1 run (`python -m pyinstrument -r session -m evalrun run "
            f"CONFIG --no-progress`; N={n}, 0 ms latency). Sampled {total:.2f} s wall (profiler overhead included; "
            f"the unprofiled run takes the case-1 wall above); process CPU {m.cpu_s:.2f} s. Interpreter start before "
            "pyinstrument attaches (~20 ms) is not in it."
        ),
        "",
        "| where | s | share |",
        "|---|---:|---:|",
    ]
    for cat, t in sorted(cats.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {cat} | {t:.3f} | {100 * t / total:.1f} % |")
    groups: dict[str, float] = {}
    for cat, t in cats.items():
        g = cat.split(":")[0]
        groups[g] = groups.get(g, 0.0) + t
    lines += [
        "",
        (
            "pyinstrument sees Python frames only: time in the cyclic GC lands on whatever allocated (often "
            "`orjson.loads`), and C work inside orjson/pyarrow/uvloop on the calling frame."
        ),
        "",
        "By phase: "
        + ", ".join(f"{g} {100 * t / total:.0f} %" for g, t in sorted(groups.items(), key=lambda kv: -kv[1]))
        + ".",
        "",
        "Top 15 leaf functions (self time):",
        "",
        "| function | s | share |",
        "|---|---:|---:|",
    ]
    for key, t in sorted(leaves.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"| `{key}` | {t:.3f} | {100 * t / total:.1f} % |")
    b.say("profile:\n  " + "\n  ".join(lines))
    return lines


# ---- main ----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    dirty = git("status", "--porcelain", "--", "evalrun")
    import aiohttp

    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "commit": git("rev-parse", "--short", "HEAD")
        + (
            " + uncommitted changes in evalrun/: " + ", ".join(ln.split(maxsplit=1)[-1] for ln in dirty.splitlines())
            if dirty
            else ""
        ),
        "aiohttp": aiohttp.__version__,
        "uvloop": uv,
        "kernel": platform.release(),
    }


SRC = ROOT  # the directory holding the evalrun package under test (a HEAD snapshot by default)


def snapshot_head(work: Path) -> tuple[Path, str]:
    """`git archive HEAD evalrun` into work/src and put it first on PYTHONPATH (it shadows the
    editable install), so that other people's uncommitted or later edits can't mix into the
    figures. Returns the directory and the commit."""
    src = work / "src"
    src.mkdir()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "evalrun"], cwd=ROOT, capture_output=True, timeout=120, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, timeout=120, check=True)
    ENV["PYTHONPATH"] = str(src) + (os.pathsep + ENV["PYTHONPATH"] if ENV.get("PYTHONPATH") else "")
    sys.path.insert(0, str(src))
    return src, commit


def source_digest() -> str:
    """Hash of the evalrun sources under test; a change mid-benchmark is reported."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for f in sorted((SRC / "evalrun").rglob("*.py")):
        h.update(str(f.relative_to(SRC)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def render(
    rows: list[Row], info: dict[str, str], args: argparse.Namespace, started: float, b: Bench, profile: list[str] | None
) -> str:
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python tests/bench/bench.py " + " ".join(sys.argv[1:])
    reps = 1 if args.quick else 3
    out = [
        "# evalrun benchmark results (issue 7)",
        "",
        f"- date: {date}; total benchmark time {(time.time() - started) / 60:.1f} min",
        f"- command: `{cmd.strip()}` (with `{PY}`)",
        (
            f"- machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, "
            f"aiohttp {info['aiohttp']}, uvloop {info['uvloop']}"
        ),
        f"- evalrun under test: {info['under_test']}; hash of its evalrun/**/*.py: {info['sources']}",
        f"- checkout: {info['commit']}",
        f"- load: {info['load']}",
        f"- timing cases run {reps}× each: median shown, (min–max) after it; cases 3c/3d and 4 run once",
        (
            f"- environment of every subprocess: proxies unset; `PYTHONDONTWRITEBYTECODE` (set on this machine) unset and "
            f"`PYTHONPYCACHEPREFIX={PYCACHE}`, warmed before measuring, so evalrun starts from bytecode as an installed "
            "copy would (without it each process recompiles evalrun's sources: ~+0.05 s)"
        ),
        (
            "- other people use this machine too (pytest runs of the project): before every measured run the script waits "
            "(≤ 120 s) for a quiet second, and the raw table shows the CPU everything else used during each run; CPU "
            "figures are robust to such load, wall figures are not"
        ),
        (
            "- measured per subprocess through a small launcher's `os.wait4` (tests/own_rusage.py: wall from fork to exit; user+sys CPU and peak RSS of that "
            "process alone; no `/usr/bin/time` needed); the simulator (`evalrun serve-sim`, a fresh process per run, "
            "uvloop) is not included in those figures; its CPU during the run is shown separately"
        ),
        (
            "- requests: `gemini-2.5-flash-lite`, `params: {max_tokens: 16, logprobs: true, top_logprobs: 5, "
            "reasoning_effort: none}`, one user message `Write a short note about the {op} of {a} and {b}.` "
            "over a generated dataset of short arithmetic rows (`{id, a, b, op}`); the simulator answers 16 tokens "
            "for ~86 % of rows (8–15 otherwise), each with 5 top logprobs (~8.7 KB per response); provider "
            "`kind: openai`, `base_urls` → the simulator, `max_concurrency: 100`, `--no-progress`, `--run-dir` in a temp dir"
        ),
        (
            "- floor: `tests/bench/floor_client.py` — one aiohttp `ClientSession`, `Semaphore(100)`, `gather` of N POSTs "
            "with the same bodies, stdlib `json.loads` of each response; default asyncio loop"
        ),
        "",
        "| case | metric | evalrun | floor | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(f"| {r.case} | {r.metric} | {r.value} | {r.floor} | {r.ratio} | {r.target} | {r.verdict} |")
    misses = [r for r in rows if "MISS" in r.verdict]
    passes = [r for r in rows if r.verdict == "PASS"]
    out += ["", f"**{len(passes)} PASS, {len(misses)} MISS.**"]
    if misses:
        out += [""] + [f"- MISS: {r.case} — {r.metric}: {r.value} (target {r.target})" for r in misses]
    out += ["", "## Anomalies seen during the runs", ""]
    out += [f"- {o}" for o in b.observations] or [
        (
            "- none: every evalrun run exited 0, status `completed`, one row per "
            "request, 0 errors, 0 retries, the simulator answered 200 to every request"
        )
    ]
    if profile is not None:
        out += ["", "## Where the time goes (case 1, evalrun)", ""] + profile
    out += [
        "",
        "## Raw runs",
        "",
        (
            "| case | who | N | wall s | user s | sys s | CPU ms/req | peak RSS MB | sim CPU s | "
            "phase s | 429s | max in 60 s window | max tokens in window | journal MB | others' CPU s during the run | RSS MB by phase (sampled) |"
        ),
        "|" + "---|" * 16,
    ]
    for r in b.raw:
        win = ",".join(str(v) for v in (r.get("max_in_window") or {}).values())
        tw = ",".join(str(v) for v in (r.get("max_tokens_in_window") or {}).values())
        out.append(
            f"| {r['case']} | {r['who']} | {r['n']} | {r['wall_s']} | {r['user_s']} | {r['sys_s']} | "
            f"{r['cpu_ms_per_req']} | {r['maxrss_mb']} | {r['sim_cpu_s']} | {r['phase_s']} | {r['count_429']} | "
            f"{win} | {tw} | {r.get('journal_mb', '')} | {r['others_cpu_s']} | "
            f"{', '.join(f'{k} {v}' for k, v in r['rss_by_phase'].items())} |"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="each timing case once; skip case 4 and the >60 s rate cases")
    ap.add_argument("--only", default="1,2,3,4,5", help="comma-separated cases to run (default all: 1,2,3,4,5)")
    ap.add_argument(
        "--out", type=Path, default=HERE / "RESULTS.md", help="Markdown report (default tests/bench/RESULTS.md)"
    )
    ap.add_argument("--no-profile", action="store_true", help="skip the pyinstrument profile of case 1")
    ap.add_argument(
        "--worktree",
        action="store_true",
        help="measure the checkout's evalrun/ as it is (default: a snapshot of HEAD, immune to concurrent edits)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, run dirs, sim logs)")
    ap.add_argument(
        "--peers",
        action="store_true",
        help="case 6: the OpenAI SDK + gather and inspect_ai beside evalrun and the floor, 2k @ 0 ms "
        "(installed by pip into ~/.cache/evalrun-bench-peers on first use)",
    )
    args = ap.parse_args()
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    if not only <= {"1", "2", "3", "4", "5"}:
        ap.error(f"--only takes case numbers 1–5, got {args.only!r}")
    reps = 1 if args.quick else 3
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="evalrun-bench-"))
    # every subprocess starts in the work dir: `python -m evalrun` / `-c` put the current directory
    # first on sys.path, and in the checkout that would be its evalrun/, not the one under test
    args.out = args.out.resolve()
    home = Path.cwd()
    os.chdir(work)
    info = machine()
    global SRC
    if args.worktree:
        info["under_test"] = f"the working tree {ROOT}/evalrun as it was during the run (--worktree)"
    else:
        SRC, commit = snapshot_head(work)
        info["under_test"] = (
            f"commit {commit[:7]} exactly: `git archive HEAD evalrun` exported to a temp dir that is "
            "first on PYTHONPATH (uncommitted edits in the checkout are not measured)"
        )
    where = measure([PY, "-c", "import evalrun, os; print(os.path.dirname(evalrun.__file__))"], 60).stdout.strip()
    if not where.startswith(str(SRC)):
        os.chdir(home)
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f"bench: the subprocesses import evalrun from {where}, not from {SRC}")
    info["under_test"] += f"; subprocesses import it from `{where}`"
    digest0 = source_digest()
    load0 = os.getloadavg()
    b = Bench(work, sys.stderr)
    b.say(f"evalrun bench: work dir {work}; evalrun = {' '.join(EVALRUN)}")
    rows: list[Row] = []
    profile = None
    for _ in range(2):  # bytecode into PYCACHE, files into the page cache; not measured
        measure([PY, "-c", WARM], 300)
        measure([*EVALRUN, "--help"], 60)
    try:
        if "1" in only:
            case1(b, reps, rows)
        if "2" in only:
            case2(b, reps, rows)
        if "3" in only:
            case3(b, reps, rows, stress=not args.quick)
        if "4" in only and not args.quick:
            case4(b, rows)
        if "5" in only:
            case5(b, reps, rows)
        if args.peers:
            case6(b, reps, rows)
        if "1" in only and not args.no_profile:
            profile = profile_case1(b)
    finally:
        os.chdir(home)
        digest1 = source_digest()
        if args.keep:
            b.say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    info["load"] = (
        f"{load0[0]:.2f} at start, {load1[0]:.2f} at end (1-min load average; other processes share the 2 cores)"
    )
    info["sources"] = digest0 if digest0 == digest1 else f"{digest0} at start, {digest1} at end"
    if digest0 != digest1:
        b.observations.append(
            "evalrun/ sources changed while the benchmark ran (others edit them concurrently): "
            "figures mix two versions; rerun for a clean set"
        )
    text = render(rows, info, args, started, b, profile)
    w = max(len(r.metric) for r in rows) if rows else 10
    for r in rows:
        print(
            f"{r.case:<28} {r.metric:<{w}}  {r.value:<28} floor {r.floor:<22} {r.ratio:<7} {r.target:<28} {r.verdict.strip('*')}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
