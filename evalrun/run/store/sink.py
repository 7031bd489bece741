"""results.parquet written while the run goes: row groups of finished requests, off the event loop.

The journal stays the source of truth: the recorder appends an entry (durable) and only then
hands its rows here. A writer thread converts them to Arrow as they come (every
`SEND_ROWS` rows or `FLUSH_S`), passes them through the analysis stage's `RowHook`, and appends
a row group of `results.parquet.tmp` every `PARQUET_BATCH_ROWS`; at the end of the run at most
`FLUSH_S` of rows are left to convert, so the time from the last answer to results.parquet
does not grow with N. A crash leaves the .tmp behind;
`--resume` rebuilds results.parquet from the journal (`store.write_results`) as before.

Why a thread and not slices on the loop: the conversion of 1,024 rows with nested logprobs
takes tens of milliseconds of CPU, which on the loop would land on the measured latency of
whatever request was waiting; in the thread the loop takes the GIL back at its next switch
interval, and at 200 ms latencies the thread runs in the loop's idle time.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from evalrun.run.records.records import Logprobs
from evalrun.run.store.convert import RowHook, arrow_without_pandas, convert_batch
from evalrun.run.store.rundir import RESULTS, results_unwritable
from evalrun.run.store.store import PARQUET_BATCH_ROWS, results_writer, schema_for

logger = logging.getLogger(__name__)

FLUSH_S = 0.2  # rows go to the writer at least this often
# Rows go to the writer thread in small batches and are converted to Arrow at once: as Python
# dicts a row with 16 tokens × top-5 logprobs holds ≈ 40 KB, in Arrow a few KB. Measured: with
# 8 queued batches of 1,024 rows a 200k run at 0 ms peaked at 376 MB RSS (the writer lags there).
SEND_ROWS = 128
QUEUED_BATCHES = 4  # batches waiting for the writer before record() waits (back-pressure, bounded memory)
# Bounded by bytes too, not by rows alone: a 2,000-token answer with top-5 logprobs is ≈ 1.2 MB
# as Python objects and ≈ 0.6 MB in Arrow, so 128-row batches and 1,024-row groups held
# ≈ 1.3 GB at any N (issue 23). A batch goes to the writer at SEND_BYTES (estimated, `row_bytes`),
# a row group is written at GROUP_BYTES of Arrow: the sink holds at most about
# (QUEUED_BATCHES + 2) × SEND_BYTES of rows plus GROUP_BYTES of Arrow, whatever the answers' size.
# Writing a row group costs RSS in proportion to it beyond Arrow's pool (measured, 300 long
# rows: +35 MB at 2 MB groups, +64 MB at 8 MB, +98 MB at 32 MB); 4 MB keeps a run of long answers
# at concurrency 100 near 250 MB, for a results.parquet up to 2 × larger when answers repeat.
SEND_BYTES = 2**20
GROUP_BYTES = 4 * 2**20
ROW_BYTES = 2048  # a row's dict and its short values, as Python objects
TOKEN_BYTES = 100  # a token or alternative of a row's Logprobs: its str, its float, two list slots


def row_bytes(row: dict[str, Any]) -> int:
    """What a report row holds as Python objects, estimated from what grows with the answer."""
    lp = row.get("logprobs")
    tokens = len(lp.token) + len(lp.top_token) if type(lp) is Logprobs else 6 * len(lp) if type(lp) is list else 0
    content = row.get("content")
    return ROW_BYTES + TOKEN_BYTES * tokens + (len(content) if type(content) is str else 0)


class ResultsSink:
    """Rows of finished requests → results.parquet.tmp in a writer thread; `finish` renames it."""

    def __init__(self, run_dir: Path, data_columns: tuple[str, ...], hook: RowHook | None) -> None:
        self.run_dir = run_dir
        self.tmp = run_dir / (RESULTS + ".tmp")
        self.counts = {"requests": 0, "errors": 0, "rows": 0, "strays": 0}
        self._columns = data_columns
        self._hook = hook
        self._buf: list[dict[str, Any]] = []
        self._buf_bytes = 0  # row_bytes of _buf
        self._flushed = time.monotonic()
        # (rows, their row_bytes); None: the end
        self._queue: queue.Queue[tuple[list[dict[str, Any]], int] | None] = queue.Queue(QUEUED_BATCHES)
        # what the sink holds beyond the rows being added: Python rows sent to the writer and not
        # yet converted (estimated), and Arrow not yet written; the peaks are what tests check
        self._lock = threading.Lock()
        self.held_bytes = self.peak_held_bytes = 0
        self.arrow_bytes = self.peak_arrow_bytes = 0
        self._error: BaseException | None = None
        self._written = 0
        self._thread = threading.Thread(target=self._work, name="evalrun-results", daemon=True)
        self._thread.start()

    def add(self, status: str, rows: list[dict[str, Any]]) -> None:
        """One recorded request's rows (already durable in the journal)."""
        self.counts["requests"] += 1
        self.counts["errors"] += status == "error"
        self._buf.extend(rows)
        self._buf_bytes += sum(row_bytes(r) for r in rows)
        # by size, and by age: what is left for the end of the run (converted after the last
        # answer) is at most FLUSH_S worth of rows, however long the run was
        if len(self._buf) >= SEND_ROWS or self._buf_bytes >= SEND_BYTES or time.monotonic() - self._flushed >= FLUSH_S:
            self._send()

    def _send(self) -> None:
        with self._lock:
            self.held_bytes += self._buf_bytes
            self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        self._queue.put((self._buf, self._buf_bytes))  # waits while QUEUED_BATCHES are queued
        self._buf, self._buf_bytes = [], 0
        self._flushed = time.monotonic()

    def _work(self) -> None:
        writer = None
        ended = False  # the end mark has been taken
        try:
            # pyarrow is imported once the first batch is ready, not while the run starts up
            item = self._queue.get()
            ended = item is None

            arrow_without_pandas()

            schema = schema_for(self._columns, self._hook)
            writer = results_writer(self.tmp, schema)
            import pyarrow as pa

            done: list[pa.Table] = []  # converted, not yet written: one row group
            held = 0
            while item is not None:
                rows, size = item
                item = None  # the rows' Python objects go once converted, not after the next batch came
                table = convert_batch(rows, schema, self._hook)
                del rows
                self._converted(size, table.nbytes)
                done.append(table)
                held += table.num_rows
                self._written += table.num_rows
                item = self._queue.get()
                ended = item is None
                if held >= PARQUET_BATCH_ROWS or self.arrow_bytes >= GROUP_BYTES or (ended and held):
                    writer.write_table(pa.concat_tables(done), row_group_size=held)
                    done, held, self.arrow_bytes = [], 0, 0
        except BaseException as exc:  # re-raised in finish(), on the run's thread
            self._error = exc
            while not ended:  # keep draining up to the end mark so add() never blocks for good
                ended = self._queue.get() is None
        finally:
            if writer is not None:
                try:
                    writer.close()
                except BaseException as exc:
                    self._error = self._error or exc

    def _converted(self, size: int, arrow_bytes: int) -> None:
        """A batch is Arrow now: its rows' estimated bytes leave the count, its Arrow's join."""
        with self._lock:
            self.held_bytes -= size
            self.arrow_bytes += arrow_bytes
            self.peak_arrow_bytes = max(self.peak_arrow_bytes, self.arrow_bytes)

    def _stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def finish(self) -> dict[str, int]:
        """Write the last rows, close, rename to results.parquet; the counts as write_results's."""
        if self._buf:
            self._send()
        self._stop()
        exc = self._error
        if isinstance(exc, OSError):  # disk full (or gone): as write_results says it
            self.tmp.unlink(missing_ok=True)
            raise results_unwritable(self.run_dir, exc) from None
        if exc is not None:
            self.tmp.unlink(missing_ok=True)
            raise exc
        try:
            os.replace(self.tmp, self.run_dir / RESULTS)
        except OSError as err:
            raise results_unwritable(self.run_dir, err) from None
        self.counts["rows"] = self._written
        return self.counts

    def abandon(self) -> None:
        """The run failed before its end: stop the thread; the journal has every answer."""
        self._buf, self._buf_bytes = [], 0
        self._stop()
        self.tmp.unlink(missing_ok=True)
