"""The aiohttp application: routes, the fault pipeline, latency, SSE and the handle.

Per arrival the checks run in a fixed order — auth → fail_first → quota → unknown model →
validation (400) → rpm/tpm window → random faults — so each switch can be tested alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import orjson
from aiohttp import web

from evalrun.sim.behaviour import CREATED_BASE, Answer, answer_request
from evalrun.sim.faults import Fault, FaultState, RateWindows, SimStats
from evalrun.sim.options import SimOptions, update_options
from evalrun.sim.profiles import profile_for
from evalrun.sim.response import completion_body, sse_events, usage_of
from evalrun.sim.structured import SchemaTooComplex
from evalrun.sim.validate import parse_request
from evalrun.sim.wire import KNOWN_MODELS, ChatRequest, Usage, error_body

__all__ = ["Simulator"]

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024  # base64 images and audio make legitimate bodies large
SHUTDOWN_S = 1.0
REPEAT_HEADER = "X-Evalrun-Repeat"
MAX_REPEAT = 2**31 - 1
_JSON = "application/json"
_NOT_JSON = object()
_ERROR_200 = orjson.dumps(
    {"error": {"message": "upstream model overloaded", "type": "upstream_error", "code": "upstream_error"}}
)
_QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


def _partial_usage(answer: Answer) -> Usage:
    """A usage block with the holes real gateways leave: fields null or missing."""
    usage = usage_of(answer)
    del usage["total_tokens"]
    usage["completion_tokens"] = None
    usage["prompt_tokens_details"] = None
    return usage


class Simulator:
    """Server state shared by the handlers: options, counters, fault state, windows."""

    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.stats = SimStats()
        self.faults = FaultState()
        self.faults.reset(options.seed)
        self.windows = RateWindows()
        self.closing = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()

    # ---- helpers --------------------------------------------------------------------------

    def _json(self, obj: object, status: int = 200) -> web.Response:
        self.stats.count_status(status)
        return web.Response(status=status, body=orjson.dumps(obj), content_type=_JSON)

    def _error(
        self,
        status: int,
        message: str | None = None,
        *,
        type_: str | None = None,
        param: str | None = None,
        retry_after: str | None = None,
        code: str | None = None,
    ) -> web.Response:
        self.stats.count_status(status)
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        return web.Response(
            status=status,
            body=error_body(status, message, type_=type_, param=param, code=code),
            content_type=_JSON,
            headers=headers,
        )

    def _fault_error(self, status: int, why: str) -> web.Response:
        """An injected failure with the headers a gateway would send for that status."""
        if status == 429:
            return self._error(429, f"Rate limit reached ({why}).", retry_after=self.options.retry_after)
        if status == 402:
            return self._error(402, _QUOTA_MESSAGE, type_="insufficient_quota")
        return self._error(status, retry_after="1" if status == 503 else None)

    def _note_fault(self, name: str) -> None:
        self.stats.faults[name] = self.stats.faults.get(name, 0) + 1

    def _delays(self, model: str) -> tuple[float, float]:
        """(base, per token) seconds after scaling; (0, 0) means never sleep."""
        o = self.options
        if o.latency_scale == 0:
            return 0.0, 0.0
        profile = profile_for(model)
        base = profile.base_ms if o.latency_ms is None else o.latency_ms
        per = profile.per_token_ms if o.per_token_ms is None else o.per_token_ms
        return base * o.latency_scale / 1000.0, per * o.latency_scale / 1000.0

    def _authorized(self, request: web.Request) -> bool:
        key = self.options.require_api_key
        return key is None or request.headers.get("Authorization") == "Bearer " + key

    # ---- routes ---------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        now = self.loop.time()
        stats.arrivals.append(round(now - self.t0, 6))
        try:
            return await self._chat(request, now)
        finally:
            stats.in_flight -= 1

    async def _chat(self, request: web.Request, now: float) -> web.StreamResponse:
        o, fs = self.options, self.faults
        u, u_status = fs.draw(o)
        refused = self._refuse_unread(request)
        if refused is not None:
            return refused
        chat = await self._read_chat(request)
        if isinstance(chat, web.Response):
            return chat
        repeat = self._repeat(request)
        if isinstance(repeat, web.Response):
            return repeat
        try:
            answer = answer_request(chat, o.seed, repeat)
        except SchemaTooComplex as exc:
            return self._error(400, str(exc))
        limited = self._admit(chat["model"], now, answer.total_tokens)
        if limited is not None:
            return limited

        fault, status = fs.pick(o, u, u_status)
        if fault is not None:
            self._note_fault(fault.value)
        if fault is Fault.RATE_429:
            return self._error(429, "Rate limit reached for requests (simulated).", retry_after=o.retry_after)
        if fault is Fault.STATUS_5XX:
            return self._fault_error(status, "simulated")
        if fault is Fault.HANG:
            return await self._hang(o.hang_s)
        response, delivered = await self._reply(request, chat, answer, fault)
        if delivered:
            fs.successes += 1
            self.stats.tokens_total += answer.total_tokens
        return response

    def _refuse_unread(self, request: web.Request) -> web.Response | None:
        """auth → fail_first → quota: the refusals that come before the body is read."""
        o, fs = self.options, self.faults
        if not self._authorized(request):
            return self._error(401)
        fs.arrivals += 1
        if fs.arrivals <= o.fail_first:
            self._note_fault("fail_first")
            return self._fault_error(o.fail_first_status, "fail_first")
        if o.quota_after is not None and fs.successes >= o.quota_after:
            self._note_fault("quota")
            return self._error(o.quota_status, _QUOTA_MESSAGE, type_="insufficient_quota")
        return None

    async def _read_chat(self, request: web.Request) -> ChatRequest | web.Response:
        """The body as a valid chat request, or the 413 / 404 / 400 a gateway answers instead."""
        o = self.options
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._error(413)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = _NOT_JSON
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str):
            self.stats.by_model[model] = self.stats.by_model.get(model, 0) + 1
            if model in o.unknown_models or (o.strict_models and model not in o.served_models()):
                return self._error(
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                    param="model",
                    code="model_not_found",  # OpenAI's code; the type stays the gateway's not_found_error
                )
        if body is _NOT_JSON:
            return self._error(400, "We could not parse the JSON body of your request.")
        chat = parse_request(body)
        if isinstance(chat, tuple):
            return self._error(400, chat[0], param=chat[1])
        return chat

    def _repeat(self, request: web.Request) -> int | web.Response:
        """The repeat index the client sent in its header (0 without one), or a 400."""
        try:
            repeat = int(request.headers.get(REPEAT_HEADER, 0))
            if not 0 <= repeat <= MAX_REPEAT:
                raise ValueError
        except ValueError:
            return self._error(
                400,
                f"Invalid value for header '{REPEAT_HEADER}': expected an integer from 0 to {MAX_REPEAT}.",
                param=REPEAT_HEADER,
            )
        return repeat

    def _admit(self, model: str, now: float, tokens: int) -> web.Response | None:
        """Take the request into the model's rpm/tpm window, or the 429 when it is full."""
        o = self.options
        wait = self.windows.retry_after(model, now, tokens, o)
        if wait is not None:
            return self._error(
                429,
                f"Rate limit reached for {model}: {o.rpm_limit} requests or {o.tpm_limit} tokens per minute.",
                retry_after=str(wait),
            )
        in_window, tokens_in_window = self.windows.admit(model, now, tokens)
        if in_window > self.stats.max_in_window.get(model, 0):
            self.stats.max_in_window[model] = in_window
        if tokens_in_window > self.stats.max_tokens_in_window.get(model, 0):
            self.stats.max_tokens_in_window[model] = tokens_in_window
        return None

    async def _reply(
        self, request: web.Request, chat: ChatRequest, answer: Answer, fault: Fault | None
    ) -> tuple[web.StreamResponse, bool]:
        """The answer, streamed or whole, after its latency; False when a fault spoilt a whole body
        (it does not count as a success)."""
        usage: Usage | bool | None = True
        if fault is Fault.NULL_USAGE:
            self.faults.null_usage_flips += 1
            usage = None if self.faults.null_usage_flips % 2 else _partial_usage(answer)
        logprobs = chat.get("logprobs") is True
        top_k = chat.get("top_logprobs") or 0
        base_s, per_s = self._delays(chat["model"])
        if chat.get("stream") is True:
            include_usage = bool((chat.get("stream_options") or {}).get("include_usage"))
            response = await self._stream(
                request,
                answer,
                fault,
                base_s,
                per_s,
                logprobs=logprobs,
                top_k=top_k,
                include_usage=include_usage,
                usage=usage,
            )
            return response, True
        delay = base_s + per_s * answer.completion_tokens
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is Fault.ERROR_200:
            self.stats.count_status(200)
            return web.Response(body=_ERROR_200, content_type=_JSON), False
        payload = orjson.dumps(completion_body(answer, logprobs=logprobs, top_k=top_k, usage=usage))
        if fault is Fault.MALFORMED:
            self.stats.count_status(200)
            return web.Response(body=payload[: len(payload) // 2], content_type=_JSON), False
        return self._ok(payload), True

    def _ok(self, payload: bytes) -> web.Response:
        self.stats.count_status(200)
        return web.Response(body=payload, content_type=_JSON)

    async def _hang(self, hang_s: float) -> web.Response:
        # The client usually gives up first: aiohttp then cancels this handler.
        try:
            await asyncio.wait_for(self.closing.wait(), hang_s)
        except TimeoutError:
            return self._error(504, "Upstream model provider timed out (simulated hang).")
        return self._error(503, "Simulator shutting down.", retry_after="1")

    async def _stream(
        self,
        request: web.Request,
        answer: Answer,
        fault: Fault | None,
        base_s: float,
        per_s: float,
        *,
        logprobs: bool,
        top_k: int,
        include_usage: bool,
        usage: Usage | bool | None,
    ) -> web.StreamResponse:
        events = list(sse_events(answer, logprobs=logprobs, top_k=top_k, include_usage=include_usage, usage=usage))
        if fault is Fault.ERROR_200:
            events = [(events[0][0], b"data: " + _ERROR_200 + b"\n\n"), events[-1]]
        elif fault is Fault.MALFORMED:
            # a truncated event and no [DONE]: the connection just ends
            ntok, cut = next(e for e in events[1:] if e[1].startswith(b"data: {"))
            events = [events[0], (ntok, cut[: len(cut) // 2])]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            if base_s == 0 and per_s == 0:
                await resp.prepare(request)
                self.stats.count_status(200)
                await resp.write(b"".join(e for _, e in events))
            else:
                for i, (ntok, event) in enumerate(events):
                    delay = per_s * ntok + (base_s if i == 0 else 0.0)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if i == 0:  # headers go out with the first token, as time-to-first-byte
                        await resp.prepare(request)
                        self.stats.count_status(200)
                    await resp.write(event)
            await resp.write_eof()
        except ConnectionResetError:
            logger.debug("client went away mid-stream")
        return resp

    async def models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401)
        listed = [
            {"id": m, "object": "model", "created": CREATED_BASE, "owned_by": "google" if m in KNOWN_MODELS else "user"}
            for m in self.options.served_models()
        ]
        return self._json({"object": "list", "data": listed})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats.to_json()), content_type=_JSON)

    async def reset(self, request: web.Request) -> web.Response:
        self.reset_state()
        return web.Response(body=b'{"ok":true}', content_type=_JSON)

    def reset_state(self) -> None:
        self.stats.reset()
        self.faults.reset(self.options.seed)
        self.windows.reset()

    async def get_options(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.options.to_dict()), content_type=_JSON)

    async def set_options(self, request: web.Request) -> web.Response:
        try:
            data = orjson.loads(await request.read())
            if not isinstance(data, Mapping):
                raise ValueError("expected a JSON object of simulator options")
            update_options(self.options, data)
        except (ValueError, orjson.JSONDecodeError) as exc:  # JSONDecodeError is a ValueError too
            return web.Response(status=400, body=error_body(400, str(exc)), content_type=_JSON)
        return web.Response(body=orjson.dumps(self.options.to_dict()), content_type=_JSON)
