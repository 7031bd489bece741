"""records.Logprobs ↔ the stored forms: the results column (Arrow), journal and cache JSON.

`coerce.logprobs` builds a Logprobs in its one walk over the answer; from then on nothing
walks a token in Python on the way to disk. `to_arrow` concatenates the flat lists of a batch
(list `+=` is C) and assembles the nested column from five flat arrays; the `bytes` of tokens
whose bytes are their UTF-8 are the string column's own buffers, seen as bytes. Measured on
the benchmark's answers (16 tokens × top-5): 15 µs per answer against 126 µs for
`from_pylist` of the token objects.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from evalrun.run.records.coerce import Notes
from evalrun.run.records.coerce import logprobs as flatten
from evalrun.run.records.records import Logprobs

if TYPE_CHECKING:
    import pyarrow as pa

_FIELDS = Logprobs.__slots__  # the journal's keys (dataclass(slots=True) lists them in order)


def from_stored(value: Any) -> Logprobs | list[Any] | None:
    """A row's `logprobs` as read from the journal or the cache → Logprobs.

    Written by this evalrun: an object of Logprobs's fields. Journals of older evalruns hold a
    list (token objects, or arrays [token, logprob, tops(, bytes)]), flattened here as an
    answer's would be. A value that is neither comes back as it is: the writer's last defence
    (convert.convert_batch → storable_row) nulls it and says so in the row."""
    if value is None:
        return None
    if type(value) is dict:
        if value.keys() != set(_FIELDS):
            return [value]  # not ours: fails as a column value, below
        try:
            lp = Logprobs(**value)
        except TypeError:
            return [value]
        return lp if _consistent(lp) else [value]
    if type(value) is list:
        flat = flatten([_unpack(t) for t in value], "logprobs", Notes())
        return flat if flat is not None else value
    return [value]


def rows_from_stored(rows: list[Any]) -> list[Any]:
    """Rows read back from the journal or the cache, their logprobs as Logprobs (in place)."""
    for r in rows:
        if type(r) is dict and (lp := r.get("logprobs")) is not None:
            r["logprobs"] = from_stored(lp)
    return rows


def _unpack(t: Any) -> Any:
    """An entry of the packed arrays of journals before Logprobs: [token, logprob, tops(, bytes)]."""
    if type(t) is not list or len(t) not in (3, 4):
        return t
    tops = t[2]
    if type(tops) is list:
        tops = [
            {"token": x[0], "logprob": x[1], **({"bytes": x[2]} if len(x) > 2 else _utf8(x[0]))}
            if type(x) is list and len(x) in (2, 3)
            else x
            for x in tops
        ]
    return {"token": t[0], "logprob": t[1], "top_logprobs": tops, **({"bytes": t[3]} if len(t) > 3 else _utf8(t[0]))}


def _utf8(token: Any) -> dict[str, Any]:
    try:
        return {"bytes": list(token.encode())} if type(token) is str else {}
    except UnicodeEncodeError:
        return {}


def _consistent(lp: Logprobs) -> bool:
    """The lists of a stored Logprobs agree with one another (a damaged line must not misalign)."""
    lists = (lp.token, lp.logprob, lp.n_top, lp.top_token, lp.top_logprob)
    if not all(type(x) is list for x in lists):
        return False
    n, tops = len(lp.token), len(lp.top_token)
    if len(lp.logprob) != n or len(lp.n_top) != n or len(lp.top_logprob) != tops:
        return False
    if not all(x is None or (type(x) is int and x >= 0) for x in lp.n_top) or sum(x or 0 for x in lp.n_top) != tops:
        return False
    return (lp.bytes is None or (type(lp.bytes) is list and len(lp.bytes) == n)) and (
        lp.top_bytes is None or (type(lp.top_bytes) is list and len(lp.top_bytes) == tops)
    )


def _utf8_lists(tokens: pa.Array) -> pa.Array:
    """list<int64> of each token's UTF-8 bytes, from the string column's own buffers."""
    import numpy as np  # pyarrow's own dependency: widening bytes there skips pyarrow.compute's wrappers
    import pyarrow as pa

    binary = tokens.view(pa.binary())  # the same buffers, read as bytes
    _, offsets_buf, data_buf = binary.buffers()
    offsets = pa.Array.from_buffers(pa.int32(), len(binary) + 1, [None, offsets_buf], offset=binary.offset)
    size = offsets[-1].as_py() if len(binary) else 0
    values = np.frombuffer(data_buf or b"", dtype=np.uint8, count=size).astype(np.int64)
    return pa.ListArray.from_arrays(offsets, pa.array(values, pa.int64()))


def arrow_type() -> pa.DataType:
    """The results column's type: a list of tokens, each with its logprob, bytes and top alternatives."""
    import pyarrow as pa

    top = pa.struct([("token", pa.string()), ("logprob", pa.float64()), ("bytes", pa.list_(pa.int64()))])
    token = pa.struct(
        [
            ("token", pa.string()),
            ("logprob", pa.float64()),
            ("bytes", pa.list_(pa.int64())),
            ("top_logprobs", pa.list_(top)),
        ]
    )
    return pa.list_(token)


