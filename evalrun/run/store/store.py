"""Results on disk: the explicit Arrow schema, the report rows of one request,
`results.parquet` written from the journal (see `journal.py`), and `manifest.json`.

Writing results.parquet passes every batch of rows through the caller's `RowHook`s (the
analysis stage scores and summarises there) so the run stage never imports analysis.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from evalrun.config.params import PARAM_ARROW_KIND, PARAM_COLUMN, PARAM_NAMES
from evalrun.config.prices import COST_COLUMNS
from evalrun.config.templates import cell_text
from evalrun.run.records.logprobs import arrow_type, from_arrow
from evalrun.run.records.records import Choice, Completion, Result
from evalrun.run.store.convert import RowHook as RowHook
from evalrun.run.store.convert import write_batch
from evalrun.run.store.journal import JOURNAL, read_journal
from evalrun.run.store.manifest_io import now_iso as now_iso

# re-exported: the analysis stage reads a run directory through this module
from evalrun.run.store.rundir import MANIFEST as MANIFEST
from evalrun.run.store.rundir import RESULTS as RESULTS
from evalrun.run.store.rundir import SUMMARY as SUMMARY
from evalrun.run.store.rundir import holding_run_dirs, lock_run_dir, results_unwritable
from evalrun.run.store.rundir import manifest_if_any as manifest_if_any
from evalrun.run.store.rundir import request_rows as request_rows
from evalrun.run.store.rundir import require_finished as require_finished
from evalrun.run.store.rundir import results_file as results_file
from evalrun.run.store.rundir import write_json as write_json

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

PARQUET_BATCH_ROWS = 1024  # rows per Parquet write: sets the peak memory of writing the report (measured)
DATA_PREFIX = "data_"  # dataset columns are stored as data_<column>

USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "prompt_text_tokens",
    "prompt_audio_tokens",
    "prompt_image_tokens",
    "completion_text_tokens",
    "completion_audio_tokens",
)


def results_schema(
    data_columns: tuple[str, ...] = (),
    scorer_names: Sequence[str] = (),
    extra: Sequence[tuple[str, str]] = (),
) -> pa.Schema:
    """The schema of results.parquet: fixed columns, one per request parameter, data_*, then
    score_<name> and pass_<name> per scorer, then `extra` (name, kind) columns (a judge's)."""
    import pyarrow as pa

    kinds = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "str": pa.string(), "json": pa.string()}
    fields = [
        *_request_fields(kinds),
        *_answer_fields(),
        *[(DATA_PREFIX + c, pa.string()) for c in data_columns],
        # what the response cache knows a request by, and whether this answer came from it
        ("request_key", pa.string()),
        ("cached", pa.bool_()),
        ("cache_source_run", pa.string()),
        ("cached_cost_total", pa.float64()),
        *[f for n in scorer_names for f in ((f"score_{n}", pa.float64()), (f"pass_{n}", pa.bool_()))],
        *[(name, kinds[kind]) for name, kind in extra],
    ]
    return pa.schema(fields)


def _request_fields(kinds: dict[str, pa.DataType]) -> list[tuple[str, pa.DataType]]:
    """What was asked: the run, cell and model, each request parameter, the prompt and row."""
    import pyarrow as pa

    return [
        ("run_id", pa.string()),
        ("request_id", pa.string()),
        ("cell_id", pa.string()),
        ("experiment", pa.string()),
        ("provider", pa.string()),
        ("base_url", pa.string()),
        ("model", pa.string()),
        ("response_model", pa.string()),
        *[(PARAM_COLUMN[name], kinds[PARAM_ARROW_KIND[name]]) for name in PARAM_NAMES],
        ("prompt_id", pa.string()),
        ("row_id", pa.string()),
        ("repeat", pa.int64()),
        ("messages", pa.string()),
    ]


