"""An answer → typed records: a chat.completion JSON body, or an SSE chunk stream.

Everything a server sends is read here and nowhere else, so a malformed answer is a
`BadResponse` raised from this module, never an exception further down the data flow.
"""

from __future__ import annotations

import asyncio
import sys
import time
from array import array
from typing import Any

import aiohttp
import orjson

from evalrun.quantiles import quantile
from evalrun.run.http.errors import AttemptTimeout, ErrorIn200, MalformedResponse, RequestError, StreamTruncated
from evalrun.run.records import coerce
from evalrun.run.records.coerce import Notes
from evalrun.run.records.records import Choice, Completion, Usage
from evalrun.run.records.secrets import mask

MAX_ERROR_MESSAGE = 2000  # characters of a server's error text kept in the report
# After [DONE], the rest of the body (the chunked-encoding end) is read so that the connection
# goes back to the pool; a server that keeps talking longer than this loses the connection.
DRAIN_AFTER_DONE_S = 1.0
SHOWN_CHARS = 200  # of a malformed body or chunk, quoted in its error message


def loads_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedResponse(f"HTTP 200 but the body is not JSON: {_shown(raw)}") from None


def _shown(value: Any) -> str:
    """A bad piece of an answer, as an error message quotes it: masked, then cut (in that order,
    or a key cut in two would leave its first half in the report)."""
    if isinstance(value, bytes | str):  # a huge body: only its start can be shown (a key is < 1 KiB)
        value = value[: 4 * SHOWN_CHARS + 1024]
    text = mask(repr(value))
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _obj(value: Any, where: str, notes: Notes) -> dict[str, Any]:
    """A sub-object the answer may leave out (None); anything but an object is noted."""
    if isinstance(value, dict):
        return value
    if value is not None:
        notes.bad(where, value, "an object")
    return {}


def parse_usage(usage: Any, notes: Notes | None = None) -> Usage:
    """Usage in the OpenAI shape, falling back to input_/output_tokens; missing → None.
    A count of the wrong type or range is None, noted in `notes`."""
    notes = notes if notes is not None else Notes()
    if usage is None:
        return Usage()
    if not isinstance(usage, dict):
        notes.bad("usage", usage, "an object")
        return Usage()
    pd = _obj(usage.get("prompt_tokens_details"), "usage.prompt_tokens_details", notes)
    if not pd and isinstance(usage.get("input_tokens_details"), dict):
        pd = usage["input_tokens_details"]
    cd = _obj(usage.get("completion_tokens_details"), "usage.completion_tokens_details", notes)
    if not cd and isinstance(usage.get("output_tokens_details"), dict):
        cd = usage["output_tokens_details"]
    prompt = coerce.count(usage.get("prompt_tokens"), "usage.prompt_tokens", notes)
    completion = coerce.count(usage.get("completion_tokens"), "usage.completion_tokens", notes)
    # some gateways send input_/output_tokens instead; zeros beside real values are noise
    if prompt is None and usage.get("input_tokens"):
        prompt = coerce.count(usage.get("input_tokens"), "usage.input_tokens", notes)
    if completion is None and usage.get("output_tokens"):
        completion = coerce.count(usage.get("output_tokens"), "usage.output_tokens", notes)
    total = coerce.count(usage.get("total_tokens"), "usage.total_tokens", notes)
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=coerce.count(pd.get("cached_tokens"), "usage.prompt_tokens_details.cached_tokens", notes),
        reasoning_tokens=coerce.count(
            cd.get("reasoning_tokens"), "usage.completion_tokens_details.reasoning_tokens", notes
        ),
        prompt_text_tokens=coerce.count(pd.get("text_tokens"), "usage.prompt_tokens_details.text_tokens", notes),
        prompt_audio_tokens=coerce.count(pd.get("audio_tokens"), "usage.prompt_tokens_details.audio_tokens", notes),
        prompt_image_tokens=coerce.count(pd.get("image_tokens"), "usage.prompt_tokens_details.image_tokens", notes),
        completion_text_tokens=coerce.count(
            cd.get("text_tokens"), "usage.completion_tokens_details.text_tokens", notes
        ),
        completion_audio_tokens=coerce.count(
            cd.get("audio_tokens"), "usage.completion_tokens_details.audio_tokens", notes
        ),
    )


