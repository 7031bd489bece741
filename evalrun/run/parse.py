"""An answer → typed records: a chat.completion JSON body, or an SSE chunk stream.

Everything a server sends is read here and nowhere else, so a malformed answer is a
`BadResponse` raised from this module, never an exception further down the data flow.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from evalrun.quantiles import quantile
from evalrun.run.errors import AttemptTimeout, ErrorIn200, MalformedResponse, RequestError, StreamTruncated
from evalrun.run.records import Choice, Completion, Usage

MAX_ERROR_MESSAGE = 2000  # characters of a server's error text kept in the report
# After [DONE], the rest of the body (the chunked-encoding end) is read so that the connection
# goes back to the pool; a server that keeps talking longer than this loses the connection.
DRAIN_AFTER_DONE_S = 1.0


def loads_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedResponse(f"HTTP 200 but the body is not JSON: {raw[:200]!r}") from None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_usage(usage: Any) -> Usage:
    """Usage in the OpenAI shape, falling back to input_/output_tokens; missing → None."""
    if not isinstance(usage, dict):
        return Usage()
    pd = usage.get("prompt_tokens_details")
    pd = pd if isinstance(pd, dict) else {}
    if not pd and isinstance(usage.get("input_tokens_details"), dict):
        pd = usage["input_tokens_details"]
    cd = usage.get("completion_tokens_details")
    cd = cd if isinstance(cd, dict) else {}
    if not cd and isinstance(usage.get("output_tokens_details"), dict):
        cd = usage["output_tokens_details"]
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    # some gateways send input_/output_tokens instead; zeros beside real values are noise
    if prompt is None and _int(usage.get("input_tokens")):
        prompt = _int(usage.get("input_tokens"))
    if completion is None and _int(usage.get("output_tokens")):
        completion = _int(usage.get("output_tokens"))
    total = _int(usage.get("total_tokens"))
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=_int(pd.get("cached_tokens")),
        reasoning_tokens=_int(cd.get("reasoning_tokens")),
        prompt_text_tokens=_int(pd.get("text_tokens")),
        prompt_audio_tokens=_int(pd.get("audio_tokens")),
        prompt_image_tokens=_int(pd.get("image_tokens")),
        completion_text_tokens=_int(cd.get("text_tokens")),
        completion_audio_tokens=_int(cd.get("audio_tokens")),
    )


def _content_text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_completion(obj: Any) -> Completion:
    """A non-streamed chat.completion body → Completion; raises BadResponse if unusable."""
    if not isinstance(obj, dict):
        raise MalformedResponse(f"HTTP 200 but the body is a {type(obj).__name__}, not an object")
    err = obj.get("error")
    if err:
        msg = err.get("message") if isinstance(err, dict) else str(err)
        exc = ErrorIn200(f"HTTP 200 with an error object: {str(msg)[:MAX_ERROR_MESSAGE]}")
        if isinstance(obj.get("usage"), dict):  # billed anyway: keep the usage so it is costed
            exc.partial = Completion(_str(obj.get("id")), _str(obj.get("model")), [], parse_usage(obj["usage"]))
        raise exc
    raw_choices = obj.get("choices")
    if not isinstance(raw_choices, list) or not raw_choices:
        raise MalformedResponse("HTTP 200 but the body has no choices")
    choices = []
    for i, ch in enumerate(raw_choices):
        if not isinstance(ch, dict):
            raise MalformedResponse(f"choice {i} is not an object")
        msg = ch.get("message") if isinstance(ch.get("message"), dict) else {}
        lp = ch.get("logprobs")
        tokens = lp.get("content") if isinstance(lp, dict) else None
        choices.append(
            Choice(
                index=_int(ch.get("index")) if _int(ch.get("index")) is not None else i,
                content=_content_text(msg.get("content")),
                finish_reason=ch.get("finish_reason"),
                tool_calls=msg.get("tool_calls") or None,
                logprobs=tokens if isinstance(tokens, list) else None,
            )
        )
    return Completion(
        response_id=obj.get("id") if isinstance(obj.get("id"), str) else None,
        response_model=obj.get("model") if isinstance(obj.get("model"), str) else None,
        choices=choices,
        usage=parse_usage(obj.get("usage")),
    )


# --------------------------------------------------------------------------- streaming


class _ChoiceStream:
    """One choice being assembled from its deltas, with the arrival time of each output piece."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}  # tool-call index → the call so far
        self.logprobs: list[Any] = []
        self.finish: str | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.gaps: list[float] = []

    def feed(self, ch: dict[str, Any], now: float) -> None:
        delta = ch.get("delta") or {}
        if not isinstance(delta, dict):
            raise MalformedResponse(f"stream chunk has a delta that is not an object: {delta!r:.200}")
        text = _content_text(delta.get("content"))
        produced = bool(text)  # an empty delta ("" or {}) is no token: not in TTFT or the gaps
        if text:
            self.content.append(text)
        calls = delta.get("tool_calls") or []
        if not isinstance(calls, list):
            raise MalformedResponse(f"stream chunk has tool_calls that are not a list: {calls!r:.200}")
        for tc in calls:
            produced |= self._tool_delta(tc)
        lp = ch.get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            self.logprobs.extend(lp["content"])
        if ch.get("finish_reason"):
            self.finish = str(ch["finish_reason"])
        if produced:
            if self.first is None:
                self.first = now
            elif self.last is not None:
                self.gaps.append(now - self.last)
            self.last = now

    def _tool_delta(self, tc: Any) -> bool:
        """Merge one tool-call delta; True if it carried part of the call's name or arguments."""
        if not isinstance(tc, dict):
            raise MalformedResponse(f"stream chunk has a tool call that is not an object: {tc!r:.200}")
        index = _int(tc.get("index"))
        if index is None:
            # some gateways leave the index out: a new id starts a call, anything else continues the last
            same = [i for i, c in self.calls.items() if tc.get("id") and c["id"] == tc["id"]]
            index = same[0] if same else len(self.calls) if tc.get("id") or not self.calls else max(self.calls)
        slot = self.calls.setdefault(index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if tc.get("id"):
            slot["id"] = tc["id"]
        if isinstance(tc.get("type"), str):
            slot["type"] = tc["type"]
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
        name = fn.get("name") or ""
        if name and name != slot["function"]["name"]:  # sent once, in pieces, or repeated whole
            slot["function"]["name"] += name
        args = fn.get("arguments") or ""
        if not isinstance(args, str):  # an object where the API sends JSON text
            args = orjson.dumps(args).decode()
        slot["function"]["arguments"] += args
        return bool(name or args)

    def choice(self, index: int, t0: float) -> Choice:
        gaps = sorted(self.gaps)
        return Choice(
            index=index,
            content="".join(self.content) if self.content or not self.calls else None,
            finish_reason=self.finish,
            tool_calls=[self.calls[k] for k in sorted(self.calls)] or None,
            logprobs=self.logprobs or None,
            ttft_s=None if self.first is None else self.first - t0,
            itl_mean_s=sum(gaps) / len(gaps) if gaps else None,
            itl_p95_s=quantile(gaps, 0.95),
        )


class _Stream:
    """A chat.completion.chunk stream being assembled into a Completion."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.choices: dict[int, _ChoiceStream] = {}
        self.usage: Any = None
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.chunks = 0

    def feed(self, data: bytes, now: float) -> None:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MalformedResponse(f"stream chunk {self.chunks + 1} is not JSON: {data[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise MalformedResponse(f"stream chunk {self.chunks + 1} is a {type(chunk).__name__}, not an object")
        if chunk.get("error"):
            e = chunk["error"]
            msg = e.get("message") if isinstance(e, dict) else e
            raise ErrorIn200(f"error in stream: {str(msg)[:MAX_ERROR_MESSAGE]}")
        self.chunks += 1
        if self.response_id is None and isinstance(chunk.get("id"), str):
            self.response_id = chunk["id"]
        if self.response_model is None and isinstance(chunk.get("model"), str):
            self.response_model = chunk["model"]
        if chunk.get("usage"):  # the last usage wins: some servers send a running total
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise MalformedResponse(f"stream chunk {self.chunks} has choices that are not a list")
        for i, ch in enumerate(choices):
            if not isinstance(ch, dict):
                raise MalformedResponse(f"stream chunk {self.chunks} has a choice that is not an object")
            index = _int(ch.get("index"))
            self.choices.setdefault(i if index is None else index, _ChoiceStream()).feed(ch, now)

    def completion(self) -> Completion:
        return Completion(
            response_id=self.response_id,
            response_model=self.response_model,
            choices=[c.choice(i, self.t0) for i, c in sorted(self.choices.items())],
            usage=parse_usage(self.usage),
            stream_chunks=self.chunks,
        )

    def result(self) -> Completion:
        if not self.choices:
            raise MalformedResponse(f"the stream ended with [DONE] after {self.chunks} chunks but no choices")
        return self.completion()

    def partial(self) -> Completion | None:
        """What arrived before a failure, or None if nothing did."""
        return self.completion() if self.choices or self.usage else None

    def truncated(self, why: str) -> StreamTruncated:
        exc = StreamTruncated(f"{why} after {self.chunks} chunks, before [DONE]")
        exc.partial = self.partial()
        return exc


async def _drain(resp: aiohttp.ClientResponse) -> None:
    try:
        async with asyncio.timeout(DRAIN_AFTER_DONE_S):
            while await resp.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass  # the answer is complete; only the connection's reuse is lost


async def read_stream(resp: aiohttp.ClientResponse, t0: float, timeout_s: float | None) -> Completion:
    """Assemble an SSE chat.completion.chunk stream.

    Events are split here, per the SSE rules (data: lines up to a blank line; `:` comments such
    as keep-alives and other fields skipped), rather than with aiohttp's readline, which refuses
    lines over 128 KiB (a delta with many top_logprobs can be that long). A stream that ends or
    breaks before `[DONE]` raises StreamTruncated; any error raised midway carries `partial`.
    """
    stream = _Stream(t0)
    buf = bytearray()
    data: list[bytes] = []
    try:
        async for piece in resp.content.iter_any():
            now = time.monotonic()
            buf += piece
            start = 0
            while (nl := buf.find(b"\n", start)) >= 0:
                line = bytes(buf[start:nl]).rstrip(b"\r")
                start = nl + 1
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                elif not line and data:
                    event, data = b"\n".join(data), []
                    if event.strip() == b"[DONE]":
                        await _drain(resp)
                        return stream.result()
                    stream.feed(event, now)
            del buf[:start]
    except RequestError as exc:
        exc.partial = exc.partial or stream.partial()
        raise
    except TimeoutError:  # before ClientConnectionError: aiohttp's read timeout is both
        exc = AttemptTimeout(f"no complete answer within {timeout_s or 0:g} s ({stream.chunks} chunks arrived)")
        exc.partial = stream.partial()
        raise exc from None
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        raise stream.truncated(f"the connection broke ({type(exc).__name__})") from None
    # a [DONE] whose closing blank line (or newline) never came still ends the stream properly
    tail = bytes(buf).strip()
    if (data == [b"[DONE]"] and not tail) or (not data and tail in (b"data: [DONE]", b"data:[DONE]")):
        return stream.result()
    raise stream.truncated("the stream ended")
