"""One provider's HTTP side: build the payload, send one attempt, hand the answer to `parse`.

A single `aiohttp.ClientSession` serves the whole run (keep-alive, one connection pool); this
module never retries — an attempt ends as a `Sent` (an answer or a `RequestError`, the URL it
went to, the server's rate-limit headers) and `attempts.py` decides. Base-URL fallback lives
here because it is a property of the endpoint, not of one request: each attempt names its URL,
and a failure counts against that URL only (a late failure from a URL already left behind
cannot push the healthy one aside).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import orjson

from evalrun.config.models import is_loopback
from evalrun.config.proxy import proxy_for
from evalrun.run.http.errors import (
    APIStatusError,
    AttemptTimeout,
    MalformedResponse,
    RedirectRefused,
    RequestError,
    TransportError,
)
from evalrun.run.http.parse import MAX_ERROR_MESSAGE, loads_body, parse_completion, read_stream
from evalrun.run.rate.ratelimits import RateHeaders, parse_rate_headers, parse_retry_after
from evalrun.run.records.records import ChatRequest, Completion, RequestSpec
from evalrun.run.records.secrets import mask, mask_bytes

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sent:
    """One attempt of one request: where it went, how long it took, what came back."""

    url: str  # the base URL of this attempt
    latency_s: float
    completion: Completion | None = None
    error: RequestError | None = None
    rate: RateHeaders | None = None  # the server's x-ratelimit-* / retry-after-ms, if sent


class Payloads:
    """Request bodies as they go on the wire (the response cache keys requests by them too)."""

    def __init__(self) -> None:
        self._bodies: dict[str, ChatRequest] = {}  # cell_id → payload without messages

    def payload(self, spec: RequestSpec) -> ChatRequest:
        """The request body: the cell's body (built once per cell), the row's own parameters
        on top when the dataset supplies some, and the messages."""
        base: ChatRequest | None
        if spec.row_params:
            base = _body(spec.cell.model, spec.params)
        else:
            base = self._bodies.get(spec.cell.cell_id)
            if base is None:
                base = self._bodies[spec.cell.cell_id] = _body(spec.cell.model, spec.cell.params)
        body = base.copy()
        body["messages"] = spec.messages
        return body


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
        self._failures = dict.fromkeys(base_urls, 0)  # consecutive failures, per URL
        self._fallback_after = fallback_after
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        self._key = api_key
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._payloads = Payloads()
        # The repeat index lets a deterministic local server (the simulator) vary its answer per
        # repeat; a remote API never sees this header.
        self._send_repeat = all(is_loopback(urlsplit(u).hostname or "") for u in base_urls)
        self._proxies = {u: proxy_for(u) for u in base_urls}  # HTTPS_PROXY/NO_PROXY; never for loopback

    @property
    def base_url(self) -> str:
        """The URL the next attempt goes to."""
        return self._urls[self._index]

    def note_failure(self, url: str) -> None:
        """A connect failure or 5xx from `url`: after `fallback_after` in a row there, while it is
        still the current URL, move on to the next base URL (the fallback is sticky)."""
        if url not in self._failures:
            return
        self._failures[url] += 1
        if url != self.base_url or self._failures[url] < self._fallback_after:
            return
        if self._index + 1 < len(self._urls):
            self._index += 1
            logger.warning("provider %s: %s keeps failing; switching to %s", self.name, url, self.base_url)

    def note_success(self, url: str) -> None:
        if url in self._failures:
            self._failures[url] = 0

    def payload(self, spec: RequestSpec) -> ChatRequest:
        return self._payloads.payload(spec)

    async def send(self, spec: RequestSpec) -> Sent:
        """One attempt to the current base URL. Never raises a RequestError: a failure is the
        `error` of the returned Sent, with the URL it came from."""
        url = self.base_url
        body = orjson.dumps(self.payload(spec))
        headers = {**self._headers, "X-Evalrun-Repeat": str(spec.repeat)} if self._send_repeat else self._headers
        stream = bool(spec.params.get("stream"))
        if stream:
            headers = {**headers, "Accept": "text/event-stream"}
        rate: RateHeaders | None = None
        completion: Completion | None = None
        t0 = time.monotonic()
        try:
            try:
                # a redirect is an error, never followed: it would turn the POST into a GET elsewhere
                async with self._session.post(
                    url + "/chat/completions",
                    data=body,
                    headers=headers,
                    timeout=self._timeout,
                    proxy=self._proxies.get(url),
                    allow_redirects=False,
                ) as resp:
                    rate = parse_rate_headers(resp.headers)
                    if 300 <= resp.status < 400:
                        raise RedirectRefused(resp.status, mask(resp.headers.get("Location", "")))
                    if resp.status >= 400:
                        retry_after = resp.headers.get("Retry-After")
                        if rate is not None and rate.retry_after_ms is not None:
                            retry_after = str(rate.retry_after_ms)  # the finer of the two
                        # masked before _status_error cuts it: no piece of a key survives
                        raise _status_error(resp.status, mask_bytes(await resp.read()), retry_after)
                    # a server may ignore stream: true and answer with one JSON body, or label its
                    # event stream loosely; only a JSON answer is read as JSON then
                    ctype = resp.content_type
                    if ctype == "text/event-stream" or (stream and ctype != "application/json"):
                        completion = await read_stream(resp, t0, self._timeout.total)
                    else:
                        raw = await resp.read()
                if completion is None:
                    completion = parse_completion(loads_body(raw))
            except TimeoutError:
                raise AttemptTimeout(f"no complete answer within {self._timeout.total:g} s") from None
            except aiohttp.ClientPayloadError as exc:
                raise MalformedResponse(mask(f"response body cut off: {exc}")) from None
            except (aiohttp.ClientError, OSError) as exc:  # e.g. an oversized header that echoes the key
                raise TransportError(mask(f"{type(exc).__name__}: {exc}")) from None
        except RequestError as exc:
            return Sent(url, time.monotonic() - t0, error=self._masked(exc), rate=rate)
        return Sent(url, time.monotonic() - t0, completion=completion, rate=rate)

    def _masked(self, exc: RequestError) -> RequestError:
        """A server may echo the request back; the key must not reach the report."""
        if self._key:
            exc.args = tuple(str(a).replace(self._key, "***") for a in exc.args)
            if isinstance(exc, APIStatusError):
                exc.message = exc.message.replace(self._key, "***")
                exc.body = exc.body.replace(self._key, "***")
        return exc


def _body(model: str, params: dict[str, Any]) -> ChatRequest:
    """Model and parameters on the wire; `extra_body` merged at the top level, as the OpenAI SDK does."""
    params = dict(params)
    extra = params.pop("extra_body", None) or {}
    if params.get("stream"):
        # usage only arrives in a stream when asked for; it is what the run is billed by
        opts = dict(params.get("stream_options") or {})
        opts.setdefault("include_usage", True)
        params["stream_options"] = opts
    # the params were validated against the same schema (config.params); extra_body may add keys
    return cast(ChatRequest, {"model": model, **params, **extra})


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
        status,
        message,
        code=code,
        kind=kind,
        body=text[:MAX_ERROR_MESSAGE],
        retry_after=parse_retry_after(retry_after),
    )
