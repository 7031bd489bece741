"""Request validation with the real endpoint's ranges (../shared/api/README.md).

Returns the first problem as (message, param) so the 400 names the parameter, like the
provider does; None means the body is safe for behaviour.py to read without checks.
"""

from __future__ import annotations

from typing import cast

from evalrun.sim.wire import ChatRequest

__all__ = ["parse_request", "validate_request"]

Body = dict[str, object]  # a decoded JSON object, not yet checked

Problem = tuple[str, str | None]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_EFFORTS = ("none", "low", "medium", "high")
_FORMATS = ("text", "json_object", "json_schema")
MAX_N = 128  # OpenAI's cap; keeps one request from generating unbounded work
# name → (low, high or None, must be an integer)
_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "frequency_penalty": (-2, 2, False),
    "presence_penalty": (-2, 2, False),
    "top_k": (1, None, True),
    "max_tokens": (1, 65536, True),
    "max_completion_tokens": (1, 65536, True),
    "n": (1, MAX_N, True),
    "top_logprobs": (0, 20, True),
    "seed": (-(2**63), 2**64 - 1, True),
}


def _range(body: Body, name: str, lo: float, hi: float | None, integer: bool = False) -> Problem | None:
    v = body.get(name)
    if v is None:
        return None
    # a number (an int when `integer`), and JSON's true/false are not numbers
    if not isinstance(v, (int, float)) or isinstance(v, bool) or (integer and isinstance(v, float)):
        kind = "an integer" if integer else "a number"
        return f"Invalid type for '{name}': expected {kind}, got {type(v).__name__}.", name
    if v < lo or (hi is not None and v > hi):
        bound = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
        return f"Invalid value for '{name}': must be {bound}, got {v}.", name
    return None


def _messages(body: Body) -> Problem | None:
    msgs = body.get("messages")
    if msgs is None:
        return "Missing required parameter: 'messages'.", "messages"
    if not isinstance(msgs, list) or not msgs:
        return "Invalid value for 'messages': expected a non-empty array.", "messages"
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            return f"Invalid type for '{where}': expected an object.", where
        if m.get("role") not in _ROLES:
            return f"Invalid value for '{where}.role': {m.get('role')!r}.", f"{where}.role"
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            return f"Invalid type for '{where}.content': expected a string or an array.", f"{where}.content"
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            return f"Invalid type for '{where}.content': parts must be objects.", f"{where}.content"
    return None


def _tools(body: Body) -> Problem | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            return "Invalid type for 'tools': expected an array.", "tools"
        for i, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                return (
                    f"Invalid value for 'tools[{i}]': expected {{'type': 'function', 'function': {{'name': ...}}}}.",
                    f"tools[{i}]",
                )
            if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
                return (
                    f"Invalid type for 'tools[{i}].function.parameters': expected an object.",
                    f"tools[{i}].function.parameters",
                )
            names.add(fn["name"])
    if choice is None:
        return None
    if not tools:
        return "Invalid value for 'tool_choice': only allowed when 'tools' are specified.", "tool_choice"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if name not in names:
            return f"Invalid value for 'tool_choice': function {name!r} is not among 'tools'.", "tool_choice"
    elif choice not in ("none", "auto", "required"):
        return (
            f"Invalid value for 'tool_choice': {choice!r}; expected none, auto, required or a function.",
            "tool_choice",
        )
    return None


def _response_format(body: Body) -> Problem | None:
    rf = body.get("response_format")
    if rf is None:
        return None
    if not isinstance(rf, dict) or rf.get("type") not in _FORMATS:
        return "Invalid value for 'response_format.type': expected text, json_object or json_schema.", "response_format"
    if rf["type"] == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
            return (
                "Invalid value for 'response_format.json_schema': expected an object with a 'schema'.",
                "response_format.json_schema",
            )
    return None


def validate_request(body: object) -> Problem | None:
    """The first problem with a chat-completions body, or None."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object.", None
    # in this order: the first problem a gateway would name is the one answered
    return (
        _model(body)
        or _messages(body)
        or _ranges(body)
        or _switches(body)
        or _effort_and_stop(body)
        or _response_format(body)
        or _tools(body)
    )


def _model(body: Body) -> Problem | None:
    model = body.get("model")
    if model is None:
        return "Missing required parameter: 'model'.", "model"
    if not isinstance(model, str) or not model:
        return "Invalid value for 'model': expected a non-empty string.", "model"
    return None


def _ranges(body: Body) -> Problem | None:
    for name, limits in _RANGES.items():
        if name in body and (problem := _range(body, name, *limits)):
            return problem
    return None


def _switches(body: Body) -> Problem | None:
    """stream, logprobs and what only they allow (top_logprobs, stream_options)."""
    for flag in ("stream", "logprobs"):
        if body.get(flag) is not None and not isinstance(body[flag], bool):
            return f"Invalid type for '{flag}': expected a boolean.", flag
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        return "Invalid value for 'top_logprobs': requires 'logprobs' to be true.", "top_logprobs"
    if body.get("stream_options") is not None:
        if body.get("stream") is not True:
            return "Invalid value for 'stream_options': only allowed when 'stream' is true.", "stream_options"
        if not isinstance(body["stream_options"], dict):
            return "Invalid type for 'stream_options': expected an object.", "stream_options"
    return None


def _effort_and_stop(body: Body) -> Problem | None:
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in _EFFORTS:
        return (
            f"Invalid value for 'reasoning_effort': {effort!r}; expected none, low, medium or high.",
            "reasoning_effort",
        )
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and len(stop) <= 16 and all(isinstance(s, str) for s in stop))
    ):
        return "Invalid value for 'stop': expected a string or an array of up to 16 strings.", "stop"
    return None


def parse_request(body: object) -> ChatRequest | Problem:
    """The body as a ChatRequest, or the first problem with it (a tuple)."""
    problem = validate_request(body)
    if problem is not None:
        return problem
    # validate_request checked every field ChatRequest declares, and that body is a JSON object
    return cast(ChatRequest, body)
