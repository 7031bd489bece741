"""The writer's last defence: a report row the Arrow schema cannot take becomes an error row.

`parse.py` already coerces every answer into the schema's types, so this runs only for rows
that did not come through it — a journal written by an older evalrun, or edited by hand. Each
column is tried on its own; those that fail are nulled and named in the row's error_message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


def storable_row(row: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """`row` itself if the schema takes it; else a copy with the failing columns nulled and the
    row marked status error / malformed_response."""
    import pyarrow as pa

    try:
        pa.RecordBatch.from_pylist([row], schema=schema)
        return row
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        pass
    bad = []
    for f in schema:
        value = row.get(f.name)
        if value is None:
            continue
        try:
            pa.array([value], type=f.type)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            bad.append(f.name)
    return nulled(row, bad)


def nulled(row: dict[str, Any], bad: list[str]) -> dict[str, Any]:
    """A copy of `row` without the columns `bad`, marked status error / malformed_response."""
    fixed = {k: v for k, v in row.items() if k not in bad}
    identity = {"request_id", "run_id", "status", "error_type", "error_message"}
    if identity & set(bad):  # the row's own bookkeeping is broken: keep only what is sound
        fixed = {k: v for k, v in fixed.items() if k not in identity}
    fixed.update(
        status="error",
        error_type="malformed_response",
        error_message=f"the recorded row could not be stored: {', '.join(bad)} nulled (wrong type or range)",
    )
    return fixed
