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

The cache is an optimisation, never a way to lose a run. `cache_problem` looks at it before
anything is sent (a damaged file, a table of another shape, a folder that cannot be written:
refused in one line, exit 2). Should it fail later (the disk fills, another process damages
it), it turns itself off for the rest of the run with one warning, and the journal goes on
recording every answer. A stored answer that does not parse is a miss, never an answer.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from evalrun.config.models import ProviderConfig
from evalrun.run.http.client import Payloads
from evalrun.run.records.logprobs import rows_from_stored
from evalrun.run.records.records import RequestSpec
from evalrun.run.store.journal import JOURNAL, JUDGE_JOURNAL, read_journal
from evalrun.run.store.rundir import nearest_existing, unwritable

logger = logging.getLogger(__name__)

CACHE_FILE = "responses.sqlite"
MIN_FREE = 64 * 1024  # below this a cache cannot even open its shared-memory index: the disk is full
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
COLUMNS = ("key", "rows", "source_run", "cost")  # the responses table, in order


# simulator knobs that change when or whether it answers, never what a successful answer says
_SIM_TIMING = ("latency_ms", "per_token_ms", "latency_scale", "hang_s", "rate_hang")


def endpoint_identity(provider: ProviderConfig) -> str:
    """Who answers: the base URLs of an API (never its key), or the simulator's answer-shaping
    options (its seed, its models; not its latency)."""
    if provider.kind == "simulator":
        opts = provider.simulator.model_dump(mode="json", exclude=set(_SIM_TIMING))
        return "simulator:" + orjson.dumps(opts, option=orjson.OPT_SORT_KEYS).decode()
    return "openai:" + ",".join(provider.base_urls)


