"""An Answer on the wire: the plain response object, logprobs, usage and SSE chunks.

Both shapes are cut from the same Answer, so the concatenated stream deltas (content,
tool-call arguments, logprobs) equal the non-streamed message exactly. Stream events carry
how many generated tokens each "took", so the server can spread latency over the stream.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Iterator

import orjson

from evalrun.sim.behaviour import Answer, ChoiceAnswer
from evalrun.sim.tokens import tokenize
from evalrun.sim.vocab import VOCAB, VOCAB_BYTES, VOCAB_TOKENS
from evalrun.sim.wire import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Delta,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    Usage,
)

__all__ = ["DONE", "KEEP_ALIVE", "completion_body", "logprob_content", "sse_events", "usage_of"]


def usage_of(answer: Answer) -> Usage:
    prompt = answer.prompt
    completion = answer.completion_tokens
    return {
        "prompt_tokens": prompt.total,
        "completion_tokens": completion,
        "total_tokens": prompt.total + completion,
        "prompt_tokens_details": {
            "cached_tokens": prompt.cached,
            "text_tokens": prompt.total - prompt.image - prompt.audio,
            "audio_tokens": prompt.audio,
            "image_tokens": prompt.image,
        },
        "completion_tokens_details": {
            "text_tokens": sum(c.visible for c in answer.choices),
            "audio_tokens": 0,
            "reasoning_tokens": sum(c.reasoning for c in answer.choices),
        },
        "input_tokens": 0,
        "output_tokens": 0,
        "input_tokens_details": None,
    }


_log = math.log


def _top(tok: str | int, p: float) -> TopLogprob:
    # vocabulary fillers travel as indices so their bytes come precomputed
    if isinstance(tok, int):
        return {"token": VOCAB_TOKENS[tok], "logprob": _log(p), "bytes": VOCAB_BYTES[tok]}
    return {"token": tok, "logprob": _log(p), "bytes": list(tok.encode())}


def logprob_content(choice: ChoiceAnswer, top_k: int) -> list[TokenLogprob]:
    """Per visible token: its logprob and exactly `top_k` alternatives, most likely first."""
    rng = random.Random(choice.lp_seed)
    nvocab = len(VOCAB)
    out: list[TokenLogprob] = []
    for i, tok in enumerate(choice.tokens):
        dist = choice.dists.get(i)
        off = rng.randrange(nvocab)
        if dist is None:
            ps = 1.0 - 0.45 * rng.random() ** 2
            cands: list[tuple[str | int, float]] = [(tok, ps)]  # an int is a VOCAB index
            rest = 1.0 - ps
        else:
            ps = dist.p
            cands = [(tok, ps), *((a, q) for a, q in dist.alts if a != tok)]
            rest = max(1.0 - sum(q for _, q in cands), 1e-6)
        j = 0
        while len(cands) < top_k:  # unlisted mass, halving, on vocabulary words
            k = (off + j) % nvocab
            j += 1
            rest *= 0.5
            if VOCAB_TOKENS[k] != tok:
                cands.append((k, rest))
        if dist is not None:
            cands.sort(key=lambda c: -c[1])
        out.append(
            {
                "token": tok,
                "logprob": _log(ps),
                "bytes": list(tok.encode()),
                "top_logprobs": [_top(t, q) for t, q in cands[:top_k]],
            }
        )
    return out


def _message(choice: ChoiceAnswer) -> AssistantMessage:
    msg: AssistantMessage = {"role": "assistant", "content": choice.content}
    if choice.tool_call is not None:
        msg["tool_calls"] = [choice.tool_call]
    return msg


def completion_body(answer: Answer, *, logprobs: bool, top_k: int, usage: Usage | bool | None = True) -> ChatCompletion:
    """The non-streaming response object; `usage` True means the real usage, False none."""
    body: ChatCompletion = {
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [
            {
                "index": c.index,
                "message": _message(c),
                "logprobs": {"content": logprob_content(c, top_k)} if logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for c in answer.choices
        ],
    }
    if usage is True:
        body["usage"] = usage_of(answer)
    elif usage is not False:
        body["usage"] = usage
    return body


# ---- streaming ----------------------------------------------------------------------------

DONE = b"data: [DONE]\n\n"
KEEP_ALIVE = b": keep-alive\n\n"
_STREAM_SALT = 0x57EA4


def _event(obj: ChatCompletionChunk) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunk(
    answer: Answer, index: int, delta: Delta, lp: list[TokenLogprob] | None = None, finish: str | None = None
) -> bytes:
    """One SSE event of choice `index`."""
    return _event(
        {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "choices": [
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": {"content": lp} if lp is not None else None,
                    "finish_reason": finish,
                }
            ],
        }
    )


def _choice_events(answer: Answer, c: ChoiceAnswer, logprobs: bool, top_k: int) -> Iterator[tuple[int, bytes]]:
    rng = random.Random(c.lp_seed ^ _STREAM_SALT)
    chunk = functools.partial(_chunk, answer, c.index)
    # the first byte arrives after the thinking is done
    yield c.reasoning, chunk({"role": "assistant"})
    if rng.random() < 0.5:
        yield 0, KEEP_ALIVE
    empty_at = rng.randrange(max(1, len(c.tokens)))  # where a gateway's empty delta appears
    if c.tool_call is not None:
        yield from _tool_call_events(chunk, c.tool_call, rng)
    elif c.tokens:
        entries = logprob_content(c, top_k) if logprobs else None
        yield from _content_events(chunk, c.tokens, entries, logprobs, empty_at, rng)
    elif c.visible:
        # a budget-truncated tool call: tokens were spent but nothing usable was sent
        yield c.visible, chunk({"content": ""}, [] if logprobs else None)
    yield 0, chunk({}, None, c.finish_reason)


def _tool_call_events(chunk: Callable[..., bytes], call: ToolCall, rng: random.Random) -> Iterator[tuple[int, bytes]]:
    """The call's id and name first, then its arguments a few tokens at a time."""
    fn = call["function"]
    yield (
        1,
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": fn["name"], "arguments": ""},
                    }
                ]
            }
        ),
    )
    pieces = tokenize(fn["arguments"])
    i = 0
    while i < len(pieces):
        step = 2 + rng.randrange(5)
        yield step, chunk({"tool_calls": [{"index": 0, "function": {"arguments": "".join(pieces[i : i + step])}}]})
        i += step


