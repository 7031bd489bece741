"""What to do after a failed attempt: one pure `classify` function, the wait before the next
attempt (Retry-After is parsed with the other rate headers, `rate/ratelimits.py`), and the stops
of the retry policy that are not tenacity's own. The one retry loop that uses them is
`attempts.py` (its policy, on tenacity, is `Attempts._policy`).

The wait after failed attempt k (k = 1, 2, …):

* the server's Retry-After (`retry-after-ms` when sent, else seconds or an HTTP date) when it
  gave one, cut to `retry_after_max_s`. A Retry-After longer than that cap is not honoured in
  full: the next attempt goes at the cap, and the request's time budget (`max_total_s`) still
  applies — if the wait would take the request past it, the request ends at once with its
  last error (recorded; `--resume --retry-errors` sends it again later). So a server asking
  for an hour (a daily quota, typically) costs one capped wait, not an hour per request.
* otherwise capped exponential backoff, step = min(backoff_max_s, backoff_initial_s · 2^(k−1)),
  jittered within [JITTER_LOW·step, step] as openai-python does: the jitter spreads retries
  apart, and with JITTER_LOW > 0.5 each wait stays longer than the previous one until the cap
  (full jitter can make consecutive waits shrink, which servers read as retrying at a fixed
  interval).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryCallState
from tenacity.stop import stop_base

from evalrun.run.http.errors import (
    APIStatusError,
    BadResponse,
    RequestError,
    TransportError,
    is_quota_error,
)
from evalrun.run.send.stops import Interrupted, Stops

# ---- every number in one place -------------------------------------------------------------
BAD_RESPONSE_MAX_ATTEMPTS = 3  # a malformed 200 is usually transient, but don't pay for it forever
JITTER_LOW = 0.75  # backoff is drawn uniformly from [JITTER_LOW·step, step]
SERVICE_UNAVAILABLE_DEFAULT_S = 5.0  # a 503 without Retry-After


class Action(enum.Enum):
    RETRY = "retry"  # transient: wait, then send the same request again
    FAIL = "fail"  # this request is wrong; record the error, go on with the others
    FAIL_MODEL = "fail_model"  # the model does not exist: fail its remaining requests unsent
    STOP_PROVIDER = "stop_provider"  # key or credits: nothing more can succeed on this provider


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str  # a short stable name, also the error_type column
    wait_s: float | None = None  # what the server asked for (Retry-After), uncapped
    max_attempts: int | None = None  # a tighter cap than the configured one
    rate_limited: bool = False  # a 429: the limiter decides whether the server's window is full
    counts_for_fallback: bool = False  # a sign the base URL is unhealthy


def classify(exc: BaseException) -> Decision:
    """The single place that maps a failed attempt to what happens next."""
    if isinstance(exc, APIStatusError):
        status = exc.status_code or 0  # always set on an APIStatusError
        if is_quota_error(status, exc.code, exc.kind, exc.body):
            return Decision(Action.STOP_PROVIDER, "insufficient_quota")
        if status == 429:
            return Decision(Action.RETRY, "rate_limit", exc.retry_after, rate_limited=True)
        if status in (401, 403):
            return Decision(Action.STOP_PROVIDER, exc.error_type)
        if status == 404:
            return Decision(Action.FAIL_MODEL, "not_found")
        if status == 408:
            return Decision(Action.RETRY, "request_timeout", exc.retry_after)
        if status >= 500:
            wait = exc.retry_after
            if status == 503 and wait is None:
                wait = SERVICE_UNAVAILABLE_DEFAULT_S
            return Decision(Action.RETRY, "server_error", wait, counts_for_fallback=True)
        return Decision(Action.FAIL, exc.error_type)  # 400, 413, 422 and the rest of 4xx
    if isinstance(exc, BadResponse):
        return Decision(Action.RETRY, exc.error_type, max_attempts=BAD_RESPONSE_MAX_ATTEMPTS)
    if isinstance(exc, TransportError):
        return Decision(Action.RETRY, exc.error_type, counts_for_fallback=True)
    if isinstance(exc, RequestError):
        return Decision(Action.FAIL, exc.error_type)
    return Decision(Action.FAIL, "internal_error")


def backoff(attempt: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with jitter, for the wait after failed attempt number `attempt`."""
    ceiling = min(maximum, initial * 2.0 ** max(0, attempt - 1))
    r = rng.random() if rng is not None else random.random()
    return ceiling * (JITTER_LOW + (1 - JITTER_LOW) * r)


def retry_wait(decision: Decision, attempt: int, initial: float, maximum: float, retry_after_cap: float) -> float:
    """The wait before the next attempt: the server's Retry-After (capped), else backoff."""
    if decision.wait_s is not None:
        return min(decision.wait_s, retry_after_cap)
    return backoff(attempt, initial, maximum)


class StopPastDeadline(stop_base):
    """The next attempt would start past `max_total_s`: tenacity's `stop_before_delay`, on the
    run's clock (tenacity's reads time.monotonic, which the tests' fake clock cannot move)."""

    def __init__(self, now: Callable[[], float], t0: float, max_total_s: float) -> None:
        self.now, self.t0, self.max_total_s = now, t0, max_total_s

    def __call__(self, rs: RetryCallState) -> bool:
        return self.now() - self.t0 + rs.upcoming_sleep > self.max_total_s


class StopOnHalt(stop_base):
    """The run (or the provider) stopped: the request ends unanswered, with no row (`--resume` sends
    it again), so this stop raises Interrupted. Asked last: a request out of attempts or time keeps
    its row."""

    def __init__(self, stops: Stops, provider: str) -> None:
        self.stops, self.provider = stops, provider

    def __call__(self, rs: RetryCallState) -> bool:
        if self.stops.halted(self.provider):
            raise Interrupted
        return False
