"""The request parameters of the chat-completions API, with the documented ranges.

Ranges are those of ../shared/api/README.md (EvoLink's OpenAI-compatible endpoint); the same
model validates `params`, each `grid` value, and model-level overrides.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationInfo, model_validator

ReasoningEffort = Literal["none", "low", "medium", "high"]

# Integers go on the wire as JSON and into results.parquet as int64: a value outside int64 would
# pass here, be sent, and then fail the report. top_k counts tokens of a vocabulary (int32 is ample).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1


class ToolChoiceFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class ToolChoiceObject(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: ToolChoiceFunction


class RequestParams(BaseModel):
    """Every documented request field except `model` and `messages`.

    Scalars are strict: YAML `true` is not a number and `1` is not a boolean.
    """

    model_config = ConfigDict(extra="forbid", strict=False)

    temperature: StrictFloat | None = Field(None, ge=0, le=2, description="sampling temperature")
    top_p: StrictFloat | None = Field(None, ge=0, le=1, description="nucleus sampling mass")
    top_k: StrictInt | None = Field(None, ge=1, le=INT32_MAX, description="sample among the k likeliest tokens")
    max_tokens: StrictInt | None = Field(None, ge=1, le=65536, description="output budget (legacy name)")
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=65536, description="output budget")
    frequency_penalty: StrictFloat | None = Field(None, ge=-2, le=2)
    presence_penalty: StrictFloat | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = Field(None, description="stop sequence(s)")
    n: StrictInt | None = Field(None, ge=1, le=128, description="choices per request")
    reasoning_effort: ReasoningEffort | None = None
    seed: StrictInt | None = Field(None, ge=INT64_MIN, le=INT64_MAX, description="a 64-bit signed integer")
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    extra_body: dict[str, Any] | None = Field(None, description="merged into the request body")

    @model_validator(mode="after")
    def _combinations(self, info: ValidationInfo) -> RequestParams:
        if self.extra_body:
            clash = sorted(set(self.extra_body) & (set(PARAM_FIELDS) | {"model", "messages"}))
            if clash:
                raise ValueError(
                    f"extra_body.{clash[0]} would override a request field; set {clash[0]} as a "
                    "parameter (so the report records it) and keep extra_body for provider extensions"
                )
        if info.context and info.context.get("partial"):
            return self  # params/model blocks: combinations are checked once merged into a cell
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(self.stop, list) and not all(isinstance(s, str) for s in self.stop):
            raise ValueError("stop must be a string or a list of strings")
        return self


PARAM_NAMES: tuple[str, ...] = tuple(RequestParams.model_fields)

# parameter → the one it needs (checked by RequestParams._combinations on each merged cell)
REQUIRES: dict[str, str] = {"top_logprobs": "logprobs", "stream_options": "stream", "tool_choice": "tools"}
PARAM_FIELDS = frozenset(PARAM_NAMES)

# How each parameter is stored in results.parquet: scalars keep their type, objects and
# lists become JSON text (their shapes vary too much for one Arrow type).
PARAM_ARROW_KIND: dict[str, str] = {
    "temperature": "float",
    "top_p": "float",
    "top_k": "int",
    "max_tokens": "int",
    "max_completion_tokens": "int",
    "frequency_penalty": "float",
    "presence_penalty": "float",
    "stop": "json",
    "n": "int",
    "reasoning_effort": "str",
    "seed": "int",
    "logprobs": "bool",
    "top_logprobs": "int",
    "stream": "bool",
    "stream_options": "json",
    "response_format": "json",
    "tools": "json",
    "tool_choice": "json",
    "extra_body": "json",
}
assert set(PARAM_ARROW_KIND) == set(PARAM_NAMES)

# The report column of each parameter: its own name, except `logprobs`, whose name belongs to
# the column holding the returned token logprobs.
PARAM_COLUMN: dict[str, str] = {name: name for name in PARAM_NAMES} | {"logprobs": "request_logprobs"}


def clean_params(params: RequestParams) -> dict[str, Any]:
    """The parameters that are set, as plain JSON-ready values."""
    return params.model_dump(mode="json", exclude_none=True)


def output_budget(params: dict[str, object]) -> int:
    """Tokens a request may generate, for the TPM reservation (corrected after the answer)."""
    cap = params.get("max_completion_tokens") or params.get("max_tokens")
    n = params.get("n")
    return (cap if isinstance(cap, int) else 1024) * (n if isinstance(n, int) and n > 0 else 1)