def _content_events(
    chunk: Callable[..., bytes],
    tokens: list[str],
    entries: list[TokenLogprob] | None,
    logprobs: bool,
    empty_at: int,
    rng: random.Random,
) -> Iterator[tuple[int, bytes]]:
    """The text 1-3 tokens an event, with one empty delta somewhere, as gateways send."""
    i = 0
    while i < len(tokens):
        step = 1 + rng.randrange(3)
        if i <= empty_at < i + step and rng.random() < 0.5:
            yield 0, chunk({"content": ""} if rng.random() < 0.5 else {}, [] if logprobs else None)
        yield (
            step,
            chunk({"content": "".join(tokens[i : i + step])}, entries[i : i + step] if entries is not None else None),
        )
        i += step


def sse_events(
    answer: Answer, *, logprobs: bool, top_k: int, include_usage: bool, usage: Usage | bool | None = True
) -> Iterator[tuple[int, bytes]]:
    """(tokens generated before this event, event bytes) pairs, ending with [DONE]."""
    for c in answer.choices:
        yield from _choice_events(answer, c, logprobs, top_k)
    if include_usage:
        final: ChatCompletionChunk = {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "choices": [],
        }
        if usage is True:
            final["usage"] = usage_of(answer)
        elif usage is not False:
            final["usage"] = usage
        yield 0, _event(final)
    yield 0, DONE