def to_arrow(values: list[Logprobs | None], column_type: pa.DataType) -> pa.Array:
    """The results column of a batch: one list of token structs per row (null where None)."""
    import pyarrow as pa

    tokens: list[str | None] = []
    lps: list[float | None] = []
    n_top: list[int | None] = []
    top_tokens: list[str | None] = []
    top_lps: list[float | None] = []
    per_row: list[int | None] = []
    own_bytes = False
    for v in values:
        if v is None:
            per_row.append(None)
            continue
        tokens += v.token
        lps += v.logprob
        n_top += v.n_top
        top_tokens += v.top_token
        top_lps += v.top_logprob
        per_row.append(len(v.token))
        own_bytes = own_bytes or v.bytes is not None or v.top_bytes is not None
    token_t = column_type.value_type
    top_t = token_t.field("top_logprobs").type.value_type
    tok_arr = pa.array(tokens, pa.string())
    top_arr = pa.array(top_tokens, pa.string())
    if own_bytes:  # some answer's bytes are not its tokens' UTF-8: the lists, as the answers had them
        byte_lists = pa.array(_bytes(values, "bytes", "token"), token_t.field("bytes").type)
        top_byte_lists = pa.array(_bytes(values, "top_bytes", "top_token"), top_t.field("bytes").type)
    else:
        byte_lists, top_byte_lists = _utf8_lists(tok_arr), _utf8_lists(top_arr)
    top = pa.StructArray.from_arrays([top_arr, pa.array(top_lps, pa.float64()), top_byte_lists], fields=list(top_t))
    top_offsets = pa.array(list(itertools.accumulate((n or 0 for n in n_top), initial=0)), pa.int32())
    top_lists = pa.ListArray.from_arrays(
        top_offsets, top, mask=pa.array([n is None for n in n_top], pa.bool_()) if None in n_top else None
    )
    entries = pa.StructArray.from_arrays(
        [tok_arr, pa.array(lps, pa.float64()), byte_lists, top_lists], fields=list(token_t)
    )
    offsets = pa.array(list(itertools.accumulate((n or 0 for n in per_row), initial=0)), pa.int32())
    mask = pa.array([n is None for n in per_row], pa.bool_()) if None in per_row else None
    return pa.ListArray.from_arrays(offsets, entries, type=column_type, mask=mask)


def _bytes(values: list[Logprobs | None], own: str, tokens: str) -> list[list[int] | None]:
    out: list[list[int] | None] = []
    for v in values:
        if v is None:
            continue
        kept = getattr(v, own)
        out += kept if kept is not None else [list(t.encode()) for t in getattr(v, tokens)]
    return out


def from_arrow(column: pa.Array) -> list[Logprobs | None]:
    """The results column read back (for rescoring): one Logprobs per row, bytes as stored."""
    out: list[Logprobs | None] = []
    for entries in column.to_pylist():
        out.append(None if entries is None else flatten(entries, "logprobs", Notes()))
    return out
