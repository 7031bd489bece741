"""What the cache check before each validate/plan/run costs (SQLite's quick_check walks every
b-tree page): `python tests/bench/cache_check.py N DIR` fills DIR/responses.sqlite with N
answers of ~2 KB (once) and prints the best of 5 checks."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

from evalrun.run.store.cache import SCHEMA, cache_problem


def main() -> None:
    n, path = int(sys.argv[1]), Path(sys.argv[2]) / "responses.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(SCHEMA)
        blob = b'[{"status": "ok", "content": "' + b"x" * 2000 + b'"}]'
        with db:
            db.executemany("INSERT INTO responses VALUES (?, ?, 'r', 0.1)", ((f"{i:040x}", blob) for i in range(n)))
        db.close()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        assert cache_problem(path) is None
        times.append(time.perf_counter() - t)
    print(f"{n:,} answers, {path.stat().st_size / 1e6:.0f} MB: cache check best of 5 {min(times) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
