"""Templates filled from a dataset row: `{column}` placeholders, `{{` and `}}` for braces.

One filling rule for everything a user writes with placeholders — prompt messages (run
stage) and scorer values (analysis) — so the two can never disagree.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(value: Any) -> set[str]:
    """Column names used as {name} anywhere in a message's content (text or content parts)."""
    if isinstance(value, str):
        return {m.group(1) for m in _PLACEHOLDER.finditer(value) if m.group(1)}
    if isinstance(value, list):
        return set().union(*(placeholders(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(placeholders(v) for v in value.values())) if value else set()
    return set()


def cell_text(value: Any) -> str:
    """A cell value as text — in a prompt and in the data_<column> report columns alike: strings as
    they are, everything else as JSON (true, not True)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # dates and other Parquet types
        return str(value)


def fill(value: Any, row: dict[str, Any]) -> Any:
    """`value` with every {column} replaced by the row's value; {{ and }} are literal braces."""
    if isinstance(value, str):
        if "{" not in value and "}" not in value:
            return value
        return _PLACEHOLDER.sub(lambda m: cell_text(row[m.group(1)]) if m.group(1) else m.group(0)[0], value)
    if isinstance(value, list):
        return [fill(v, row) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, row) for k, v in value.items()}
    return value
