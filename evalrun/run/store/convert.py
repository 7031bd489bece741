"""Report rows → Arrow: the batches that results.parquet is written in, through the hook.

Every writer of results.parquet (the live sink, the rebuild from the journal, rescoring) goes
through `convert_batch`, so the schema's last defence (storable.py) and the analysis stage's
`RowHook` see each row the same way whichever wrote it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from evalrun.run.records.logprobs import from_stored, to_arrow
from evalrun.run.records.records import Logprobs
from evalrun.run.records.storable import nulled, storable_row

if TYPE_CHECKING:
    import pyarrow as pa

CONVERT_ROWS = 64  # rows per from_pylist call (each holds the GIL throughout)


class _NoPandas:
    """A finder that makes `import pandas` fail, for `arrow_without_pandas`."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas":
            raise ImportError("not during a run")


def arrow_without_pandas() -> None:
    """Let pyarrow convert Python lists without importing pandas.

    The first time pyarrow converts a list it imports pandas (≈0.25 s of CPU and ≈40 MB,
    measured) only to ask whether the list is a pandas object, which a run never hands it.
    That first check is made here with pandas unimportable; pyarrow remembers the answer for
    such checks alone and still imports pandas when asked for a DataFrame (to_pandas,
    from_pandas — what the analysis commands do). Call it before the first conversion, while
    nothing else is importing: the finder is in sys.meta_path for one tiny conversion.
    """
    import pyarrow as pa

    if "pandas" in sys.modules:
        return
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


class RowHook(Protocol):
    """Sees every batch of report rows before it is written: the analysis stage fills its
    score_<name>/pass_<name> columns (and adds the rows to the summary) here."""

    @property
    def score_names(self) -> Sequence[str]: ...

    @property
    def extra_columns(self) -> Sequence[tuple[str, str]]:
        """(name, kind) of further columns it fills, kind as in PARAM_ARROW_KIND."""
        ...

    @property
    def reads_logprobs(self) -> bool:
        """Whether on_batch looks at a row's logprobs (rescoring reads them back only then)."""
        ...

    def on_batch(self, rows: list[dict[str, Any]]) -> None: ...


def write_batch(
    writer: Any,
    rows: list[dict[str, Any]],
    schema: pa.Schema,
    hook: RowHook | None,
    logprobs: pa.Array | None = None,
) -> int:
    """Rows → one Arrow table (bad rows made error rows), through the hook, appended to `writer`."""
    writer.write_table(convert_batch(rows, schema, hook, logprobs), row_group_size=max(1, len(rows)))
    n = len(rows)
    rows.clear()
    return n


def convert_batch(
    rows: list[dict[str, Any]], schema: pa.Schema, hook: RowHook | None, logprobs: pa.Array | None = None
) -> pa.Table:
    """Rows → an Arrow table of `schema`, the hook's columns filled (the hook sees each row once).
    `logprobs`: the column as it is already (rescoring), instead of one made from the rows."""
    import pyarrow as pa

    # The report columns are converted before the hook sees the rows, so that a row the schema
    # cannot take (a damaged journal, an older evalrun) is made an error row first — the scorers
    # and the summary's sums never see a value the report does not hold. The score columns the
    # hook adds (score_/pass_ per scorer, then its extra columns) come last in the schema and
    # are appended as arrays.
    n_scores = 2 * len(hook.score_names) + len(hook.extra_columns) if hook is not None else 0
    base = pa.schema(list(schema)[: len(schema) - n_scores]) if n_scores else schema
    at = base.get_field_index("logprobs")
    if logprobs is None:
        logprobs = _logprobs_column(rows, base.field(at).type)  # first: a row it nulls is made anew
    rest = base.remove(at)
    # Converted in slices: from_pylist holds the GIL for the whole call, and during a run this
    # runs in the results writer's thread (run/store/sink.py) beside the event loop — a slice of
    # CONVERT_ROWS keeps each hold to a few milliseconds.
    parts = []
    for i in range(0, len(rows), CONVERT_ROWS):
        part = rows[i : i + CONVERT_ROWS]
        try:
            parts.append(pa.RecordBatch.from_pylist(part, schema=rest))
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            part = [storable_row(r, rest) for r in part]  # that row alone; the others as they are
            rows[i : i + len(part)] = part
            parts.append(pa.RecordBatch.from_pylist(part, schema=rest))
        time.sleep(0)  # hand the GIL over between slices
    table = pa.Table.from_batches(parts, schema=rest).add_column(at, base.field(at), logprobs)
    if hook is not None:
        hook.on_batch(rows)
        if n_scores:
            scores = [pa.array([r.get(f.name) for r in rows], type=f.type) for f in list(schema)[len(base) :]]
            table = pa.Table.from_arrays([*table.columns, *scores], schema=schema)
    return table


def _logprobs_column(rows: list[dict[str, Any]], column_type: pa.DataType) -> pa.Array:
    """The logprobs column of `rows`; a row whose logprobs it cannot take loses them, marked."""
    import pyarrow as pa

    values: list[Logprobs | None] = []
    for i, r in enumerate(rows):
        v = r.get("logprobs")
        if v is not None and type(v) is not Logprobs:  # rows of an older journal, or read back from Parquet
            v = from_stored(v)
            if type(v) is not Logprobs:
                rows[i] = r = nulled(r, ["logprobs"])
                v = None
            r["logprobs"] = v
        values.append(v)
    try:
        return to_arrow(values, column_type)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        pass
    for i, v in enumerate(values):  # which row: that one alone loses its logprobs
        try:
            to_arrow([v], column_type)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            rows[i] = nulled(rows[i], ["logprobs"])
            rows[i]["logprobs"] = values[i] = None
    return to_arrow(values, column_type)
