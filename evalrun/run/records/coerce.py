"""Explicit coercion of what a server sent into the types the report stores.

A 200 answer is paid for, so one field of the wrong type or range (a usage count above 2^63,
a `finish_reason` that is a number, `logprobs` that are not a list of objects) must not cost
the answer, let alone the report: the field becomes None and `Notes` records what was dropped.
The row then carries `error_type = malformed_response` and the notes as its `error_message`,
with `status` still `ok` — see `store.result_rows`.

Bounds are those of the Arrow schema (`store.results_schema`): integers are int64, floats
float64 and finite; text is a str.
"""

from __future__ import annotations

import itertools
import sys
from array import array
from typing import Any

from evalrun.run.records.records import Logprobs
from evalrun.run.records.secrets import mask

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# No request is billed 10^12 tokens (a thousand times the largest context window); a bigger
# "count" is garbage, and summing a few of them would overflow the report's int64 totals.
MAX_TOKEN_COUNT = 10**12
MAX_NOTES = 8  # per answer: one hostile answer must not write a novel into the row
SHOWN_CHARS = 60  # of a bad value, in a note


class Notes:
    """What was dropped from one answer, as `where: what it was` lines."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[str] = []

    def bad(self, where: str, value: Any, wanted: str) -> None:
        # a stream repeats a bad field in every chunk: note each place once
        if len(self.items) < MAX_NOTES and not any(i.startswith(where + ": ") for i in self.items):
            shown = mask(repr(value))  # before the cut: half a key is still a secret
            if len(shown) > SHOWN_CHARS:
                shown = shown[:SHOWN_CHARS] + "…"
            self.items.append(f"{where}: {shown} is not {wanted}")

    def text(self) -> str | None:
        """The note for the row, or None when nothing was dropped."""
        if not self.items:
            return None
        return "answer stored with null in place of: " + "; ".join(self.items)


def count(value: Any, where: str, notes: Notes) -> int | None:
    """A token count: an int in 0 … 10^12 (an integral float is accepted); else None."""
    if value is None:
        return None
    if type(value) is int:
        if 0 <= value <= MAX_TOKEN_COUNT:
            return value
    elif type(value) is float and value.is_integer() and 0 <= value <= MAX_TOKEN_COUNT:
        return int(value)
    notes.bad(where, value, "a token count (a whole number from 0 to 10^12)")
    return None


def index(value: Any, default: int, where: str, notes: Notes) -> int:
    """A choice or tool-call index; a missing one is the position, a bad one too (noted)."""
    if value is None:
        return default
    if type(value) is int and 0 <= value <= INT64_MAX:
        return value
    notes.bad(where, value, "an index (a whole number from 0)")
    return default


def text(value: Any, where: str, notes: Notes) -> str | None:
    """A string field (finish_reason, id, model): a str, or None."""
    if value is None or type(value) is str:
        return value
    notes.bad(where, value, "a string")
    return None


def content(value: Any, where: str, notes: Notes) -> str | None:
    """Message content: a string, or content parts whose text parts are joined."""
    if value is None or type(value) is str:
        return value
    if type(value) is list:
        out = []
        for part in value:
            if type(part) is dict:
                t = part.get("text")
                if type(t) is str:
                    out.append(t)
                elif t is not None:
                    notes.bad(f"{where} part text", t, "a string")
        return "".join(out)
    notes.bad(where, value, "a string or a list of content parts")
    return None


def tool_calls(value: Any, where: str, notes: Notes) -> list[Any] | None:
    """A message's tool calls: a list of objects (stored as JSON text); else None."""
    if not value:  # None, [] and "" all mean no tool calls
        return None
    if type(value) is list and all(type(c) is dict for c in value):
        return value
    notes.bad(where, value, "a list of tool-call objects")
    return None


def _bytes_ok(b: Any) -> bool:
    """A `bytes` field the column takes: None, or a list of ints. Values come from orjson,
    which never yields an int outside -2^63 … 2^64-1: only the top needs checking."""
    return b is None or (type(b) is list and all(type(x) is int for x in b) and (not b or max(b) <= INT64_MAX))


_TOKEN = "a token object {token: str, logprob: number, bytes: [int]}"
_TOPS = "a list of token objects {token, logprob, bytes}"


def _walk(
    entries: list[Any], tokens: list[str | None], lps: list[float | None]
) -> tuple[int, list[list[int] | None] | None]:
    """Check {token, logprob, bytes} objects, appending their tokens and logprobs; → (-1, the
    bytes kept, or None when every entry's are its token's UTF-8), or (the first bad entry's
    index, None).

    Inline for speed: it runs for every token and every alternative (16 tokens × 6 entries per
    answer in the benchmark), once for the tokens and once for all their alternatives. `bytes`
    that are the token's UTF-8 are not kept (`bytes(b) == tok.encode()` checks them in C); a
    bool there (`[true]` for "\\x01") passes as its int, the one value this check is looser
    about than the column."""
    own: list[list[int] | None] | None = None  # per entry, once one entry's bytes are not its UTF-8
    for i, e in enumerate(entries):
        if type(e) is not dict:
            return i, None
        tok, lp, b = e.get("token"), e.get("logprob"), e.get("bytes")
        if (tok is not None and type(tok) is not str) or (
            lp is not None and type(lp) is not float and type(lp) is not int
        ):
            return i, None
        try:
            implied = type(tok) is str and type(b) is list and bytes(b) == tok.encode()
        except (TypeError, ValueError):  # not byte values, or a lone surrogate: checked below
            implied = False
        if not implied:
            if not _bytes_ok(b):
                return i, None
            if own is None:
                own = [list(x.encode()) for x in tokens]  # type: ignore[union-attr]  # all implied so far
            own.append(b)
        elif own is not None:
            own.append(b)
        tokens.append(tok)
        # a float column: an int beyond 2^53 (a server's nonsense, but valid JSON) is no exact
        # double, and Arrow refused the whole row for it ("logprobs nulled")
        lps.append(float(lp) if type(lp) is int else lp)
    return -1, own


