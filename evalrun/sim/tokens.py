"""A small deterministic tokenizer and the prompt-side token accounting.

Not any real model's tokenizer: it only has to be fast, lossless (tokens concatenate back to
the text, so streamed deltas and logprob tokens rebuild the content exactly) and stable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import orjson

from evalrun.sim.wire import RequestMessage

__all__ = ["PromptCount", "count_prompt", "count_tokens", "message_text", "tokenize"]

# GPT-2 style: a word or digit group keeps its leading space; punctuation runs stick
# together; every character is matched by some branch, so the split is lossless.
_TOKEN_RE = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")
_findall = _TOKEN_RE.findall

PER_MESSAGE_TOKENS = 4
IMAGE_TOKENS = 258
AUDIO_TOKENS_PER_S = 25
# input_audio data is base64 of (assumed) 16 kB/s audio: 4 base64 chars carry 3 bytes.
AUDIO_BYTES_PER_S = 16_000
CACHE_BLOCK = 16
CACHE_MIN = 32


def tokenize(text: str) -> list[str]:
    return _findall(text)


def count_tokens(text: str) -> int:
    return len(_findall(text))


def message_text(content: object) -> str:
    """The text of a message's content: a string, or the text parts of a part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


@dataclass(frozen=True, slots=True)
class PromptCount:
    """prompt_tokens and its breakdown, counted once per request."""

    total: int
    cached: int
    image: int
    audio: int


def _audio_tokens(part: dict[str, object]) -> int:
    audio = part.get("input_audio")
    data = audio.get("data") if isinstance(audio, dict) else None
    size = len(data) * 3 // 4 if isinstance(data, str) else 0
    return max(AUDIO_TOKENS_PER_S, math.ceil(AUDIO_TOKENS_PER_S * size / AUDIO_BYTES_PER_S))


def _content_tokens(content: object) -> tuple[int, int, int]:
    """(text, image, audio) tokens of one message content."""
    if isinstance(content, str):
        return len(_findall(content)), 0, 0
    text = image = audio = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "image_url":
                image += IMAGE_TOKENS
            elif kind == "input_audio":
                audio += _audio_tokens(part)
            elif isinstance(part.get("text"), str):
                text += len(_findall(part["text"]))
    return text, image, audio


def count_prompt(messages: list[RequestMessage], tools: object = None) -> PromptCount:
    """Count prompt tokens; the system prefix is what implicit caching can reuse."""
    total = image = audio = system = 0
    for msg in messages:
        text, img, aud = _content_tokens(msg.get("content"))
        calls = msg.get("tool_calls")
        if isinstance(calls, list) and calls:
            text += len(_findall(orjson.dumps(calls).decode()))
        n = PER_MESSAGE_TOKENS + text + img + aud
        total += n
        image += img
        audio += aud
        if msg.get("role") in ("system", "developer"):
            system += n
    if tools:
        # Real providers bill the tool definitions as prompt; so do we.
        total += len(_findall(orjson.dumps(tools).decode()))
    cached = system - system % CACHE_BLOCK if system >= CACHE_MIN else 0
    return PromptCount(total=total, cached=cached, image=image, audio=audio)
