"""Typed records that flow between the stages: data only, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict


@dataclass(frozen=True, slots=True)
class Logprobs:
    """A choice's token logprobs, field by field: position i is `token[i]`, `logprob[i]` and
    its `n_top[i]` alternatives, which follow on from the previous positions' in `top_*`.

    Why not the API's list of token objects: an answer of 16 tokens × top-5 holds 96 of them,
    and every stage that touched them (packing for the journal, Arrow conversion, unpacking)
    walked them again in Python; flat lists go to the journal as six arrays and to Arrow with a
    few C calls (run/records/logprobs.py). `bytes`/`top_bytes` are None when every token's bytes are
    its UTF-8 (the usual case), else one entry per token (a list of ints, or None if the
    answer had none). The field names are the journal's keys: never rename one."""

    token: list[str | None]
    logprob: list[float | None]
    n_top: list[int | None]  # None: the answer had no top_logprobs at that position
    top_token: list[str | None]
    top_logprob: list[float | None]
    bytes: list[list[int] | None] | None = None
    top_bytes: list[list[int] | None] | None = None

    def objects(self) -> list[dict[str, Any]]:
        """As results.parquet holds them (and the API sent them): one object per token, with
        {token, logprob, bytes} objects in top_logprobs (None where the answer had none)."""

        def utf8(t: str | None) -> list[int] | None:
            return None if t is None else list(t.encode())

        out: list[dict[str, Any]] = []
        start = 0
        for i, (tok, lp, n) in enumerate(zip(self.token, self.logprob, self.n_top, strict=True)):
            tops = None
            if n is not None:
                tops = [
                    {
                        "token": self.top_token[j],
                        "logprob": self.top_logprob[j],
                        "bytes": self.top_bytes[j] if self.top_bytes is not None else utf8(self.top_token[j]),
                    }
                    for j in range(start, start + n)
                ]
                start += n
            raw = self.bytes[i] if self.bytes is not None else utf8(tok)
            out.append({"token": tok, "logprob": lp, "bytes": raw, "top_logprobs": tops})
        return out

    def alternatives(self, i: int) -> list[tuple[str | None, float | None]]:
        """(token, logprob) of the top alternatives at position i (empty if none)."""
        start = sum(n or 0 for n in self.n_top[:i])
        end = start + (self.n_top[i] or 0)
        return list(zip(self.top_token[start:end], self.top_logprob[start:end], strict=True))


class Message(TypedDict, total=False):
    """A chat message on the wire; `content` is text or a list of content parts."""

    role: str
    content: Any
    name: str
    tool_calls: list[Any]
    tool_call_id: str


class PromptEntry(Message, total=False):
    """One entry of a prompt variant: a message with {column} placeholders, or
    `{from_column: <column>}`, which stands for the row's own list of messages."""

    from_column: str


class StreamOptions(TypedDict, total=False):
    include_usage: bool


class ChatRequest(TypedDict, total=False):
    """The body of POST /chat/completions, as the provider documents it (../shared/api/README.md).
    `extra_body` entries are merged in at the top level, so a provider extension may add keys."""

    model: str
    messages: list[Message]
    stream: bool
    stream_options: StreamOptions
    max_tokens: int
    max_completion_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    frequency_penalty: float | None
    presence_penalty: float | None
    stop: str | list[str]
    n: int | None
    reasoning_effort: str | None
    seed: int | None
    logprobs: bool | None
    top_logprobs: int | None
    response_format: dict[str, Any]
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any]


@dataclass(frozen=True, slots=True)
class Cell:
    """One point of the grid: provider × model × resolved parameters × prompt variant."""

    cell_id: str
    provider: str
    model: str
    prompt_id: str
    params: dict[str, Any]  # only the parameters that are set; never mutated after expansion


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """Everything needed to send one request, and its stable id."""

    request_id: str
    cell: Cell
    row_id: str
    repeat: int
    messages: list[Message]
    data: dict[str, Any]  # the dataset row the messages were rendered from
    est_prompt_tokens: int
    row_params: dict[str, Any] = field(default_factory=dict)  # from dataset.params_from_columns

    @property
    def params(self) -> dict[str, Any]:
        """The parameters this request is sent with: the cell's, overridden by the row's."""
        return {**self.cell.params, **self.row_params} if self.row_params else self.cell.params


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one request; any field the API left out is None."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    prompt_text_tokens: int | None = None
    prompt_audio_tokens: int | None = None
    prompt_image_tokens: int | None = None
    completion_text_tokens: int | None = None
    completion_audio_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    """One generated alternative (there are `n` per request); timings only when streamed."""

    index: int
    content: str | None
    finish_reason: str | None
    tool_calls: list[Any] | None = None
    logprobs: Logprobs | None = None
    ttft_s: float | None = None  # request sent → this choice's first content or tool-call delta
    itl_mean_s: float | None = None  # gaps between this choice's successive content deltas
    itl_p95_s: float | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """A parsed response: a success, or (on an error) what arrived of a stream before it failed."""

    response_id: str | None
    response_model: str | None
    choices: list[Choice]
    usage: Usage
    stream_chunks: int | None = None  # of the whole request (all choices)
    malformed: str | None = None  # fields parse.py had to null (wrong type or range), for the row


@dataclass(frozen=True, slots=True)
class Result:
    """How one request ended: a completion, or the last error after retries."""

    spec: RequestSpec
    started_at: float  # unix time of the first attempt
    latency_s: float | None  # of the last attempt
    attempts: int
    base_url: str | None
    completion: Completion | None = None
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    limiter_wait_s: float = 0.0
    retry_types: list[str] = field(default_factory=list)  # error type of every failed attempt
    partial: Completion | None = None  # an error mid-stream: what had arrived (it was paid for)

    @property
    def ok(self) -> bool:
        return self.completion is not None
