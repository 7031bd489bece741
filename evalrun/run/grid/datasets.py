"""Dataset rows (JSONL, CSV, Parquet), the `{column}` templating of prompt messages, and what
a row brings besides: its own messages (`{from_column: …}`) and request parameters
(`dataset.params_from_columns`).

Rows are streamed, never loaded whole: `check_dataset` makes one validating pass before any
request (missing file, bad lines, missing placeholder columns, duplicate ids, and a caller's
per-row checks), and `iter_rows` streams them again while the run goes.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
from pydantic import ValidationError

from evalrun.config.params import RequestParams, clean_params
from evalrun.config.templates import cell_text, fill
from evalrun.errors import ConfigError
from evalrun.run.records.records import Message, PromptEntry

CSV_FIELD_LIMIT = 2**31 - 1  # the most the csv module takes on every platform (a C long)
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class DatasetInfo:
    """A checked dataset: where it is, how to read it, what it holds."""

    path: Path
    format: str
    id_column: str | None
    limit: int | None
    columns: tuple[str, ...]
    rows: int  # after the limit


def resolve_path(path: str, config_path: Path) -> Path:
    """Relative paths are tried against the config file's folder, then the working directory."""
    p = Path(path)
    if p.is_absolute():
        return p
    for candidate in (config_path.parent / p, Path.cwd() / p):
        if candidate.exists():
            return candidate
    return config_path.parent / p


def _raw_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, row) pairs; raises ConfigError naming the line on bad input."""
    if fmt == "jsonl":
        yield from _jsonl_rows(path)
    elif fmt == "csv":
        yield from _csv_rows(path)
    else:
        yield from _parquet_rows(path)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:  # its own line/column count within this one line
                raise ConfigError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.pos + 1}); "
                    "each line must be one complete JSON object"
                ) from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
            yield lineno, row


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    # utf-8-sig: a BOM written by Excel must not become part of the first column's name
    with path.open(encoding="utf-8-sig", newline="") as f:
        # the csv module's default of 128 KiB per field refuses a legitimate long document
        # (a cell holding a whole article); a dataset file is the user's own, so no limit
        csv.field_size_limit(CSV_FIELD_LIMIT)
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            return
        header = reader.fieldnames
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:  # DictReader would silently keep only the last column of that name
            raise ConfigError(f"{path}:1: the header names column {twice[0]!r} more than once")
        for row in reader:
            if None in row:
                raise ConfigError(f"{path}:{reader.line_num}: more fields than the header has ({len(header)})")
            if None in row.values():  # DictReader's filler for fields the line lacks
                got = sum(v is not None for v in row.values())
                raise ConfigError(
                    f"{path}:{reader.line_num}: fewer fields than the header has ({got} of {len(header)})"
                )
            yield reader.line_num, dict(row)


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    n = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield n - 1, row


def _row_id(row: dict[str, Any], id_column: str | None) -> str:
    if id_column is not None:
        return str(row[id_column])
    # no id column: a stable hash of the row's content identifies it across runs
    return hashlib.blake2b(orjson.dumps(row, option=orjson.OPT_SORT_KEYS, default=str), digest_size=6).hexdigest()


def file_digest(path: Path) -> str:
    """A dataset file's content hash, kept in the manifest: `history` marks the night it changed."""
    h = hashlib.blake2b(digest_size=12)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def row_digest(row: dict[str, Any]) -> str:
    """Content hash of a row: a changed row under the same id is a different request."""
    return hashlib.blake2b(orjson.dumps(row, option=orjson.OPT_SORT_KEYS, default=str), digest_size=8).hexdigest()


