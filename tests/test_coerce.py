"""Property: whatever JSON a server puts in whichever field of a chat.completion body, what
parse.py makes of it either is a BadResponse (nothing usable: no choices) or becomes report
rows that the Arrow schema takes as they are — the writer's own defence (storable.py) is
never needed for an answer that came through parse.py. And every value nulled is named."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from conftest import completion
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from evalrun.run.http.errors import BadResponse
from evalrun.run.http.parse import parse_completion
from evalrun.run.records.records import Cell, RequestSpec, Result
from evalrun.run.store.convert import convert_batch
from evalrun.run.store.store import result_rows, results_schema

# JSON as orjson reads it: ints up to 2^64-1 (above int64), finite floats, text, nesting
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)

TOKEN = {"token": "4", "logprob": -0.1, "bytes": [52], "top_logprobs": [{"token": "4", "logprob": -0.1, "bytes": [52]}]}
PATHS = [
    ("id",),
    ("model",),
    ("usage",),
    ("usage", "prompt_tokens"),
    ("usage", "total_tokens"),
    ("usage", "prompt_tokens_details"),
    ("usage", "prompt_tokens_details", "cached_tokens"),
    ("usage", "completion_tokens_details", "reasoning_tokens"),
    ("choices", 0, "index"),
    ("choices", 0, "finish_reason"),
    ("choices", 0, "message"),
    ("choices", 0, "message", "content"),
    ("choices", 0, "message", "tool_calls"),
    ("choices", 0, "logprobs"),
    ("choices", 0, "logprobs", "content"),
    ("choices", 0, "logprobs", "content", 0),
    ("choices", 0, "logprobs", "content", 0, "token"),
    ("choices", 0, "logprobs", "content", 0, "logprob"),
    ("choices", 0, "logprobs", "content", 0, "bytes"),
    ("choices", 0, "logprobs", "content", 0, "top_logprobs"),
    ("choices", 0, "logprobs", "content", 0, "top_logprobs", 0, "bytes"),
]

SPEC = RequestSpec("r1", Cell("c1", "p", "m", "p1", {}), "q1", 0, [{"role": "user", "content": "hi"}], {}, 1)
SCHEMA = results_schema()


def _body() -> dict[str, Any]:
    body = completion()
    body["choices"][0]["logprobs"] = {"content": [copy.deepcopy(TOKEN)]}
    return body


def _stored_as_they_are(rows: list[dict[str, Any]]) -> None:
    """The writer takes the rows without its own defence: no row nulled and remade (storable.py)."""
    given_rows = list(rows)
    convert_batch(rows, SCHEMA, None)
    assert all(a is b for a, b in zip(rows, given_rows, strict=True)), [r.get("error_message") for r in rows]


def _set(body: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        body = body[part]
    body[path[-1]] = value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=json_values)
@example(path=PATHS[-1], value=[2**64 - 1])  # one byte value above int64: rare for the generator
@example(path=("usage", "prompt_tokens"), value=2**63)
@example(path=("choices", 0, "logprobs", "content", 0, "logprob"), value=2**53 + 1)  # no exact double
@example(path=("choices", 0, "logprobs", "content", 0, "top_logprobs"), value=[{"logprob": -(2**63)}])
def test_any_value_anywhere_is_stored_or_refused_never_a_writer_error(path: tuple[Any, ...], value: Any) -> None:
    body = _body()
    _set(body, path, value)
    obj = orjson.loads(orjson.dumps(body))  # as it arrives: through orjson
    try:
        comp = parse_completion(obj)
    except BadResponse:
        return  # no usable choices: an error row, retried (tested elsewhere)
    rows = result_rows(Result(SPEC, 0.0, 0.1, 1, "http://x", completion=comp), "run", "exp", ())
    _stored_as_they_are(rows)
    journal_line = orjson.dumps(rows)  # and the journal takes it too
    assert journal_line
    if comp.malformed:
        assert rows[0]["error_type"] == "malformed_response" and rows[0]["status"] == "ok"


STREAM_PATHS = [
    ("id",),
    ("model",),
    ("usage",),
    ("usage", "prompt_tokens"),
    ("choices", 0, "index"),
    ("choices", 0, "finish_reason"),
    ("choices", 0, "delta", "content"),
    ("choices", 0, "delta", "tool_calls"),
    ("choices", 0, "delta", "tool_calls", 0, "id"),
    ("choices", 0, "delta", "tool_calls", 0, "function"),
    ("choices", 0, "delta", "tool_calls", 0, "function", "name"),
    ("choices", 0, "delta", "tool_calls", 0, "function", "arguments"),
    ("choices", 0, "logprobs"),
    ("choices", 0, "logprobs", "content"),
    ("choices", 0, "logprobs", "content", 0, "bytes"),
]


def _chunk() -> dict[str, Any]:
    delta = {"content": "4", "tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": "{}"}}]}
    return {
        "id": "c",
        "model": "m",
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        "choices": [
            {"index": 0, "delta": delta, "finish_reason": None, "logprobs": {"content": [copy.deepcopy(TOKEN)]}}
        ],
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(STREAM_PATHS), value=json_values)
@example(path=("choices", 0, "index"), value=2**64 - 1)
def test_any_value_anywhere_in_a_stream_chunk_is_stored_or_refused(path: tuple[Any, ...], value: Any) -> None:
    from evalrun.run.http.parse import _Stream

    chunk = _chunk()
    _set(chunk, path, value)
    stream = _Stream(0.0)
    try:
        stream.feed(orjson.dumps(_chunk()), 0.1)
        stream.feed(orjson.dumps(chunk), 0.2)
        comp = stream.result()
    except BadResponse:
        return
    rows = result_rows(Result(SPEC, 0.0, 0.1, 1, "http://x", completion=comp), "run", "exp", ())
    _stored_as_they_are(rows)
    assert orjson.dumps(rows)
