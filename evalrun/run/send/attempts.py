"""One request, start to end: the one retry loop.

    repeat:
        rate slot       limiter.acquire          (waiting: interruptible, holds nothing)
        concurrency     the provider's slots     (waiting: interruptible)
        admission       --max-requests / --max-cost, at the first send only (the cost budget's
                        room is held before the rate slot, waiting in turn, holding nothing)
        send            client.send → Sent       (on the wire: counted in `in_flight`)
        answer          success → Result; else classify once → side effects → wait or end
        wait            Retry-After or backoff   (waiting: interruptible)

The rate slot comes before the concurrency slot, so a lane that waits on its rate (or on a
server's full window) never holds a connection another lane could use. Attempts are bounded by
`max_attempts` (and a tighter per-kind cap from `classify`) and by `max_total_s` from the
request's start, in one place: `_next_wait`. Every retry is logged at -v with its error type,
attempt, wait and URL (never the key: it travels in a header only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from evalrun.config.models import RetryConfig
from evalrun.config.params import output_budget
from evalrun.run.http.client import Sent
from evalrun.run.http.errors import RequestError
from evalrun.run.rate.adaptive import Send
from evalrun.run.rate.limiter import MONOTONIC, Clock, ModelLimiter
from evalrun.run.records.records import RequestSpec, Result
from evalrun.run.send.budget import CostBudget
from evalrun.run.send.retry import Action, Decision, classify, retry_wait
from evalrun.run.send.slots import Slots
from evalrun.run.send.stops import Interrupted, Stops

logger = logging.getLogger(__name__)


class Parking(Protocol):
    """Told when a request falls asleep between attempts and wakes (the pool's crew)."""

    def park(self) -> None: ...

    def unpark(self) -> None: ...


class Sender(Protocol):
    """What the retry loop needs of a provider's client (`client.ProviderClient`)."""

    async def send(self, spec: RequestSpec) -> Sent: ...

    def note_failure(self, url: str) -> None: ...

    def note_success(self, url: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Lane:
    """One provider × model: its requests (a lazy iterator), limiter and client, and the
    concurrency slots it shares with the provider's other lanes."""

    provider: str
    model: str
    specs: Iterator[RequestSpec]
    client: Sender
    limiter: ModelLimiter
    slots: Slots
    workers: int


class Admission:
    """The run's budgets: the cost budget's room is held before a request's first send (in turn,
    holding no slot), --max-requests is counted at the first send (so "sent" is exact)."""

    def __init__(self, max_requests: int | None = None, budget: CostBudget | None = None) -> None:
        self.max_requests = max_requests
        self.budget = budget
        self.admitted = 0

    async def hold(self, spec: RequestSpec) -> str | None:
        """None once the cost budget holds room for the request; else why the run must stop."""
        budget = self.budget
        if budget is None:
            return None
        cell, prompt, output = spec.cell, spec.est_prompt_tokens, output_budget(spec.params)
        return None if await budget.hold(spec.request_id, cell.cell_id, cell.model, prompt, output) else budget.reason

    def admit(self) -> str | None:
        """None when the request may go; else why the run must stop sending."""
        if self.max_requests is not None and self.admitted >= self.max_requests:
            return f"budget: --max-requests {self.max_requests} reached"
        self.admitted += 1
        return None

    def release(self, spec: RequestSpec) -> None:
        """An admitted request that will get no row (a stop cut its retries short)."""
        if self.budget is not None:
            self.budget.release(spec.request_id)


@dataclass
class _Progress:
    """What one request's attempts have cost so far."""

    started: float  # unix time of the first attempt
    t0: float  # clock time, for max_total_s
    attempts: int = 0
    waited: float = 0.0
    held: bool = False  # the cost budget holds room for it
    admitted: bool = False


class Attempts:
    """Runs requests to their end: a Result, or None when a stop interrupted them (no row)."""

    def __init__(
        self,
        retry: RetryConfig,
        stops: Stops,
        admission: Admission,
        key_env: dict[str, str | None],
        clock: Clock = MONOTONIC,
    ) -> None:
        self.retry = retry
        self.stops = stops
        self.admission = admission
        self.key_env = key_env
        self.clock = clock
        self.in_flight = 0  # requests on the wire, nothing else

    async def run(self, spec: RequestSpec, lane: Lane, parking: Parking | None = None) -> Result | None:
        st = _Progress(time.time(), self.clock.now())
        try:
            return await self._loop(spec, lane, st, parking)
        except Interrupted:
            if st.held:
                self.admission.release(spec)
            return None

    async def _loop(self, spec: RequestSpec, lane: Lane, st: _Progress, parking: Parking | None) -> Result | None:
        stops, limiter, provider = self.stops, lane.limiter, lane.provider
        est = spec.est_prompt_tokens + output_budget(spec.params)
        retry_types: list[str] = []
        holding = False  # a retry without a wait may keep its slot (see below)
        while True:
            if not st.held:  # the cost budget's wait comes before the slots: it holds none of them
                with stops.interruptible(provider):
                    why = await self.admission.hold(spec)
                if why is not None:
                    stops.stop_budget(why)
                    raise Interrupted
                st.held = True
            if not holding:
                # the common case takes both slots at once, without a coroutine or a wait
                rated = limiter.try_acquire(est)
                if not (rated and lane.slots.try_acquire()):
                    with stops.interruptible(provider):
                        if not rated:
                            st.waited += await limiter.acquire(est)
                        await lane.slots.acquire(retry=st.attempts > 0)
                if limiter.blocked():  # the server's window filled while we waited for the slot
                    lane.slots.release()
                    continue
            holding = False
            try:
                dead = stops.dead_models.get((provider, spec.cell.model))
                if dead is not None:  # found out while this request waited: it is not sent
                    return not_sent(spec, dead)
                if not st.admitted:
                    why = self.admission.admit()
                    if why is not None:
                        stops.stop_budget(why)
                        raise Interrupted
                    st.admitted = True
                if stops.halted(provider):
                    raise Interrupted
                self.in_flight += 1
                ticket = limiter.sent()  # its answer is attributed to now, when it was sent
                try:
                    sent = await lane.client.send(spec)
                finally:
                    self.in_flight -= 1
                st.attempts += 1
                if sent.error is not None:
                    exc = sent.error
                    decision = classify(exc)
                    self._after_failure(lane, spec, sent, exc, decision, ticket)
                    wait = self._next_wait(decision, st)
                    # an immediate retry keeps its slot when its rate slot is free now too (the rate
                    # slot still comes first, and nothing else could have used the slot meanwhile)
                    holding = wait == 0 and not stops.halted(provider) and limiter.try_acquire(est)
            finally:
                if not holding:
                    lane.slots.release()
            if sent.error is None:
                assert sent.completion is not None
                lane.client.note_success(sent.url)
                limiter.on_success(sent.latency_s, sent.rate, ticket)
                limiter.settle(est, sent.completion.usage.total_tokens)
                return _ended(spec, st, sent, retry_types)
            if wait is None:
                return _ended(spec, st, sent, retry_types)
            retry_types.append(exc.error_type)
            logger.info(
                "retry: request %s got %s on attempt %d/%d from %s; next attempt in %.2f s",
                spec.request_id,
                exc.error_type,
                st.attempts,
                self.retry.max_attempts,
                sent.url,
                wait,
            )
            if wait > 0:
                if parking is not None:
                    parking.park()
                try:
                    with stops.interruptible(provider):
                        await self.clock.sleep(wait)
                finally:
                    if parking is not None:
                        parking.unpark()

    def _next_wait(self, decision: Decision, st: _Progress) -> float | None:
        """The wait before the next attempt, or None when this failure is the request's last:
        not retryable, out of attempts, or the wait would pass the request's time budget."""
        r = self.retry
        if decision.action is not Action.RETRY or st.attempts >= r.max_attempts:
            return None
        if decision.max_attempts is not None and st.attempts >= decision.max_attempts:
            return None
        wait = retry_wait(decision, st.attempts, r.backoff_initial_s, r.backoff_max_s, r.retry_after_max_s)
        if self.clock.now() - st.t0 + wait > r.max_total_s:
            return None
        return wait

    def _after_failure(
        self, lane: Lane, spec: RequestSpec, sent: Sent, exc: RequestError, decision: Decision, ticket: Send
    ) -> None:
        """What a failed attempt means beyond its own request."""
        if decision.rate_limited:
            ra = decision.wait_s
            ra = min(ra, self.retry.retry_after_max_s) if ra is not None else None
            lane.limiter.on_rate_limited(ra, sent.rate, ticket)
        if decision.counts_for_fallback:
            lane.client.note_failure(sent.url)
        if decision.action is Action.STOP_PROVIDER:
            env = self.key_env.get(lane.provider)
            if decision.reason == "insufficient_quota":
                why = f"credits exhausted on provider {lane.provider!r} (HTTP {exc.status_code}): {exc}"
            else:
                key = f"the key in ${env}" if env else "the request (no API key configured)"
                why = f"provider {lane.provider!r} rejected {key} (HTTP {exc.status_code}): {exc}"
            if self.stops.stop_provider(lane.provider, why):
                logger.info("%s — no more requests will be sent to it", why)
        elif decision.action is Action.FAIL_MODEL:
            self.stops.dead_models.setdefault(
                (lane.provider, spec.cell.model),
                f"model {spec.cell.model!r} was not found on provider {lane.provider!r} "
                f"(HTTP 404: {getattr(exc, 'message', exc)})",
            )


def _ended(spec: RequestSpec, st: _Progress, sent: Sent, retry_types: list[str]) -> Result:
    """How a request ended: the last attempt's answer, or its error, with what the attempts cost."""
    exc = sent.error
    return Result(
        spec,
        st.started,
        sent.latency_s,
        st.attempts,
        sent.url,
        completion=sent.completion,
        http_status=None if exc is None else exc.status_code,
        error_type=None if exc is None else exc.error_type,
        error_message=None if exc is None else str(exc),
        limiter_wait_s=st.waited,
        retry_types=retry_types,
        partial=None if exc is None else exc.partial,
    )


def not_sent(spec: RequestSpec, why: str) -> Result:
    """The row of a request to a model the provider said does not exist (sent nowhere)."""
    return Result(
        spec, time.time(), None, 0, None, http_status=404, error_type="not_found", error_message=f"not sent: {why}"
    )
