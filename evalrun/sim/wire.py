"""Wire shapes the simulator reads and sends, and the error envelope every failure uses.

`ChatRequest` is a body that validate.py has checked: every field it declares with a type
narrower than `object` had that type checked there (values may be null, as on the real API).
Fields it only passes through (message parts, tool calls) stay `object`.
"""

from __future__ import annotations

from typing import Literal, NotRequired, Required, TypedDict

import orjson

__all__ = [
    "ERROR_TYPES",
    "KNOWN_MODELS",
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatRequest",
    "Choice",
    "ChunkChoice",
    "Delta",
    "ErrorBody",
    "FunctionDef",
    "JsonSchema",
    "RequestMessage",
    "ResponseFormat",
    "TokenLogprob",
    "ToolCall",
    "ToolChoice",
    "ToolDef",
    "Usage",
    "error_body",
]

KNOWN_MODELS = ("gemini-3-pro-preview", "gemini-3.1-pro-preview", "gemini-2.5-flash-lite")

# ---- what the simulator reads -------------------------------------------------------------

JsonSchema = dict[str, object]  # a JSON Schema object: only its shape is checked, not its keywords
Effort = Literal["none", "low", "medium", "high"]


class RequestMessage(TypedDict, total=False):
    role: Required[str]
    content: str | list[dict[str, object]] | None  # a list holds content parts (text, image_url, ...)
    tool_calls: object
    name: object
    tool_call_id: object


class FunctionDef(TypedDict, total=False):
    name: Required[str]
    description: object
    parameters: JsonSchema | None


class ToolDef(TypedDict, total=False):
    type: object
    function: Required[FunctionDef]


class ToolChoiceFunction(TypedDict, total=False):
    name: Required[str]


class NamedToolChoice(TypedDict, total=False):
    type: object
    function: Required[ToolChoiceFunction]


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(TypedDict, total=False):
    name: object
    schema: JsonSchema
    strict: object


class ResponseFormat(TypedDict, total=False):
    type: Required[Literal["text", "json_object", "json_schema"]]
    json_schema: JsonSchemaFormat  # checked when type is json_schema, the only case it is read


class ChatRequest(TypedDict, total=False):
    model: Required[str]
    messages: Required[list[RequestMessage]]
    temperature: float | None
    top_p: float | None
    frequency_penalty: float | None
    presence_penalty: float | None
    top_k: int | None
    max_tokens: int | None
    max_completion_tokens: int | None
    n: int | None
    seed: int | None
    stream: bool | None
    stream_options: dict[str, object] | None
    logprobs: bool | None
    top_logprobs: int | None
    reasoning_effort: Effort | None
    stop: str | list[str] | None
    response_format: ResponseFormat | None
    tools: list[ToolDef] | None
    tool_choice: ToolChoice | None


# ---- what it sends ------------------------------------------------------------------------


class TopLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ToolFunction(TypedDict):
    name: str
    arguments: str


class ToolCall(TypedDict):
    id: str
    type: str
    function: ToolFunction


class PromptDetails(TypedDict):
    cached_tokens: int
    text_tokens: int
    audio_tokens: int
    image_tokens: int


class CompletionDetails(TypedDict):
    text_tokens: int
    audio_tokens: int
    reasoning_tokens: int


class Usage(TypedDict, total=False):
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    prompt_tokens_details: PromptDetails | None
    completion_tokens_details: CompletionDetails | None
    input_tokens: int
    output_tokens: int
    input_tokens_details: None


class AssistantMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    tool_calls: NotRequired[list[ToolCall]]


class ChoiceLogprobs(TypedDict):
    content: list[TokenLogprob]


class Choice(TypedDict):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: NotRequired[Usage | None]


class FunctionDelta(TypedDict, total=False):
    name: str
    arguments: str


class ToolCallDelta(TypedDict):
    index: int
    id: NotRequired[str]
    type: NotRequired[str]
    function: FunctionDelta


class Delta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str
    tool_calls: list[ToolCallDelta]


class ChunkChoice(TypedDict):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None


class ChatCompletionChunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: NotRequired[Usage | None]


class ErrorDetail(TypedDict):
    code: str
    message: str
    type: str
    param: str | None


class ErrorBody(TypedDict):
    error: ErrorDetail


# status → the `type` (and `code`) a gateway of this kind sends
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "gateway_timeout",
}

DEFAULT_MESSAGES: dict[int, str] = {
    400: "Invalid request.",
    401: "Invalid or missing API key. Send 'Authorization: Bearer <key>'.",
    402: "You exceeded your current quota, please check your plan and billing details.",
    403: "This API key is not allowed to use this model.",
    404: "The requested resource does not exist.",
    413: "Request body too large.",
    429: "Rate limit reached for requests. Please retry after the time given in Retry-After.",
    500: "Internal server error (simulated).",
    502: "Upstream model provider returned an invalid response (simulated).",
    503: "The service is temporarily unavailable (simulated).",
    504: "Upstream model provider timed out (simulated).",
}


def error_body(
    status: int,
    message: str | None = None,
    *,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> bytes:
    """The serialized envelope; `code` repeats `type` (unless given) so clients may match either."""
    kind = type_ or ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body: ErrorBody = {
        "error": {
            "code": code or kind,
            "message": message or DEFAULT_MESSAGES.get(status, f"Error {status} (simulated)."),
            "type": kind,
            "param": param,
        }
    }
    return orjson.dumps(body)
