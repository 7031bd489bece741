"""Paying once for an answer: a response cache keyed by exactly what was asked, and where.

The key is a digest of the request body as sent (model, parameters, messages — the same bytes
the client posts), the provider endpoint's identity (its base URLs, or the simulator's
options) and the repeat index, so repeats stay separate samples and are never served from one
another. The API key is never part of it. Only successful answers are stored; an error is
always asked again.

The store is one SQLite file in WAL mode: several evalrun processes (a CI matrix, shards)
read and write it at once without a server, a lookup is an index probe rather than a scan of
earlier Parquet files, and a crash mid-write loses at most that one answer. `--reuse RUN`
goes through the same path: the earlier run's answers are loaded into a cache for this run.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

CACHE_FILE = "responses.sqlite"
BUSY_TIMEOUT_MS = 30_000  # another process holding the write lock: wait this long, then fail loudly
SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    rows BLOB NOT NULL,        -- the answer's report rows (orjson), as first recorded
    source_run TEXT,           -- the run that paid for it
    cost REAL                  -- what it cost then
)
"""
# columns of a cached row that describe where and when it was recorded, not the answer
PER_RUN = ("run_id", "experiment", "request_id", "cell_id", "row_id", "repeat", "started_at")


def request_key(body: bytes, endpoint: str, repeat: int) -> str:
    """The cache key of one request: the body as sent, the endpoint, the repeat index."""
    h = hashlib.blake2b(digest_size=20)
    h.update(endpoint.encode())
    h.update(b"\x00%d\x00" % repeat)
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer found in the cache: its rows as first recorded, who paid, and how much."""

    rows: list[dict[str, Any]]
    source_run: str | None
    cost: float | None


class ResponseCache:
    """One SQLite file of answers; safe to share between processes."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            uri = f"file:{path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit is durable against a process crash (the WAL is written before
            # it returns); only a power cut may lose the last answers, which are then re-asked
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
            self._db.commit()
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self.hits = 0
        self.stored = 0

    def get(self, key: str) -> CachedAnswer | None:
        row = self._db.execute("SELECT rows, source_run, cost FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        self.hits += 1
        return CachedAnswer(orjson.loads(row[0]), row[1], row[2])

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, rows: list[dict[str, Any]], source_run: str | None, cost: float | None) -> None:
        """Store a successful answer; the first one stored for a key stays (it is the same request)."""
        kept = [{k: v for k, v in r.items() if k not in PER_RUN} for r in rows]
        with self._db:  # one transaction: committed when the block ends
            cur = self._db.execute(
                "INSERT OR IGNORE INTO responses (key, rows, source_run, cost) VALUES (?, ?, ?, ?)",
                (key, orjson.dumps(kept), source_run, cost),
            )
        self.stored += cur.rowcount

    def put_many(self, items: Iterable[tuple[str, list[dict[str, Any]], str | None, float | None]]) -> int:
        """Store many answers in one transaction (loading an earlier run for --reuse)."""
        before = self.stored
        with self._db:
            for key, rows, source_run, cost in items:
                kept = [{k: v for k, v in r.items() if k not in PER_RUN} for r in rows]
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO responses (key, rows, source_run, cost) VALUES (?, ?, ?, ?)",
                    (key, orjson.dumps(kept), source_run, cost),
                )
                self.stored += cur.rowcount
        return self.stored - before

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def cached_rows(answer: CachedAnswer, fresh: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The report rows of a cache hit: the cached answer under this run's identity columns
    (`fresh`), marked cached, at no cost to this run (what it cost once is kept beside)."""
    for i, row in enumerate(answer.rows):
        out = {**row, **fresh, "cached": True, "cache_source_run": answer.source_run}
        if i == 0:
            out["cached_cost_total"] = answer.cost
        for k in list(out):
            if k.startswith("cost_") and out[k] is not None:
                out[k] = 0.0
        yield out
