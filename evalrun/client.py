"""One provider's HTTP side: build the payload, send one attempt, parse the answer.

A single `aiohttp.ClientSession` serves the whole run (keep-alive, one connection pool); this
module never retries — it raises a `RequestError` and `pool.py` decides. Base-URL fallback
lives here because it is a property of the endpoint, not of one request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from evalrun.errors import (
    APIStatusError,
    AttemptTimeout,
    ErrorIn200,
    MalformedResponse,
    RequestError,
    StreamTruncated,
    TransportError,
)
from evalrun.records import Choice, Completion, RequestSpec, Usage
from evalrun.retry import parse_retry_after

logger = logging.getLogger(__name__)

MAX_ERROR_MESSAGE = 2000  # characters of a server's error text kept in the report


class ProviderClient:
    """Sends requests to one provider, falling back along its base URLs when one is unhealthy."""

    def __init__(
        self,
        name: str,
        session: aiohttp.ClientSession,
        base_urls: list[str],
        api_key: str | None,
        headers: dict[str, str],
        timeout_s: float,
        connect_timeout_s: float,
        fallback_after: int,
    ) -> None:
        self.name = name
        self._session = session
        self._urls = base_urls
        self._index = 0
        self._failures = 0
        self._fallback_after = fallback_after
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        self._key = api_key
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._bodies: dict[str, dict[str, Any]] = {}  # cell_id → payload without messages
        # The repeat index lets a deterministic local server (the simulator) vary its answer per
        # repeat; a remote API never sees this header.
        self._send_repeat = all(_is_local(u) for u in base_urls)

    @property
    def base_url(self) -> str:
        return self._urls[self._index]

    def note_failure(self) -> None:
        """A connect failure or 5xx: after `fallback_after` in a row, move to the next base URL."""
        self._failures += 1
        if self._failures >= self._fallback_after and self._index + 1 < len(self._urls):
            old = self.base_url
            self._index += 1
            self._failures = 0
            logger.warning("provider %s: %s keeps failing; switching to %s", self.name, old, self.base_url)

    def note_success(self) -> None:
        self._failures = 0

    def payload(self, spec: RequestSpec) -> dict[str, Any]:
        """The request body; `extra_body` is merged at the top level, as the OpenAI SDK does."""
        base = self._bodies.get(spec.cell.cell_id)
        if base is None:
            params = dict(spec.cell.params)
            extra = params.pop("extra_body", None) or {}
            if params.get("stream"):
                # usage only arrives in a stream when asked for; it is what the run is billed by
                opts = dict(params.get("stream_options") or {})
                opts.setdefault("include_usage", True)
                params["stream_options"] = opts
            base = self._bodies[spec.cell.cell_id] = {"model": spec.cell.model, **params, **extra}
        return {**base, "messages": spec.messages}

    async def send(self, spec: RequestSpec) -> Completion:
        """One attempt. Raises a RequestError subclass on any failure."""
        body = orjson.dumps(self.payload(spec))
        headers = {**self._headers, "X-Evalrun-Repeat": str(spec.repeat)} if self._send_repeat else self._headers
        stream = bool(spec.cell.params.get("stream"))
        if stream:
            headers = {**headers, "Accept": "text/event-stream"}
        url = self.base_url + "/chat/completions"
        t0 = time.monotonic()
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=self._timeout) as resp:
                if resp.status >= 400:
                    raise _status_error(resp.status, await resp.read(), resp.headers.get("Retry-After"))
                if stream and resp.content_type == "text/event-stream":
                    return await _read_stream(resp, t0)
                raw = await resp.read()
            return parse_completion(_loads(raw))
        except RequestError as exc:
            if self._key:  # a server may echo the request back; the key must not reach the report
                exc.args = tuple(str(a).replace(self._key, "***") for a in exc.args)
                if isinstance(exc, APIStatusError):
                    exc.message = exc.message.replace(self._key, "***")
                    exc.body = exc.body.replace(self._key, "***")
            raise
        except asyncio.TimeoutError:
            raise AttemptTimeout(f"no complete answer within {self._timeout.total:g} s") from None
        except aiohttp.ClientPayloadError as exc:
            raise MalformedResponse(f"response body cut off: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None


def _is_local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedResponse(f"HTTP 200 but the body is not JSON: {raw[:200]!r}") from None


def _status_error(status: int, raw: bytes, retry_after: str | None) -> APIStatusError:
    text = raw.decode("utf-8", "replace")
    message, code, kind = text[:MAX_ERROR_MESSAGE] or f"HTTP {status}", None, None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        err = obj["error"]
        message = str(err.get("message") or message)[:MAX_ERROR_MESSAGE]
        code = str(err["code"]) if err.get("code") is not None else None
        kind = str(err["type"]) if err.get("type") is not None else None
    elif isinstance(obj, dict) and isinstance(obj.get("error"), str):
        message = obj["error"][:MAX_ERROR_MESSAGE]
    return APIStatusError(
        status, message, code=code, kind=kind, body=text[:MAX_ERROR_MESSAGE],
        retry_after=parse_retry_after(retry_after),
    )


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


def parse_completion(obj: Any) -> Completion:
    """A non-streamed chat.completion body → Completion; raises BadResponse if unusable."""
    if not isinstance(obj, dict):
        raise MalformedResponse(f"HTTP 200 but the body is a {type(obj).__name__}, not an object")
    err = obj.get("error")
    if err:
        msg = err.get("message") if isinstance(err, dict) else str(err)
        raise ErrorIn200(f"HTTP 200 with an error object: {str(msg)[:MAX_ERROR_MESSAGE]}")
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


async def _read_stream(resp: aiohttp.ClientResponse, t0: float) -> Completion:
    """Assemble an SSE chat.completion.chunk stream; raises StreamTruncated without [DONE]."""
    acc: dict[int, dict[str, Any]] = {}
    usage: Any = None
    response_id = response_model = None
    chunks = 0
    first: float | None = None
    last: float | None = None
    gaps: list[float] = []
    done = False
    async for line in resp.content:
        if not line.startswith(b"data:"):
            continue  # blank separators, ": keep-alive" comments, event:/id: fields
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MalformedResponse(f"stream chunk is not JSON: {data[:200]!r}") from None
        if not isinstance(chunk, dict):
            continue
        if chunk.get("error"):
            e = chunk["error"]
            raise ErrorIn200(f"error in stream: {(e.get('message') if isinstance(e, dict) else e)}")
        chunks += 1
        response_id = response_id or chunk.get("id")
        response_model = response_model or chunk.get("model")
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices") or ():
            i = ch.get("index", 0)
            a = acc.setdefault(i, {"content": [], "tool_calls": {}, "logprobs": [], "finish": None})
            delta = ch.get("delta") or {}
            text = delta.get("content")
            if text:
                now = time.monotonic()
                if first is None:
                    first = now
                elif last is not None:
                    gaps.append(now - last)
                last = now
                a["content"].append(text)
            for tc in delta.get("tool_calls") or ():
                slot = a["tool_calls"].setdefault(tc.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            lp = ch.get("logprobs")
            if isinstance(lp, dict) and isinstance(lp.get("content"), list):
                a["logprobs"].extend(lp["content"])
            if ch.get("finish_reason"):
                a["finish"] = ch["finish_reason"]
    if not done:
        partial = "".join("".join(a["content"]) for a in acc.values())
        raise StreamTruncated(f"stream ended before [DONE] after {chunks} chunks; partial content: {partial[:500]!r}")
    gaps.sort()
    return Completion(
        response_id=response_id,
        response_model=response_model,
        choices=[
            Choice(
                index=i,
                content="".join(a["content"]) if a["content"] or not a["tool_calls"] else None,
                finish_reason=a["finish"],
                tool_calls=[a["tool_calls"][k] for k in sorted(a["tool_calls"])] or None,
                logprobs=a["logprobs"] or None,
            )
            for i, a in sorted(acc.items())
        ],
        usage=parse_usage(usage),
        stream_chunks=chunks,
        ttft_s=None if first is None else first - t0,
        itl_mean_s=sum(gaps) / len(gaps) if gaps else None,
        itl_p95_s=gaps[min(len(gaps) - 1, int(0.95 * len(gaps)))] if gaps else None,
    )
