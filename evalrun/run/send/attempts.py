"""One request, start to end: the one retry loop.

    attempt:
        rate slot       limiter.acquire          (waiting: interruptible, holds nothing)
        concurrency     the provider's slots     (waiting: interruptible)
        admission       --max-requests / --max-cost, at the first send only (the cost budget's
                        room is held before the rate slot, waiting in turn, holding nothing)
        send            client.send → Sent       (on the wire: counted in `in_flight`)
        answer          success → Result; else classify once → side effects
    after a failure: tenacity's retry / stop / wait (`Attempts._policy`), then the next attempt

The rate slot comes before the concurrency slot, so a lane that waits on its rate (or on a
server's full window) never holds a connection another lane could use. Attempts are bounded by
`max_attempts` (and a tighter per-kind cap from `classify`) and by `max_total_s` from the
request's start. Every retry is logged at -v with its error type, attempt, wait and URL (never
the key: it travels in a header only). The first attempt goes without tenacity: its loop would
cost about a tenth of a request's CPU against a fast server.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt
from tenacity.stop import stop_base

from evalrun.config.models import RetryConfig
from evalrun.config.params import output_budget
from evalrun.run.http.client import Sent
from evalrun.run.http.errors import RequestError
from evalrun.run.rate.adaptive import Send
from evalrun.run.rate.limiter import MONOTONIC, Clock, ModelLimiter
from evalrun.run.records.records import RequestSpec, Result
from evalrun.run.send.budget import CostBudget
from evalrun.run.send.retry import Action, Decision, StopOnHalt, StopPastDeadline, classify, retry_wait
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


@dataclass(slots=True)
class _Progress:
    """One request on its way through its attempts: what they cost so far, and what it holds."""

    spec: RequestSpec
    lane: Lane
    parking: Parking | None
    est: int  # tokens the rate slot is taken for
    started: float  # unix time of the first attempt
    t0: float  # clock time, for max_total_s
    attempts: int = 0
    waited: float = 0.0
    held: bool = False  # the cost budget holds room for it
    admitted: bool = False
    slot: bool = False  # it holds one of the provider's concurrency slots
    kept: bool = False  # an immediate retry kept both its slots (rate and concurrency) for its next send
    retry_types: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Failed:
    """A failed attempt and the one decision `classify` made about it."""

    sent: Sent
    decision: Decision


def _retryable(outcome: Result | _Failed) -> bool:
    """tenacity's `retry`: only a failure `classify` calls transient is sent again."""
    return isinstance(outcome, _Failed) and outcome.decision.action is Action.RETRY


def _failure(rs: RetryCallState) -> _Failed:
    """The failed attempt tenacity is deciding about (stop, wait and before_sleep see only these)."""
    failed = rs.outcome.result() if rs.outcome is not None else None
    assert isinstance(failed, _Failed)
    return failed


