"""What a choice sends back once its answer is chosen: a tool call's arguments, JSON with the
answer as one token, and the cuts — a stop sequence, then the max_tokens budget (reasoning
tokens spend it first)."""

from __future__ import annotations

import random

import orjson

from evalrun.sim.structured import ANSWER_SLOT, SchemaContext, instance_for_schema
from evalrun.sim.tokens import tokenize
from evalrun.sim.wire import ChatRequest, FunctionDef, ToolCall

_TOOL_CALL_OVERHEAD = 3


def apply_stop(tokens: list[str], stops: list[str]) -> tuple[list[str], bool]:
    text = "".join(tokens)
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if not hits:
        return tokens, False
    cut, out, acc = min(hits), [], 0
    for tok in tokens:
        if acc + len(tok) <= cut:
            out.append(tok)
            acc += len(tok)
            continue
        if cut > acc:
            out.append(tok[: cut - acc])
        break
    return out, True


def split_slot(text: str, literal: str, quoted: bool) -> tuple[list[str], int | None]:
    """Tokenize serialized JSON, making the answer literal one token at a known index."""
    slot = orjson.dumps(ANSWER_SLOT).decode()
    head, sep, tail = text.partition(slot)
    if not sep:
        return tokenize(text), None
    if quoted:
        head, tail = head + '"', '"' + tail
    left = tokenize(head)
    return left + [literal] + tokenize(tail), len(left)


def tool_call_for(fn: FunctionDef, ctx: SchemaContext, rng: random.Random, answer: str | None) -> ToolCall:
    """A call of `fn` with arguments valid for its parameters, the answer placed in its slot."""
    args = instance_for_schema(fn.get("parameters") or {"type": "object", "properties": {}}, ctx)
    arguments = orjson.dumps(args).decode()
    if ctx.placed and answer is not None:
        slot = orjson.dumps(ANSWER_SLOT).decode()
        arguments = arguments.replace(slot, answer if ctx.placed == "raw" else f'"{answer}"')
    return {
        "id": f"call_{rng.getrandbits(96):024x}",
        "type": "function",
        "function": {"name": fn.get("name", ""), "arguments": arguments},
    }


def fit_budget(
    body: ChatRequest, reasoning: int, tokens: list[str], tool_call: ToolCall | None
) -> tuple[int, list[str], ToolCall | None, int, str]:
    """(reasoning, tokens, tool call, visible tokens, finish reason) after the stop sequences
    and the max_tokens budget."""
    budget = body.get("max_completion_tokens") or body.get("max_tokens")
    finish = "stop"
    if budget is not None and reasoning >= budget:
        return budget, [], None, 0, "length"
    if tool_call is not None:
        visible = (
            len(tokenize(tool_call["function"]["name"]))
            + len(tokenize(tool_call["function"]["arguments"]))
            + _TOOL_CALL_OVERHEAD
        )
        finish = "tool_calls"
        if budget is not None and reasoning + visible > budget:
            # the call was cut mid-arguments: nothing usable comes back
            tool_call, visible, finish = None, budget - reasoning, "length"
        return reasoning, tokens, tool_call, visible, finish
    stop = body.get("stop")
    if stop:
        tokens, _ = apply_stop(tokens, [stop] if isinstance(stop, str) else stop)
    if budget is not None and len(tokens) > budget - reasoning:
        tokens, finish = tokens[: budget - reasoning], "length"
    return reasoning, tokens, tool_call, len(tokens), finish