def logprobs(value: Any, where: str, notes: Notes, offset: int = 0) -> Logprobs | None:
    """Token logprobs: a list of {token, logprob, bytes, top_logprobs} objects, each field of
    its column's type; anything else drops the list (a partly-kept list would misalign the
    tokens). Checked and flattened in two walks, the tokens then all their alternatives (see
    records.Logprobs for why flat). `offset`: where `value` starts in the answer's list (a
    stream's chunk), for the notes."""
    if value is None:
        return None
    if type(value) is not list:
        notes.bad(where, value, "a list of token objects")
        return None
    tokens: list[str | None] = []
    lps: list[float | None] = []
    bad, own = _walk(value, tokens, lps)
    if bad >= 0:
        notes.bad(f"{where}[{bad + offset}]", value[bad], _TOKEN)
        return None
    n_top: list[int | None] = []
    every_top: list[Any] = []
    for i, t in enumerate(value):
        tops = t.get("top_logprobs")
        if tops is None:
            n_top.append(None)
        elif type(tops) is list:
            n_top.append(len(tops))
            every_top += tops
        else:
            notes.bad(f"{where}[{i + offset}].top_logprobs", tops, _TOPS)
            return None
    top_tokens: list[str | None] = []
    top_lps: list[float | None] = []
    bad, top_own = _walk(every_top, top_tokens, top_lps)
    if bad >= 0:  # named by the position whose alternatives it is among
        i = next(i for i, end in enumerate(itertools.accumulate(n or 0 for n in n_top)) if bad < end)
        notes.bad(f"{where}[{i + offset}].top_logprobs", value[i]["top_logprobs"], _TOPS)
        return None
    return Logprobs(tokens, lps, n_top, top_tokens, top_lps, own, top_own)


class LogprobsSoFar:
    """A streamed choice's logprobs, flattened chunk by chunk as they arrive.

    Why not keep the chunks' token objects until the end: a 2,000-token answer with top-5
    holds 12,000 of them, ≈ 4 MB of dicts per request on the wire (issue 23); flat lists,
    ≈ 1 MB; ≈ 0.3 MB with the tokens interned (a vocabulary's tokens recur, the alternatives
    above all) and the logprobs in arrays of doubles (8 bytes, not a 24-byte float object and
    its 8-byte slot), for as long as the stream lasts. The first bad chunk drops the whole
    list, as `logprobs` does for an answer's list."""

    def __init__(self) -> None:
        self.token: list[str | None] = []
        self.top_token: list[str | None] = []
        self.n_top: list[int | None] = []
        # a list once a null logprob came (an array cannot hold it)
        self.logprob: array[float] | list[float | None] = array("d")
        self.top_logprob: array[float] | list[float | None] = array("d")
        self.own: dict[str, list[list[int] | None]] = {}  # bytes / top_bytes, once one is not UTF-8
        self.seen = 0  # tokens so far, good or not (the notes' index)
        self.dropped = False

    def add(self, tokens: list[Any], where: str, notes: Notes) -> None:
        if self.dropped or not tokens:
            return
        piece = logprobs(tokens, where, notes, self.seen)
        self.seen += len(tokens)
        if piece is None:
            self.dropped = True
            return
        for name, text in (("bytes", "token"), ("top_bytes", "top_token")):
            theirs = getattr(piece, name)
            if name not in self.own and theirs is not None:  # the first bytes that are not UTF-8
                self.own[name] = [list(t.encode()) for t in getattr(self, text)]
            if name in self.own:
                self.own[name] += theirs if theirs is not None else [list(t.encode()) for t in getattr(piece, text)]
        self.token += [t if t is None else sys.intern(t) for t in piece.token]
        self.top_token += [t if t is None else sys.intern(t) for t in piece.top_token]
        self.n_top += piece.n_top
        self.logprob = _extended(self.logprob, piece.logprob)
        self.top_logprob = _extended(self.top_logprob, piece.top_logprob)

    def result(self) -> Logprobs | None:
        if self.dropped or not self.token:
            return None
        return Logprobs(
            self.token,
            list(self.logprob),
            self.n_top,
            self.top_token,
            list(self.top_logprob),
            self.own.get("bytes"),
            self.own.get("top_bytes"),
        )


def _extended(into: array[float] | list[float | None], values: list[float | None]) -> array[float] | list[float | None]:
    n = len(into)
    try:
        into.extend(values)  # type: ignore[arg-type]
    except TypeError:  # a null logprob (an array extends item by item: cut what it took)
        return [*into[:n], *values]
    return into