class _StopAtKindCap(stop_base):
    """A failure kind's own, tighter cap (`Decision.max_attempts`: a malformed 200, 3 attempts)."""

    def __call__(self, rs: RetryCallState) -> bool:
        cap = _failure(rs).decision.max_attempts
        return cap is not None and rs.attempt_number >= cap


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
        est = spec.est_prompt_tokens + output_budget(spec.params)
        st = _Progress(spec, lane, parking, est, time.time(), self.clock.now())
        try:
            outcome = await self._attempt(st)
            if isinstance(outcome, _Failed):
                outcome = await self._loop(st, outcome)
        except Interrupted:
            if st.held:
                self.admission.release(spec)
            return None
        finally:
            if st.slot:
                st.slot = False
                lane.slots.release()
        return outcome if isinstance(outcome, Result) else _ended(st, outcome.sent)

    async def _loop(self, st: _Progress, failed: _Failed) -> Result | _Failed:
        """After a failed first attempt, tenacity's loop: its attempt 1 is the one already made."""
        made: list[Result | _Failed] = [failed]

        async def attempt() -> Result | _Failed:
            return made.pop() if made else await self._attempt(st)

        return await self._policy(st)(attempt)

    def _policy(self, st: _Progress) -> AsyncRetrying:
        """The retry policy, in one place.

        retry         a failure `classify` calls transient (RETRY); anything else ends the request
        stop          out of attempts (overall or for the failure's kind) or past `max_total_s`: the
                      request ends with its last error; the run's stop: it ends with no row
        wait          Retry-After / retry-after-ms (capped), else jittered backoff (`retry_wait`); the
                      rate controller's decisions are waited for at the next attempt's rate slot
        before_sleep  the failure's type for the row, and the -v log line
        sleep         the slots go back (or are kept), then the wait, interruptible"""
        r = self.retry
        return AsyncRetrying(
            retry=retry_if_result(_retryable),
            stop=(
                stop_after_attempt(r.max_attempts)
                | _StopAtKindCap()
                | StopPastDeadline(self.clock.now, st.t0, r.max_total_s)
                | StopOnHalt(self.stops, st.lane.provider)
            ),
            wait=self._wait,
            before_sleep=functools.partial(self._note_retry, st),
            sleep=functools.partial(self._between, st),
            retry_error_callback=_failure,  # a stop ends the request with its last failure
        )

    def _wait(self, rs: RetryCallState) -> float:
        r = self.retry
        # `retry_wait` is looked up at each call: the tests' autouse fixture makes it zero
        return retry_wait(
            _failure(rs).decision, rs.attempt_number, r.backoff_initial_s, r.backoff_max_s, r.retry_after_max_s
        )

    def _note_retry(self, st: _Progress, rs: RetryCallState) -> None:
        sent = _failure(rs).sent
        assert sent.error is not None
        st.retry_types.append(sent.error.error_type)
        logger.info(
            "retry: request %s got %s on attempt %d/%d from %s; next attempt in %.2f s",
            st.spec.request_id,
            sent.error.error_type,
            rs.attempt_number,
            self.retry.max_attempts,
            sent.url,
            rs.upcoming_sleep,
        )

    async def _between(self, st: _Progress, wait: float) -> None:
        """Between two attempts. An immediate retry keeps its slots when its rate slot is free now
        too (the rate slot still comes first, and nothing else could have used the concurrency slot
        meanwhile); otherwise the concurrency slot goes back before the wait, which holds nothing."""
        lane = st.lane
        st.kept = wait == 0 and not self.stops.halted(lane.provider) and lane.limiter.try_acquire(st.est)
        if not st.kept:
            st.slot = False
            lane.slots.release()
        if wait <= 0:
            return
        if st.parking is not None:
            st.parking.park()
        try:
            with self.stops.interruptible(lane.provider):
                await self.clock.sleep(wait)
        finally:
            if st.parking is not None:
                st.parking.unpark()

    async def _attempt(self, st: _Progress) -> Result | _Failed:
        """One attempt: the budget's room (once), the rate and concurrency slots (unless an immediate
        retry kept them), admission (once), the send. A success ends as its Result; a failure is
        classified once and its side effects applied — its concurrency slot is still held (`_between`
        or the end of `run` lets it go)."""
        spec, lane, stops, limiter = st.spec, st.lane, self.stops, st.lane.limiter
        if not st.held:  # the cost budget's wait comes before the slots: it holds none of them
            with stops.interruptible(lane.provider):
                why = await self.admission.hold(spec)
            if why is not None:
                stops.stop_budget(why)
                raise Interrupted
            st.held = True
        if not st.kept:
            # the common case takes both slots at once, without a coroutine or a wait (a rate slot
            # free now means the server's window is not full now)
            rated = limiter.try_acquire(st.est)
            if not (rated and lane.slots.try_acquire()):
                await self._take_slots(st, rated)
            st.slot = True
        st.kept = False
        dead = stops.dead_models.get((lane.provider, spec.cell.model))
        if dead is not None:  # found out while this request waited: it is not sent
            return not_sent(spec, dead)
        if not st.admitted:
            why = self.admission.admit()
            if why is not None:
                stops.stop_budget(why)
                raise Interrupted
            st.admitted = True
        if stops.halted(lane.provider):
            raise Interrupted
        self.in_flight += 1
        ticket = limiter.sent()  # its answer is attributed to now, when it was sent
        try:
            sent = await lane.client.send(spec)
        finally:
            self.in_flight -= 1
        st.attempts += 1
        if sent.error is None:
            assert sent.completion is not None
            lane.client.note_success(sent.url)
            limiter.on_success(sent.latency_s, sent.rate, ticket)
            limiter.settle(st.est, sent.completion.usage.total_tokens)
            return _ended(st, sent)
        decision = classify(sent.error)
        self._after_failure(lane, spec, sent, sent.error, decision, ticket)
        return _Failed(sent, decision)

    async def _take_slots(self, st: _Progress, rated: bool) -> None:
        """Wait for the rate slot (unless `rated`), then for a concurrency slot: interruptible, and
        the first wait holds nothing. Both again if the server's window filled meanwhile."""
        lane, limiter = st.lane, st.lane.limiter
        while True:
            with self.stops.interruptible(lane.provider):
                if not rated:
                    st.waited += await limiter.acquire(st.est)
                await lane.slots.acquire(retry=st.attempts > 0)
            if not limiter.blocked():
                return
            lane.slots.release()  # the rate slot taken before the window filled is void
            rated = limiter.try_acquire(st.est)
            if rated and lane.slots.try_acquire():
                return

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


def _ended(st: _Progress, sent: Sent) -> Result:
    """How a request ended: the last attempt's answer, or its error, with what the attempts cost."""
    exc = sent.error
    return Result(
        st.spec,
        st.started,
        sent.latency_s,
        st.attempts,
        sent.url,
        completion=sent.completion,
        http_status=None if exc is None else exc.status_code,
        error_type=None if exc is None else exc.error_type,
        error_message=None if exc is None else str(exc),
        limiter_wait_s=st.waited,
        retry_types=st.retry_types,
        partial=None if exc is None else exc.partial,
    )


def not_sent(spec: RequestSpec, why: str) -> Result:
    """The row of a request to a model the provider said does not exist (sent nowhere)."""
    return Result(
        spec, time.time(), None, 0, None, http_status=404, error_type="not_found", error_message=f"not sent: {why}"
    )