class Keyer:
    """The cache key of every request of one provider, from the body the client would send."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._payloads = Payloads()

    def __call__(self, spec: RequestSpec) -> str:
        body = orjson.dumps(self._payloads.payload(spec), option=orjson.OPT_SORT_KEYS)
        return request_key(body, self.endpoint, spec.repeat)


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
    """One SQLite file of answers; safe to share between processes. Raises sqlite3.Error if it
    cannot be opened; once open, a failure turns it off (`off` says why) instead of raising."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly  # `plan`'s look: it says what failed itself
        self.off: str | None = None  # why it was turned off mid-run (None: in use)
        self._bad: set[str] = set()  # keys whose stored answer does not parse: replaced when answered
        if readonly:
            uri = f"file:{path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL: a commit is durable against a process crash (the WAL is written before
                # it returns); only a power cut may lose the last answers, which are then re-asked
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(SCHEMA)
                self._db.commit()
            except sqlite3.Error:
                self._db.close()
                raise
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self.stored = 0

    def get(self, key: str) -> CachedAnswer | None:
        if self.off is not None:
            return None
        try:
            row = self._db.execute("SELECT rows, source_run, cost FROM responses WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            self._turn_off(exc)
            return None
        if row is None:
            return None
        answer = stored_answer(row[0], row[1], row[2])
        if answer is None:
            self._bad.add(key)
        return answer

    def put(self, key: str, rows: list[dict[str, Any]], source_run: str | None, cost: float | None) -> None:
        """Store a successful answer; the first one stored for a key stays (it is the same request)."""
        self.put_many([(key, rows, source_run, cost)])

    def put_many(self, items: Iterable[tuple[str, list[dict[str, Any]], str | None, float | None]]) -> int:
        """Store many answers in one transaction (loading an earlier run for --reuse)."""
        if self.off is not None:
            return 0
        before = self.stored
        try:
            with self._db:
                for key, rows, source_run, cost in items:
                    kept = [{k: v for k, v in r.items() if k not in PER_RUN} for r in rows]
                    # a stored answer that did not parse is replaced; a good one stays
                    verb = "REPLACE" if key in self._bad else "IGNORE"
                    cur = self._db.execute(
                        f"INSERT OR {verb} INTO responses (key, rows, source_run, cost) VALUES (?, ?, ?, ?)",
                        (key, orjson.dumps(kept), source_run, cost),
                    )
                    self._bad.discard(key)
                    self.stored += cur.rowcount
        except sqlite3.Error as exc:
            self.stored = before  # the transaction was rolled back
            self._turn_off(exc)
        return self.stored - before

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error as exc:  # the last checkpoint on a full disk: the WAL keeps the answers
            logger.debug("closing %s: %s", self.path, exc)

    def _turn_off(self, exc: sqlite3.Error) -> None:
        """The cache failed mid-run: the run goes on without it, saying so once."""
        self.off = str(exc)
        if not self.readonly:
            warn_off(self.path, self.off)


def warn_off(path: Path, why: str) -> None:
    """The one warning of a cache that failed during a run."""
    logger.warning(
        "%s: the response cache failed (%s); it is off for the rest of this run: every answer is still "
        "recorded in the journal, none is taken from or kept in the cache. Before the next run: free space "
        "if the disk is full, or %s",
        path,
        why,
        fix_hint(path),
    )


def stored_answer(rows: Any, source_run: Any, cost: Any) -> CachedAnswer | None:
    """A stored answer as served, or None when what is stored is not one (a damaged cache):
    a miss, asked again, never served. An answer is a non-empty list of `ok` rows."""
    try:
        parsed = orjson.loads(rows)
    except (orjson.JSONDecodeError, TypeError):
        return None
    if not isinstance(parsed, list) or not parsed:
        return None
    if not all(isinstance(r, dict) and r.get("status") == "ok" for r in parsed):
        return None
    return CachedAnswer(
        rows_from_stored(parsed),
        source_run if isinstance(source_run, str) else None,
        float(cost) if isinstance(cost, int | float) else None,
    )


def fix_hint(path: Path) -> str:
    """How to go on without a cache that cannot be used."""
    folder = path.parent
    return f"run without it (--no-cache), or move it aside (mv {folder} {folder}.old) and a new one is started"


def cache_problem(path: Path) -> str | None:
    """What is wrong with the cache file at `path` for a run, and how to go on (None: nothing):
    its folder cannot be written, or the file is damaged or is not evalrun's. Reads it, never
    writes it: `plan` and `validate` ask too. SQLite's quick_check (a walk of every b-tree page,
    ~0.25 s for 400 MB) finds a cut or overwritten file here rather than halfway through a run."""
    why = unwritable(path.parent)
    if why is None and shutil.disk_usage(nearest_existing(path.parent)).free < MIN_FREE:
        why = "its disk is full"
    if why is not None:
        return f"cannot be written: {why}; point cache: at a folder that can be, or run without it (--no-cache)"
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            problem = _shape_problem(db) or _damage(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        damaged = exc.sqlite_errorname in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
        problem = f"{'is damaged' if damaged else 'cannot be read'} ({exc})"
    return None if problem is None else f"{problem}; {fix_hint(path)}"


def _shape_problem(db: sqlite3.Connection) -> str | None:
    tables = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    if "responses" not in tables:
        return f"is not evalrun's response cache (tables: {', '.join(tables)})" if tables else None
    columns = tuple(r[1] for r in db.execute("PRAGMA table_info(responses)"))
    if columns != COLUMNS:
        return f"has a responses table of another shape (columns {', '.join(columns)}; expected {', '.join(COLUMNS)})"
    return None


def _damage(db: sqlite3.Connection) -> str | None:
    found = [str(r[0]) for r in db.execute("PRAGMA quick_check(3)")]
    said = " ".join("; ".join(found).split())  # SQLite's report runs over several lines
    return None if found == ["ok"] else f"is damaged ({said[:300]})"


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


def serve_from(
    caches: list[ResponseCache],
    specs: Iterator[RequestSpec],
    keyer: Callable[[RequestSpec], str],
    on_hit: Callable[[RequestSpec, str, CachedAnswer], None],
    on_miss: Callable[[RequestSpec, str], None],
) -> Iterator[RequestSpec]:
    """The lane's requests that no cache answers; the answered ones go to `on_hit`, unsent."""
    for spec in specs:
        key = keyer(spec)
        hit = next((a for c in caches if (a := c.get(key)) is not None), None)
        if hit is None:
            on_miss(spec, key)
            yield spec
        else:
            on_hit(spec, key, hit)


def load_run(cache: ResponseCache, journal_entries: Iterable[dict[str, Any]], source_run: str) -> int:
    """Put an earlier run's successful answers (those recorded with their request key) in `cache`."""

    def items() -> Iterator[tuple[str, list[dict[str, Any]], str | None, float | None]]:
        for entry in journal_entries:
            rows = entry.get("rows") or []
            key = rows[0].get("request_key") if rows else None
            if entry.get("status") == "ok" and key:
                first = rows[0]  # an answer the earlier run itself took from a cache keeps its origin
                if first.get("cached"):
                    yield key, rows, first.get("cache_source_run"), first.get("cached_cost_total")
                else:
                    yield key, rows, source_run, first.get("cost_total")

    return cache.put_many(items())


REUSE_FILE = "reuse.sqlite"  # an earlier run's answers, loaded for `--reuse`; removed when the run ends


class Recording(Protocol):
    """What the cache layer tells the recorder (see run/recorder.py)."""

    def record_cached(self, spec: RequestSpec, key: str, hit: CachedAnswer) -> None: ...

    def remember_key(self, spec: RequestSpec, key: str) -> None: ...


@dataclass
class Caches:
    """The request keys of a run, and the caches it asks before sending (--reuse first)."""

    keyers: dict[str, Keyer]  # provider → its request keys
    lookup: list[ResponseCache]
    store: ResponseCache | None  # where this run's answers are kept (the experiment's cache)
    reuse_file: Path | None = None

    def serve(self, provider: str, specs: Iterator[RequestSpec], recorder: Recording) -> Iterator[RequestSpec]:
        """A lane's requests minus those a cache answers (recorded at once, unsent)."""
        if not self.lookup:
            return specs
        return serve_from(self.lookup, specs, self.keyers[provider], recorder.record_cached, recorder.remember_key)

    def close(self) -> None:
        for c in {id(c): c for c in [*self.lookup, *([self.store] if self.store else [])]}.values():
            c.close()
        if self.reuse_file is not None:
            self.reuse_file.unlink(missing_ok=True)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.reuse_file}{suffix}").unlink(missing_ok=True)


def open_caches(
    providers: Mapping[str, ProviderConfig], cache: Path | None, reuse: Path | None, run_dir: Path
) -> Caches:
    """Keyers for every provider; the experiment's cache; an earlier run's answers for --reuse."""
    keyers = {name: Keyer(endpoint_identity(p)) for name, p in providers.items()}
    lookup: list[ResponseCache] = []
    reuse_file = None
    if reuse is not None:
        reuse_file = run_dir / REUSE_FILE
        reused = _opened(reuse_file)
        if reused is not None:
            for journal in (JOURNAL, JUDGE_JOURNAL):
                load_run(reused, read_journal(reuse / journal), reuse.name)
            lookup.append(reused)
    store = _opened(cache) if cache is not None else None
    if store is not None:
        lookup.append(store)
    return Caches(keyers, lookup, store, reuse_file)


def _opened(path: Path) -> ResponseCache | None:
    """A cache opened for writing; None, said once, when it fails (the run goes on without it).
    `cache_problem` checked it before the run began: this is a disk that filled up since."""
    try:
        return ResponseCache(path)
    except (sqlite3.Error, OSError) as exc:  # OSError: its folder could not be made
        warn_off(path, str(exc))
        return None