def _answer_fields() -> list[tuple[str, pa.DataType]]:
    """What came back: the choice, its logprobs, usage and cost, timing, retries and the outcome."""
    import pyarrow as pa

    return [
        ("choice_index", pa.int64()),
        ("n_choices", pa.int64()),
        ("content", pa.string()),
        ("finish_reason", pa.string()),
        ("tool_calls", pa.string()),
        ("logprobs", arrow_type()),
        *[(name, pa.int64()) for name in USAGE_FIELDS],
        *[(name, pa.float64()) for name in COST_COLUMNS],
        ("latency_s", pa.float64()),
        ("ttft_s", pa.float64()),
        ("stream_chunks", pa.int64()),
        ("itl_mean_s", pa.float64()),
        ("itl_p95_s", pa.float64()),
        ("started_at", pa.timestamp("ms", tz="UTC")),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
        ("attempts", pa.int64()),
        ("retry_types", pa.list_(pa.string())),
        ("limiter_wait_s", pa.float64()),
        ("status", pa.string()),
        ("http_status", pa.int64()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("response_id", pa.string()),
    ]


# The logprobs are most of results.parquet. Their floats are stored byte-stream-split (zstd then
# finds the shared sign and exponent bytes) and their byte values delta-packed (successive UTF-8
# bytes of a token are close): on the bench workload 999 bytes per row instead of 1,319, and
# faster to write (24 µs a row against 27, measured). Statistics are of no use on them: left out.
# pandas, DuckDB and Spark (parquet-mr ≥ 1.12) read both encodings.
_LP = "logprobs.list.element"
_TOP = f"{_LP}.top_logprobs.list.element"
_ENCODINGS = {
    f"{_LP}.logprob": "BYTE_STREAM_SPLIT",
    f"{_TOP}.logprob": "BYTE_STREAM_SPLIT",
    f"{_LP}.bytes.list.element": "DELTA_BINARY_PACKED",
    f"{_TOP}.bytes.list.element": "DELTA_BINARY_PACKED",
}


def schema_for(data_columns: tuple[str, ...], hook: RowHook | None) -> pa.Schema:
    """The results schema of a run: its data columns, then the hook's score and extra columns."""
    return results_schema(data_columns, hook.score_names, hook.extra_columns) if hook else results_schema(data_columns)


def results_writer(path: Path, schema: pa.Schema) -> Any:
    """A ParquetWriter of results.parquet (or its .tmp) with the encodings above."""
    import pyarrow.parquet as pq

    flat = [f.name for f in schema if f.name != "logprobs"]
    return pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        compression_level=3,
        use_dictionary=[*flat, f"{_LP}.token", f"{_TOP}.token"],
        write_statistics=flat,
        column_encoding=_ENCODINGS,
    )


def _json_text(value: Any) -> str | None:
    return None if value is None else cell_text(value)