def _error_text(err: Any) -> str:
    """The message of an `error` envelope, masked before it is cut (a cut key would survive)."""
    msg = err.get("message") if isinstance(err, dict) else err
    return mask(str(msg))[:MAX_ERROR_MESSAGE]


def parse_completion(obj: Any) -> Completion:
    """A non-streamed chat.completion body → Completion; raises BadResponse if unusable.

    Unusable means no choices to keep; a field of the wrong type or range is stored as null and
    noted in `Completion.malformed` instead, since the answer was paid for."""
    if not isinstance(obj, dict):
        raise MalformedResponse(f"HTTP 200 but the body is a {type(obj).__name__}, not an object")
    notes = Notes()
    err = obj.get("error")
    if err:
        exc = ErrorIn200(f"HTTP 200 with an error object: {_error_text(err)}")
        if isinstance(obj.get("usage"), dict):  # billed anyway: keep the usage so it is costed
            exc.partial = Completion(
                coerce.text(obj.get("id"), "id", notes),
                coerce.text(obj.get("model"), "model", notes),
                [],
                parse_usage(obj["usage"], notes),
                malformed=notes.text(),
            )
        raise exc
    raw_choices = obj.get("choices")
    if not isinstance(raw_choices, list) or not raw_choices:
        raise MalformedResponse("HTTP 200 but the body has no choices")
    choices = []
    for i, ch in enumerate(raw_choices):
        if not isinstance(ch, dict):
            raise MalformedResponse(f"choice {i} is not an object")
        where = f"choices[{i}]"
        msg = _obj(ch.get("message"), f"{where}.message", notes)
        lp = _obj(ch.get("logprobs"), f"{where}.logprobs", notes)
        choices.append(
            Choice(
                index=coerce.index(ch.get("index"), i, f"{where}.index", notes),
                content=coerce.content(msg.get("content"), f"{where}.message.content", notes),
                finish_reason=coerce.text(ch.get("finish_reason"), f"{where}.finish_reason", notes),
                tool_calls=coerce.tool_calls(msg.get("tool_calls"), f"{where}.message.tool_calls", notes),
                logprobs=coerce.logprobs(lp.get("content"), f"{where}.logprobs.content", notes),
            )
        )
    return Completion(
        response_id=coerce.text(obj.get("id"), "id", notes),
        response_model=coerce.text(obj.get("model"), "model", notes),
        choices=choices,
        usage=parse_usage(obj.get("usage"), notes),
        malformed=notes.text(),
    )


# --------------------------------------------------------------------------- streaming


