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

from evalrun.run.convert import RowHook, arrow_without_pandas, convert_batch
from evalrun.run.rundir import RESULTS, results_unwritable
from evalrun.run.store import PARQUET_BATCH_ROWS, results_writer, schema_for

logger = logging.getLogger(__name__)

FLUSH_S = 0.2  # rows go to the writer at least this often
# Rows go to the writer thread in small batches and are converted to Arrow at once: as Python
# dicts a row with 16 tokens × top-5 logprobs holds ≈ 40 KB, in Arrow a few KB. Measured: with
# 8 queued batches of 1,024 rows a 200k run at 0 ms peaked at 376 MB RSS (the writer lags there).
SEND_ROWS = 128
QUEUED_BATCHES = 4  # batches waiting for the writer before record() waits (back-pressure, bounded memory)


class ResultsSink:
    """Rows of finished requests → results.parquet.tmp in a writer thread; `finish` renames it."""

    def __init__(self, run_dir: Path, data_columns: tuple[str, ...], hook: RowHook | None) -> None:
        self.run_dir = run_dir
        self.tmp = run_dir / (RESULTS + ".tmp")
        self.counts = {"requests": 0, "errors": 0, "rows": 0, "strays": 0}
        self._columns = data_columns
        self._hook = hook
        self._buf: list[dict[str, Any]] = []
        self._flushed = time.monotonic()
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(QUEUED_BATCHES)
        self._error: BaseException | None = None
        self._written = 0
        self._thread = threading.Thread(target=self._work, name="evalrun-results", daemon=True)
        self._thread.start()

    def add(self, status: str, rows: list[dict[str, Any]]) -> None:
        """One recorded request's rows (already durable in the journal)."""
        self.counts["requests"] += 1
        self.counts["errors"] += status == "error"
        self._buf.extend(rows)
        # by size, and by age: what is left for the end of the run (converted after the last
        # answer) is at most FLUSH_S worth of rows, however long the run was
        if len(self._buf) >= SEND_ROWS or time.monotonic() - self._flushed >= FLUSH_S:
            self._queue.put(self._buf)
            self._buf = []
            self._flushed = time.monotonic()

    def _work(self) -> None:
        writer = None
        batch: list[dict[str, Any]] | None = []  # None once the end mark has been taken
        try:
            # pyarrow is imported once the first batch is ready, not while the run starts up
            batch = self._queue.get()

            arrow_without_pandas()

            schema = schema_for(self._columns, self._hook)
            writer = results_writer(self.tmp, schema)
            import pyarrow as pa

            done: list[pa.Table] = []  # converted, not yet written: row groups of PARQUET_BATCH_ROWS
            held = 0
            while batch is not None:
                done.append(convert_batch(batch, schema, self._hook))
                held += len(batch)
                self._written += len(batch)
                batch = self._queue.get()
                if held >= PARQUET_BATCH_ROWS or (batch is None and held):
                    writer.write_table(pa.concat_tables(done), row_group_size=held)
                    done, held = [], 0
        except BaseException as exc:  # re-raised in finish(), on the run's thread
            self._error = exc
            while batch is not None:  # keep draining up to the end mark so add() never blocks for good
                batch = self._queue.get()
        finally:
            if writer is not None:
                try:
                    writer.close()
                except BaseException as exc:
                    self._error = self._error or exc

    def _stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def finish(self) -> dict[str, int]:
        """Write the last rows, close, rename to results.parquet; the counts as write_results's."""
        if self._buf:
            self._queue.put(self._buf)
            self._buf = []
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
        self._buf = []
        self._stop()
        self.tmp.unlink(missing_ok=True)
