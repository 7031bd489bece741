"""`evalrun …` under tracemalloc: where the memory is at the run's peak (issue 23).

    python tests/bench/heap_top.py run experiment.yaml --no-progress --run-dir DIR

A thread samples the traced memory every 0.5 s; whenever it is the highest so far, a snapshot
is taken (frames: 1). At exit the top allocation sites of the peak snapshot are printed to
stderr, as `heap: <KB> <count> <file:line>`. tracemalloc slows the run 2-3 ×: use it to find
the sites, never for timing.
"""

from __future__ import annotations

import sys
import threading
import tracemalloc

TOP = 12


def main() -> int:
    tracemalloc.start(1)
    best: dict[str, object] = {"bytes": 0, "snap": None}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            current, _ = tracemalloc.get_traced_memory()
            if current > best["bytes"] * 1.05:  # type: ignore[operator]
                best["bytes"] = current
                best["snap"] = tracemalloc.take_snapshot()

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    from evalrun.cli import main as evalrun_main

    try:
        return evalrun_main(sys.argv[1:])
    finally:
        stop.set()
        th.join()
        peak = tracemalloc.get_traced_memory()[1]
        if "pyarrow" in sys.modules:  # Arrow's buffers are not traced: its pool's own peak
            pool = sys.modules["pyarrow"].default_memory_pool()
            print(f"heap: Arrow pool {pool.backend_name}, peak {pool.max_memory() / 2**20:.0f} MB", file=sys.stderr)
        snap = best["snap"]
        print(
            f"heap: traced peak {peak / 2**20:.0f} MB; at the largest snapshot {best['bytes'] / 2**20:.0f} MB (0.5 s samples)",
            file=sys.stderr,
        )  # type: ignore[operator]
        if snap is not None:
            snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])  # type: ignore[attr-defined]
            for stat in snap.statistics("lineno")[:TOP]:  # type: ignore[attr-defined]
                frame = stat.traceback[0]
                print(
                    f"heap: {stat.size / 1024:10.0f} KB {stat.count:9d} {frame.filename}:{frame.lineno}",
                    file=sys.stderr,
                )


if __name__ == "__main__":
    sys.exit(main())
