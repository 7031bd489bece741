"""Wire shapes the simulator sends, and the error envelope every failure uses."""

from __future__ import annotations

from typing import TypedDict

import orjson

__all__ = ["ERROR_TYPES", "KNOWN_MODELS", "ErrorBody", "TokenLogprob", "ToolCall", "Usage", "error_body"]

KNOWN_MODELS = ("gemini-3-pro-preview", "gemini-3.1-pro-preview", "gemini-2.5-flash-lite")


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


def error_body(status: int, message: str | None = None, *, type_: str | None = None, param: str | None = None) -> bytes:
    """The serialized envelope; `code` repeats `type` so clients may match either."""
    kind = type_ or ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body: ErrorBody = {
        "error": {
            "code": kind,
            "message": message or DEFAULT_MESSAGES.get(status, f"Error {status} (simulated)."),
            "type": kind,
            "param": param,
        }
    }
    return orjson.dumps(body)