class _ChoiceStream:
    """One choice being assembled from its deltas, with the arrival time of each output piece."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}  # tool-call index → the call so far
        self.logprobs = coerce.LogprobsSoFar()
        self.finish: str | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.gaps: array[float] = array("d")  # one per token: doubles, not float objects

    def feed(self, ch: dict[str, Any], now: float, notes: Notes, index: int = 0) -> None:
        delta = ch.get("delta") or {}
        if not isinstance(delta, dict):
            raise MalformedResponse(f"stream chunk has a delta that is not an object: {_shown(delta)}")
        text = coerce.content(delta.get("content"), "delta.content", notes)
        produced = bool(text)  # an empty delta ("" or {}) is no token: not in TTFT or the gaps
        if text:
            self.content.append(sys.intern(text))  # a long answer's pieces recur
        calls = delta.get("tool_calls") or []
        if not isinstance(calls, list):
            raise MalformedResponse(f"stream chunk has tool_calls that are not a list: {_shown(calls)}")
        for tc in calls:
            produced |= self._tool_delta(tc, notes)
        lp = _obj(ch.get("logprobs"), "logprobs", notes)
        tokens = lp.get("content")
        if isinstance(tokens, list):  # flattened now: a long answer's token objects are not kept
            self.logprobs.add(tokens, f"choices[{index}].logprobs.content", notes)
        elif tokens is not None:
            notes.bad("logprobs.content", tokens, "a list of token objects")
        finish = coerce.text(ch.get("finish_reason"), "finish_reason", notes)
        if finish:
            self.finish = finish
        if produced:
            if self.first is None:
                self.first = now
            elif self.last is not None:
                self.gaps.append(now - self.last)
            self.last = now

    def _tool_delta(self, tc: Any, notes: Notes) -> bool:
        """Merge one tool-call delta; True if it carried part of the call's name or arguments."""
        if not isinstance(tc, dict):
            raise MalformedResponse(f"stream chunk has a tool call that is not an object: {_shown(tc)}")
        index = _int(tc.get("index"))
        if index is None:
            # some gateways leave the index out: a new id starts a call, anything else continues the last
            same = [i for i, c in self.calls.items() if tc.get("id") and c["id"] == tc["id"]]
            index = same[0] if same else len(self.calls) if tc.get("id") or not self.calls else max(self.calls)
        slot = self.calls.setdefault(index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call_id = coerce.text(tc.get("id"), "tool_calls.id", notes)
        if call_id:
            slot["id"] = call_id
        if isinstance(tc.get("type"), str):
            slot["type"] = tc["type"]
        fn = _obj(tc.get("function"), "tool_calls.function", notes)
        name = coerce.text(fn.get("name"), "tool_calls.function.name", notes) or ""
        if name and name != slot["function"]["name"]:  # sent once, in pieces, or repeated whole
            slot["function"]["name"] += name
        args = fn.get("arguments") or ""
        if not isinstance(args, str):  # an object where the API sends JSON text
            args = orjson.dumps(args).decode()
        slot["function"]["arguments"] += args
        return bool(name or args)

    def choice(self, index: int, t0: float, notes: Notes) -> Choice:
        gaps = sorted(self.gaps)
        return Choice(
            index=index,
            content="".join(self.content) if self.content or not self.calls else None,
            finish_reason=self.finish,
            tool_calls=[self.calls[k] for k in sorted(self.calls)] or None,
            logprobs=self.logprobs.result(),
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
        self.notes = Notes()  # fields dropped while the chunks arrived

    def feed(self, data: bytes, now: float) -> None:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MalformedResponse(f"stream chunk {self.chunks + 1} is not JSON: {_shown(data)}") from None
        if not isinstance(chunk, dict):
            raise MalformedResponse(f"stream chunk {self.chunks + 1} is a {type(chunk).__name__}, not an object")
        if chunk.get("error"):
            raise ErrorIn200(f"error in stream: {_error_text(chunk['error'])}")
        self.chunks += 1
        notes = self.notes
        if self.response_id is None:
            self.response_id = coerce.text(chunk.get("id"), "id", notes)
        if self.response_model is None:
            self.response_model = coerce.text(chunk.get("model"), "model", notes)
        if chunk.get("usage"):  # the last usage wins: some servers send a running total
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise MalformedResponse(f"stream chunk {self.chunks} has choices that are not a list")
        for i, ch in enumerate(choices):
            if not isinstance(ch, dict):
                raise MalformedResponse(f"stream chunk {self.chunks} has a choice that is not an object")
            index = coerce.index(ch.get("index"), i, "choices.index", notes)
            self.choices.setdefault(index, _ChoiceStream()).feed(ch, now, notes, index)

    def completion(self) -> Completion:
        notes = Notes()
        notes.items = list(self.notes.items)
        return Completion(
            response_id=self.response_id,
            response_model=self.response_model,
            choices=[c.choice(i, self.t0, notes) for i, c in sorted(self.choices.items())],
            usage=parse_usage(self.usage, notes),
            stream_chunks=self.chunks,
            malformed=notes.text(),
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
        late = AttemptTimeout(f"no complete answer within {timeout_s or 0:g} s ({stream.chunks} chunks arrived)")
        late.partial = stream.partial()
        raise late from None
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        raise stream.truncated(f"the connection broke ({type(exc).__name__})") from None
    # a [DONE] whose closing blank line (or newline) never came still ends the stream properly
    tail = bytes(buf).strip()
    if (data == [b"[DONE]"] and not tail) or (not data and tail in (b"data: [DONE]", b"data:[DONE]")):
        return stream.result()
    raise stream.truncated("the stream ended")