def check_dataset(
    path: Path,
    fmt: str | None,
    id_column: str | None,
    limit: int | None,
    needed: dict[str, set[str]],
    check_row: Callable[[dict[str, Any]], None] | None = None,
) -> DatasetInfo:
    """One full validating pass. `needed` maps prompt name → the columns it uses as {column};
    `check_row` raises ValueError for anything else wrong with a row (reported with its line)."""
    fmt = fmt or _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{path}: unknown dataset format; use .jsonl, .csv or .parquet, or set dataset.format")
    if not path.is_file():
        raise ConfigError(f"{path}: dataset file not found (dataset.path)")
    try:
        auto_id, columns, count = _scan(path, fmt, id_column, limit, needed, check_row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot read dataset: {exc}") from None
    except ConfigError:
        raise
    except Exception as exc:  # pyarrow raises many kinds for a corrupt file
        raise ConfigError(f"{path}: cannot read dataset: {exc}") from None
    if count == 0:
        raise ConfigError(f"{path}: the dataset has no rows")
    return DatasetInfo(path, fmt, auto_id, limit, columns, count)


def _scan(
    path: Path,
    fmt: str,
    id_column: str | None,
    limit: int | None,
    needed: dict[str, set[str]],
    check_row: Callable[[dict[str, Any]], None] | None,
) -> tuple[str | None, tuple[str, ...], int]:
    """The rows up to the limit, each checked: (the id column, if any; every column seen; how many)."""
    seen: dict[str, int] = {}
    columns: dict[str, None] = {}
    count = 0
    auto_id = id_column
    for lineno, row in _raw_rows(path, fmt):
        if count == 0 and auto_id is None and "id" in row:
            auto_id = "id"  # a column named id is the natural row id
        _check_row(f"{path}:{lineno}", row, needed, check_row)
        if auto_id is not None:
            _check_id(f"{path}:{lineno}", row, auto_id, id_column)
        rid = _row_id(row, auto_id)
        if rid in seen:
            what = f"id {rid!r}" if auto_id else "the same content"
            raise ConfigError(
                f"{path}:{lineno}: duplicate row: {what} as at line {seen[rid]}; row ids must be unique"
                + ("" if auto_id else " (add an id column to tell them apart)")
            )
        seen[rid] = lineno
        columns.update(dict.fromkeys(row))
        count += 1
        if limit is not None and count >= limit:
            break
    return auto_id, tuple(columns), count


def _check_row(
    where: str, row: dict[str, Any], needed: dict[str, set[str]], check_row: Callable[[dict[str, Any]], None] | None
) -> None:
    """A row has every column a prompt uses as {column}, and passes the caller's check."""
    for name, cols in needed.items():
        missing = sorted(c for c in cols if c not in row)
        if missing:
            raise ConfigError(
                f"{where}: row has no column {missing[0]!r}, used as "
                f"{{{missing[0]}}} by prompt {name!r}; columns here: {', '.join(row) or '(none)'}"
            )
    if check_row is not None:
        try:
            check_row(row)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _check_id(where: str, row: dict[str, Any], auto_id: str, id_column: str | None) -> None:
    """A row has a value in the id column (the one named, or "id" when the first row has it)."""
    why = "named by dataset.id_column" if id_column else "every row needs one, as the first row has it"
    if auto_id not in row:
        raise ConfigError(
            f"{where}: row has no id column {auto_id!r} ({why}); columns here: {', '.join(row) or '(none)'}"
        )
    if row[auto_id] in (None, ""):
        raise ConfigError(f"{where}: row has no value in id column {auto_id!r} ({why})")


def iter_rows(info: DatasetInfo) -> Iterator[tuple[str, dict[str, Any]]]:
    """(row_id, row) for every row, in file order, up to the limit."""
    for i, (_, row) in enumerate(_raw_rows(info.path, info.format)):
        if info.limit is not None and i >= info.limit:
            return
        yield _row_id(row, info.id_column), row


def render(templates: list[PromptEntry], row: dict[str, Any]) -> list[Message]:
    """The messages of one prompt variant for one row; `{from_column: c}` becomes row[c]'s messages."""
    out: list[Message] = []
    for m in templates:
        if "from_column" in m:
            out.extend(conversation(row.get(m["from_column"])))
        else:
            out.append(fill(m, row))
    return out


PART_TOKENS = 258  # a non-text content part: Gemini bills an image as 258 tokens; its base64 says nothing


def estimate_tokens(messages: list[Message]) -> int:
    """A cheap prompt-size estimate (≈4 characters a token) for the TPM limiter and `plan`."""
    chars = parts = 0
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            chars += len(c)
        elif isinstance(c, list):
            for part in c:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
                else:
                    parts += 1
        if m.get("tool_calls"):
            chars += len(cell_text(m["tool_calls"]))
    return chars // 4 + 4 * len(messages) + PART_TOKENS * parts


# --------------------------------------------------------------------------- what a row brings

ROLES = ("system", "developer", "user", "assistant", "tool")  # as config.MessageTemplate allows
_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


def conversation(value: Any) -> list[Message]:
    """A row's list of messages (for `{from_column: …}`), checked; raises ValueError saying
    what is wrong. They are data, not templates: sent as they are, no {placeholder} filled."""
    if value == "":  # CSV's only way to say null
        return []
    if isinstance(value, str):  # CSV holds it as JSON text
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ValueError(
                'is text but not JSON; expected a list of messages like [{"role": "user", "content": "…"}]'
            ) from None
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"must be a list of messages, got {type(value).__name__}")
    return [_message(i, m) for i, m in enumerate(value)]


