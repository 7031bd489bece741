"""What-ifs for bench.py: `evalrun` with one runtime tweak, without editing evalrun/.

    BENCH_WHATIF=gc,summary-columns python tests/bench/whatif.py run CONFIG --no-progress ...

gc               gc.set_threshold(100_000, 50, 1000) before evalrun starts: the cyclic GC runs
                 ~100× less often (evalrun allocates millions of small dicts/lists per 1,000
                 requests — parsed responses, logprobs, report rows — none of them cyclic)
summary-columns  pandas.read_parquet(<run>/results.parquet) without the heavy nested/text
                 columns (logprobs, messages, tool_calls), i.e. what evalrun.analysis.summary would read if
                 it asked only for the columns it aggregates

Each applied tweak is announced on stderr ("whatif: ... applied"), so bench.py can tell a tweak
that no longer hooks into evalrun from one that made no difference.
"""

from __future__ import annotations

import gc
import os
import sys

MODES = {m.strip() for m in os.environ.get("BENCH_WHATIF", "").split(",") if m.strip()}
HEAVY = {"logprobs", "messages", "tool_calls"}

if "gc" in MODES:
    gc.set_threshold(100_000, 50, 1000)
    print("whatif: gc applied", file=sys.stderr)

if "summary-columns" in MODES:
    import pandas as pd
    import pyarrow.parquet as pq

    _read_parquet = pd.read_parquet

    def read_parquet(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).endswith("results.parquet") and kwargs.get("columns") is None:
            kwargs["columns"] = [n for n in pq.read_schema(path).names if n not in HEAVY]
            print("whatif: summary-columns applied", file=sys.stderr, flush=True)
        return _read_parquet(path, *args, **kwargs)

    pd.read_parquet = read_parquet

if __name__ == "__main__":
    from evalrun.cli import main

    sys.exit(main(sys.argv[1:]))