def result_rows(result: Result, run_id: str, experiment: str, data_columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """The report rows of one request: one per choice of an answer, one for an error.

    What belongs to the request rather than to a choice — usage and stream_chunks — sits on the
    first choice's row only, so sums over rows never count a request twice when n > 1. An error
    row keeps what had arrived of a failed stream (its first choice: content, logprobs, …).
    """
    common = _common_columns(result, run_id, experiment, data_columns)
    comp = result.completion
    if comp is None:
        return [_error_row(result, common)]
    rows = []
    for i, choice in enumerate(comp.choices):
        row = {
            **common,
            "status": "ok",
            "http_status": 200,
            "response_model": comp.response_model,
            "response_id": comp.response_id,
            # a field the answer got wrong was stored as null: the row says which (status stays ok)
            "error_type": "malformed_response" if comp.malformed else None,
            "error_message": comp.malformed,
            "choice_index": choice.index,
            "n_choices": len(comp.choices),
            **_choice_columns(choice),
            **(_request_columns(comp) if i == 0 else {}),
        }
        rows.append(row)
    return rows


def _common_columns(result: Result, run_id: str, experiment: str, data_columns: tuple[str, ...]) -> dict[str, Any]:
    """The columns every row of a request shares: what was asked, the row's data, the timing."""
    spec = result.spec
    cell = spec.cell
    params = spec.params  # the cell's, with the row's own (dataset.params_from_columns) on top
    common: dict[str, Any] = {
        "run_id": run_id,
        "request_id": spec.request_id,
        "cell_id": cell.cell_id,
        "experiment": experiment,
        "provider": cell.provider,
        "base_url": result.base_url,
        "model": cell.model,
        "prompt_id": cell.prompt_id,
        "row_id": spec.row_id,
        "repeat": spec.repeat,
        "messages": orjson.dumps(spec.messages).decode(),
        "latency_s": result.latency_s,
        "started_at": int(result.started_at * 1000),
        "finished_at": int(time.time() * 1000),  # rows are made as the request ends (the report's error timeline)
        "attempts": result.attempts,
        "retry_types": result.retry_types or None,
        "limiter_wait_s": round(result.limiter_wait_s, 6),
    }
    for name in PARAM_NAMES:
        v = params.get(name)
        common[PARAM_COLUMN[name]] = _json_text(v) if PARAM_ARROW_KIND[name] == "json" else v
    for c in data_columns:
        v = spec.data.get(c)
        common[DATA_PREFIX + c] = None if v is None else cell_text(v)
    return common


def _error_row(result: Result, common: dict[str, Any]) -> dict[str, Any]:
    """A failed request's one row, with what had arrived of a failed stream."""
    row = {
        **common,
        "status": "error",
        "http_status": result.http_status,
        "error_type": result.error_type,
        "error_message": result.error_message,
    }
    part = result.partial
    if part is not None and part.malformed:
        row["error_message"] = f"{result.error_message or ''}; {part.malformed}".lstrip("; ")
    if part is not None:
        row.update(
            _request_columns(part),
            n_choices=len(part.choices),
            response_model=part.response_model,
            response_id=part.response_id,
        )
        if part.choices:
            row.update(_choice_columns(part.choices[0]))
    return row


def _choice_columns(choice: Choice) -> dict[str, Any]:
    return {
        "content": choice.content,
        "finish_reason": choice.finish_reason,
        "tool_calls": _json_text(choice.tool_calls),
        "logprobs": choice.logprobs,
        "ttft_s": choice.ttft_s,
        "itl_mean_s": choice.itl_mean_s,
        "itl_p95_s": choice.itl_p95_s,
    }


def _request_columns(comp: Completion) -> dict[str, Any]:
    """Columns of the whole request (every choice): they go on one row only."""
    return {**{name: getattr(comp.usage, name) for name in USAGE_FIELDS}, "stream_chunks": comp.stream_chunks}


def write_results(
    run_dir: Path,
    data_columns: tuple[str, ...],
    dedupe: bool,
    keep: set[str] | None = None,
    hook: RowHook | None = None,
) -> dict[str, int]:
    """journal.jsonl → results.parquet (atomically), in batches so memory stays flat.

    A request appears in the journal more than once only after a resume (--retry-errors, or a
    provider stop); `dedupe` then keeps each request's latest entry. `keep`, after a forced
    resume of a changed grid, limits the report to the requests of the current grid.
    Returns the counts.
    """

    # Millions of short-lived dicts and no reference cycles: the cyclic GC would rescan the
    # growing batch again and again (it tripled the time of this loop); pause it meanwhile.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _write_results(run_dir, data_columns, dedupe, keep, hook)
    finally:
        if gc_was_enabled:
            gc.enable()


def _write_results(
    run_dir: Path,
    data_columns: tuple[str, ...],
    dedupe: bool,
    keep: set[str] | None,
    hook: RowHook | None,
) -> dict[str, int]:

    journal = run_dir / JOURNAL
    schema = schema_for(data_columns, hook)
    last: dict[str, int] = {}
    if dedupe:
        last = {entry["id"]: i for i, entry in enumerate(read_journal(journal, report=False))}
    tmp = run_dir / (RESULTS + ".tmp")
    counts = {"requests": 0, "errors": 0, "rows": 0, "strays": 0}
    try:
        with results_writer(tmp, schema) as writer:
            _write_entries(writer, schema, journal, last, dedupe, keep, hook, counts)
        os.replace(tmp, run_dir / RESULTS)
    except OSError as exc:  # disk full (or gone): one line, and the manifest says how to go on
        tmp.unlink(missing_ok=True)
        raise results_unwritable(run_dir, exc) from None
    return counts


def _write_entries(
    writer: Any,
    schema: pa.Schema,
    journal: Path,
    last: dict[str, int],
    dedupe: bool,
    keep: set[str] | None,
    hook: RowHook | None,
    counts: dict[str, int],
) -> None:
    buf: list[dict[str, Any]] = []
    for i, entry in enumerate(read_journal(journal)):
        if dedupe and last.get(entry["id"]) != i:
            continue
        if keep is not None and entry["id"] not in keep:
            counts["strays"] += 1
            continue
        counts["requests"] += 1
        counts["errors"] += entry["status"] == "error"
        buf.extend(entry["rows"])
        if len(buf) >= PARQUET_BATCH_ROWS:
            counts["rows"] += write_batch(writer, buf, schema, hook)
    if buf:
        counts["rows"] += write_batch(writer, buf, schema, hook)


def rescore(run_dir: Path, hook: RowHook) -> int:
    """Recompute every score column of results.parquet in place (atomically); no requests.
    Holds the run directory: a run writing results.parquet.tmp meanwhile would clash."""
    with holding_run_dirs():
        lock_run_dir(run_dir)
        return _rescore(run_dir, hook)


def _rescore(run_dir: Path, hook: RowHook) -> int:
    import pyarrow.parquet as pq

    path = run_dir / RESULTS
    source = pq.ParquetFile(path)
    old = source.schema_arrow
    keep = [f.name for f in old if not f.name.startswith(("score_", "pass_", "judge_"))]
    data_columns = tuple(n[len(DATA_PREFIX) :] for n in keep if n.startswith(DATA_PREFIX))
    schema = results_schema(data_columns, hook.score_names, hook.extra_columns)
    tmp = run_dir / (RESULTS + ".tmp")
    total = 0
    with results_writer(tmp, schema) as writer:
        for batch in source.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=keep):
            # the logprobs (most of the file) go back as the column they are; the hook gets them
            # as records only if it reads them (90 s of 100 at 200k rows went to that, measured)
            column = batch.column("logprobs")
            rows = batch.drop_columns(["logprobs"]).to_pylist()
            if hook.reads_logprobs:
                for r, lp in zip(rows, from_arrow(column), strict=True):
                    r["logprobs"] = lp
            total += write_batch(writer, rows, schema, hook, column)
    os.replace(tmp, path)
    return total