def _message(i: int, m: Any) -> Message:
    """The row's message [i], checked key by key."""
    if not isinstance(m, dict):
        raise ValueError(f"[{i}] must be a message object with role and content, got {type(m).__name__}")
    # Parquet gives every struct field, absent ones as null; a null key means "not there"
    m = {k: v for k, v in m.items() if v is not None or k == "content"}
    unknown = sorted(set(m) - set(_MESSAGE_KEYS))
    if unknown:
        raise ValueError(f"[{i}].{unknown[0]}: unknown message key; allowed: {', '.join(_MESSAGE_KEYS)}")
    if m.get("role") not in ROLES:
        raise ValueError(f"[{i}].role: must be one of {', '.join(ROLES)} (got {m.get('role')!r})")
    content = m.get("content")
    if content is None and not (m["role"] == "assistant" and m.get("tool_calls")):
        raise ValueError(f"[{i}].content: required (null only in an assistant message with tool_calls)")
    _check_content(i, content)
    for key in ("name", "tool_call_id"):
        if key in m and not isinstance(m[key], str):
            raise ValueError(f"[{i}].{key}: must be a string")
    calls = m.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
        raise ValueError(f"[{i}].tool_calls: must be a list of tool-call objects")
    return cast(Message, m)


def _check_content(i: int, content: Any) -> None:
    """Message [i]'s content: null (checked by the caller), a string, or a list of typed parts."""
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ValueError(
                    f'[{i}].content[{j}]: a content part is an object with a type, e.g. {{"type": "text", '
                    '"text": "…"} or {"type": "image_url", "image_url": {"url": "…"}}'
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"[{i}].content[{j}].text: a text part needs a string text")
    elif content is not None and not isinstance(content, str):
        raise ValueError(f"[{i}].content: must be a string or a list of content parts")


def _param(name: str, value: Any) -> Any:
    # the same model as params: in the config, so a row's value meets the parameter's own type
    # and range; "partial" leaves combinations (tool_choice needs tools) to the merged request
    return clean_params(RequestParams.model_validate({name: value}, context={"partial": True}))[name]


def row_params(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """The request parameters a row sets through `dataset.params_from_columns` (parameter →
    column), validated; a null, absent or empty (CSV) cell sets nothing. Raises ValueError naming
    the column."""
    out: dict[str, Any] = {}
    for name, column in mapping.items():
        value = row.get(column)
        if value is None or value == "":
            continue
        try:
            out[name] = _param(name, value)
        except ValidationError as exc:
            if isinstance(value, str):  # CSV cells are text: "0.5", '[{"type": "function", …}]'
                try:
                    out[name] = _param(name, orjson.loads(value))
                    continue
                except (orjson.JSONDecodeError, ValidationError):
                    pass
            err = exc.errors()[0]
            at = "".join(f"[{p}]" for p in err["loc"][1:] if isinstance(p, int))  # not pydantic's type tags
            raise ValueError(
                f"column {column!r} (dataset.params_from_columns.{name}): {name}{at}: "
                f"{err['msg'].removeprefix('Value error, ')} (got {value!r:.200})"
            ) from None
    return out
