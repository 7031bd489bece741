"""Server-sent events for `stream: true`, cut from the same Answer as the plain response.

Each event carries how many generated tokens it "took", so the server can spread the
latency over the stream; the concatenated deltas equal the non-streamed message exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import orjson

from evalrun.sim.behaviour import Answer, ChoiceAnswer, logprob_content, usage_of
from evalrun.sim.tokens import tokenize
from evalrun.sim.wire import Usage

__all__ = ["DONE", "KEEP_ALIVE", "sse_events"]

DONE = b"data: [DONE]\n\n"
KEEP_ALIVE = b": keep-alive\n\n"
_STREAM_SALT = 0x57EA4


def _event(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _choice_events(answer: Answer, c: ChoiceAnswer, logprobs: bool, top_k: int) -> Iterator[tuple[int, bytes]]:
    rng = random.Random(c.lp_seed ^ _STREAM_SALT)
    head = {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created, "model": answer.model}

    def chunk(delta: dict, lp: list | None = None, finish: str | None = None) -> bytes:
        return _event({**head, "choices": [{
            "index": c.index, "delta": delta,
            "logprobs": {"content": lp} if lp is not None else None,
            "finish_reason": finish,
        }]})

    # the first byte arrives after the thinking is done
    yield c.reasoning, chunk({"role": "assistant"})
    if rng.random() < 0.5:
        yield 0, KEEP_ALIVE
    empty_at = rng.randrange(max(1, len(c.tokens)))  # where a gateway's empty delta appears
    if c.tool_call is not None:
        call, fn = c.tool_call, c.tool_call["function"]
        yield 1, chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                        "function": {"name": fn["name"], "arguments": ""}}]})
        pieces = tokenize(fn["arguments"])
        i = 0
        while i < len(pieces):
            step = 2 + rng.randrange(5)
            yield step, chunk({"tool_calls": [{"index": 0, "function": {"arguments": "".join(pieces[i:i + step])}}]})
            i += step
    elif c.tokens:
        entries = logprob_content(c, top_k) if logprobs else None
        i = 0
        while i < len(c.tokens):
            step = 1 + rng.randrange(3)
            if i <= empty_at < i + step and rng.random() < 0.5:
                yield 0, chunk({"content": ""} if rng.random() < 0.5 else {}, [] if logprobs else None)
            yield step, chunk({"content": "".join(c.tokens[i:i + step])},
                              entries[i:i + step] if entries is not None else None)
            i += step
    elif c.visible:
        # a budget-truncated tool call: tokens were spent but nothing usable was sent
        yield c.visible, chunk({"content": ""}, [] if logprobs else None)
    yield 0, chunk({}, None, c.finish_reason)


def sse_events(answer: Answer, *, logprobs: bool, top_k: int, include_usage: bool,
               usage: Usage | None | bool = True) -> Iterator[tuple[int, bytes]]:
    """(tokens generated before this event, event bytes) pairs, ending with [DONE]."""
    for c in answer.choices:
        yield from _choice_events(answer, c, logprobs, top_k)
    if include_usage:
        final: dict = {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created,
                       "model": answer.model, "choices": []}
        if usage is not False:
            final["usage"] = usage_of(answer) if usage is True else usage
        yield 0, _event(final)
    yield 0, DONE
