"""Rate control per provider × model: even pacing, what the server says, and AIMD by episodes.

Time comes from a `Clock` (monotonic seconds + sleep), so every rule below has a unit test on a
fake clock. The pool takes a rate slot here *before* it takes a concurrency slot: a lane that
waits on its rate never holds a connection another lane could use.

Pacing (GCRA without burst credit). A limit of R requests a minute spaces sends 60/R·SPACING_MARGIN
apart: waiters queue in order, and the one at the head sleeps until its slot and books it only
then, at the pace in force at that moment — so a decrease or a block applies at once to everyone
waiting, and sends are evenly spaced, never a burst that a server's window would count against us. Token limits work
the same way with the request's estimated tokens (prompt + max output), corrected by `settle`
once the usage is known. The pace in force is the lowest of: the configured `rpm`/`tpm`, the
limits the server announces (`x-ratelimit-limit-requests` / `-tokens`, per minute as OpenAI
documents them), and the adaptive rate below. With none of them the lane is unpaced and only
`max_concurrency` bounds it.

What a 429 means — decided once per 429 (`on_rate_limited`), from the evidence at hand:

* window full: the server's window is exhausted. Evidence, strongest first:
  `x-ratelimit-remaining-requests` / `-tokens` is 0; or, without such headers, 429s dominate what
  this lane heard lately: the last WINDOW_RUN answers were all 429s *and* 429s are at least
  WINDOW_SHARE of the answers within the last max(Retry-After, MIN_EPISODE_S) — a full window
  rejects everything until it resets, while sporadic 429s come between successes (a run of 6
  at a 30 % sporadic rate has odds of 0.07 %); or the lane is probing above a rate
  it already learned and a 429 answers the probe. The whole lane then waits until the window
  frees (`x-ratelimit-reset-*`, `retry-after-ms`, `Retry-After`, capped) and the rate decreases.
  A 200 that says `remaining: 0` blocks the lane the same way, before any 429.
* sporadic: anything else (`remaining` > 0, or 429s scattered among successes, which is what an
  overloaded upstream behind a gateway produces). Only that request waits its Retry-After (the
  retry loop does that); the lane's rate is untouched, so sporadic 429s at any rate cost their
  own retries and nothing else.

AIMD with episodes. A decrease sets the adaptive rate to DECREASE × the rate the server accepted
over the last max(Retry-After, MIN_EPISODE_S) seconds (successes counted — when we over-send, that
is the server's limit) and remembers that accepted rate as the lane's ceiling. It opens an
episode lasting max(Retry-After, recent latency, MIN_EPISODE_S): window-full 429s inside it are
answers to requests sent before the decrease, so they do not decrease again (at most one
decrease per episode). Each episode that ends without one raises the rate by INCREASE × ceiling
(additive), up to the ceiling; after PROBE_AFTER clean episodes at the ceiling, the ceiling
itself is raised by INCREASE (the server may have raised its limit) — a 429 during such a probe
counts as window full and brings the rate back down.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Protocol

from evalrun.run.ratelimits import RateHeaders

# ---- every number in one place -------------------------------------------------------------
# Sends are spaced a hair wider than 60/R so that network jitter can never put R+1 of them
# in one 60 s window on the server's clock.
SPACING_MARGIN = 1.002
DECREASE = 0.9  # multiplicative decrease, of the accepted rate, once per episode
INCREASE = 0.05  # additive increase per clean episode, as a fraction of the ceiling
PROBE_AFTER = 20  # clean episodes at the ceiling before probing above it
MIN_EPISODE_S = 1.0  # shortest episode, and the shortest span an accepted rate is measured over
WINDOW_RUN = 6  # 429s in a row, the latest answers, before "window full" without headers
WINDOW_SHARE = 0.5  # share of 429s among recent answers that means "window full"
MIN_RATE = 1.0 / 60  # the adaptive rate never falls below 1 request a minute
ANSWERS_KEPT = 1024  # recent answers remembered per lane (bounded memory)
LATENCY_EWMA = 0.2


class Clock(Protocol):
    """Monotonic seconds and a sleep; the real one is `MONOTONIC`, tests pass a fake one."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The event loop's time and sleep."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


MONOTONIC = MonotonicClock()


def _finer(retry_after: float | None, headers: RateHeaders | None) -> float | None:
    """The shorter of the caller's Retry-After (already capped at retry_after_max_s) and the
    server's retry-after-ms: never longer than the cap, never coarser than the header."""
    ms = headers.retry_after_ms if headers is not None else None
    if retry_after is None or ms is None:
        return ms if retry_after is None else retry_after
    return min(retry_after, ms)


class ModelLimiter:
    """Pacing and adaptive control for one provider × model (a "lane")."""

    def __init__(
        self, name: str, rpm: int | None, tpm: int | None, clock: Clock = MONOTONIC, block_cap_s: float = 120.0
    ) -> None:
        self.name = name
        self.rpm = rpm  # configured
        self.tpm = tpm
        self.clock = clock
        self.block_cap_s = block_cap_s
        self.header_rpm: int | None = None  # announced by the server
        self.header_tpm: int | None = None
        self.adaptive: float | None = None  # requests/s, set by the first window-full 429
        self.ceiling: float | None = None  # the accepted rate at the last decrease
        self.decreases = 0
        self.blocked_until = 0.0
        self.waiting = 0  # requests waiting here right now
        self._episode_end = 0.0  # the episode of the last decrease
        self._next_increase = 0.0
        self._clean_at_ceiling = 0
        self._probing = False
        self._latency: float | None = None
        self._last_request = -float("inf")
        self._next_token = 0.0
        self._queue = asyncio.Lock()  # FIFO: the waiter at its head sleeps until the slot
        # (time, was_429) of recent answers, and times of recent successes
        self._answers: collections.deque[tuple[float, bool]] = collections.deque(maxlen=ANSWERS_KEPT)

    # ---- the pace ----------------------------------------------------------------------------

    def request_rate(self) -> float | None:
        """Requests per second in force, or None (unpaced)."""
        rates = [r / 60.0 for r in (self.rpm, self.header_rpm) if r]
        if self.adaptive is not None:
            rates.append(self.adaptive)
        return min(rates) if rates else None

    def token_rate(self) -> float | None:
        rates = [r / 60.0 for r in (self.tpm, self.header_tpm) if r]
        if rates and self.adaptive is not None and self.ceiling:
            rates = [min(rates) * min(1.0, self.adaptive / self.ceiling)]  # slowed with the requests
        return min(rates) if rates else None

    def _ready_at(self) -> float:
        """When the next request may go, at the pace in force now (not booked)."""
        at = self.blocked_until
        rate = self.request_rate()
        if rate is not None:
            at = max(at, self._last_request + SPACING_MARGIN / rate)
        if self.token_rate() is not None:
            at = max(at, self._next_token)
        return at

    def _take(self, at: float, est_tokens: int) -> None:
        self._last_request = at
        tok_rate = self.token_rate()
        if tok_rate is not None:
            self._next_token = max(at, self._next_token) + est_tokens * SPACING_MARGIN / tok_rate

    def reserve(self, est_tokens: int) -> float:
        """Book the next slot, however far; returns its clock time (for tests and planning —
        the pool uses `acquire`, which books only when the slot has come)."""
        at = max(self.clock.now(), self._ready_at())
        self._take(at, est_tokens)
        return at

    def blocked(self) -> bool:
        """Whether the server's window is full right now (a rate slot taken before that is void)."""
        return self.blocked_until > self.clock.now()

    def try_acquire(self, est_tokens: int) -> bool:
        """Take a slot if one is free right now (nobody queued, pace allows); never waits."""
        now = self.clock.now()
        if not self._queue.locked() and self._ready_at() <= now:
            self._take(now, est_tokens)
            return True
        return False

    async def acquire(self, est_tokens: int) -> float:
        """Wait for a slot; returns the seconds waited. Waiters queue in order and the head one
        books its slot only when it comes, so a decrease or a block that happens meanwhile
        applies to every waiter at once. Cancelling the calling task interrupts the wait —
        that is how stops reach it."""
        if self.try_acquire(est_tokens):
            return 0.0
        t0 = now = self.clock.now()
        self.waiting += 1
        try:
            async with self._queue:
                while (at := self._ready_at()) > (now := self.clock.now()):
                    await self.clock.sleep(at - now)
                self._take(now, est_tokens)
        finally:
            self.waiting -= 1
        return now - t0

    def settle(self, est_tokens: int, actual_tokens: int | None) -> None:
        """Correct the token reservation with what the request really used."""
        rate = self.token_rate()
        if rate and actual_tokens is not None and actual_tokens != est_tokens:
            self._next_token += (actual_tokens - est_tokens) * SPACING_MARGIN / rate

    # ---- what the server said ------------------------------------------------------------------

    def _learn(self, headers: RateHeaders | None, retry_after: float | None) -> bool:
        """Take in the server's headers; True when they say the window is exhausted (lane blocked)."""
        if headers is None:
            return False
        if headers.limit_requests:
            self.header_rpm = headers.limit_requests
        if headers.limit_tokens:
            self.header_tpm = headers.limit_tokens
        if not headers.window_full:
            return False
        wait = headers.reset_s()
        if wait is None:
            wait = _finer(retry_after, headers)
        self._block(wait if wait is not None else MIN_EPISODE_S)
        return True

    def _block(self, seconds: float) -> None:
        until = self.clock.now() + min(seconds, self.block_cap_s)
        if until > self.blocked_until:
            self.blocked_until = until

    def on_success(self, latency_s: float | None = None, headers: RateHeaders | None = None) -> None:
        now = self.clock.now()
        self._answers.append((now, False))
        if latency_s is not None:
            self._latency = (
                latency_s if self._latency is None else self._latency + LATENCY_EWMA * (latency_s - self._latency)
            )
        self._learn(headers, None)
        if self.adaptive is not None and now >= self._next_increase:
            self._clean_episode(now)

    def _clean_episode(self, now: float) -> None:
        """An episode ended without a window-full 429: additive increase, then probing."""
        assert self.adaptive is not None and self.ceiling is not None
        self._next_increase = now + self._episode_len(None)
        if self.adaptive < self.ceiling:
            self.adaptive = min(self.ceiling, self.adaptive + INCREASE * self.ceiling)
            return
        self._clean_at_ceiling += 1
        if self._clean_at_ceiling >= PROBE_AFTER:
            self._clean_at_ceiling = 0
            self._probing = True
            self.adaptive = self.ceiling * (1 + INCREASE)

    def on_rate_limited(self, retry_after: float | None = None, headers: RateHeaders | None = None) -> bool:
        """A 429. Returns True when it means the server's window is full (the lane was slowed
        and blocked), False when it was sporadic (only that request waits)."""
        now = self.clock.now()
        self._answers.append((now, True))
        retry_after = _finer(retry_after, headers)
        if self._learn(headers, retry_after):
            full = True
        elif headers is not None and headers.window_open:
            return False
        else:
            full = self._probing or self._dominated(now, retry_after)
            if full:
                self._block(retry_after if retry_after is not None else MIN_EPISODE_S)
        if full and now >= self._episode_end:
            self._decrease(now, retry_after)
        return full

    def _dominated(self, now: float, retry_after: float | None) -> bool:
        span = max(retry_after or 0.0, MIN_EPISODE_S)
        n = n429 = run = 0
        for t, was_429 in reversed(self._answers):
            if t < now - span:
                break
            n += 1
            n429 += was_429
            if run == n - 1 and was_429:
                run += 1
        return run >= WINDOW_RUN and n429 >= WINDOW_SHARE * n

    def _decrease(self, now: float, retry_after: float | None) -> None:
        span = max(retry_after or 0.0, MIN_EPISODE_S)
        accepted = sum(1 for t, was_429 in self._answers if not was_429 and t >= now - span) / span
        if self._probing and self.ceiling is not None:
            accepted = max(accepted, self.ceiling)  # the probe failed: the old ceiling held
        if accepted <= 0:  # nothing got through lately: what we offered is the best guess
            accepted = sum(1 for t, _ in self._answers if t >= now - span) / span * DECREASE
        current = self.request_rate()
        base = accepted if current is None else min(current, accepted)
        self.ceiling = max(MIN_RATE, accepted)
        self.adaptive = max(MIN_RATE, base * DECREASE)
        self._probing = False
        self._clean_at_ceiling = 0
        self.decreases += 1
        self._episode_end = self._next_increase = now + self._episode_len(retry_after)

    def _episode_len(self, retry_after: float | None) -> float:
        return max(retry_after or 0.0, self._latency or 0.0, MIN_EPISODE_S)

    # ---- for the progress line -----------------------------------------------------------------

    def describe(self) -> str | None:
        """What this lane is doing to its pace right now, in words; None when nothing."""
        now = self.clock.now()
        if self.blocked_until > now:
            return f"{self.name}: server window full, resumes in {self.blocked_until - now:.1f} s"
        rate = self.request_rate()
        if self.adaptive is not None and rate == self.adaptive:
            return f"{self.name}: slowed to {self.adaptive * 60:,.0f} rpm after 429s"
        if not self.waiting:
            return None
        limits = []
        for kind, mine, theirs in (("rpm", self.rpm, self.header_rpm), ("tpm", self.tpm, self.header_tpm)):
            if mine and (not theirs or mine <= theirs):
                limits.append(f"{kind} {mine:,}")
            elif theirs:
                limits.append(f"{kind} {theirs:,} (server's x-ratelimit headers)")
        return f"{self.name}: {self.waiting} waiting on {', '.join(limits) or 'the pace'}"


class Limiters:
    """One ModelLimiter per provider × model, created on first use."""

    def __init__(
        self, limits: dict[str, tuple[int | None, int | None]], clock: Clock = MONOTONIC, block_cap_s: float = 120.0
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._block_cap_s = block_cap_s
        self._by_key: dict[tuple[str, str], ModelLimiter] = {}

    def get(self, provider: str, model: str) -> ModelLimiter:
        key = (provider, model)
        lim = self._by_key.get(key)
        if lim is None:
            rpm, tpm = self._limits.get(provider, (None, None))
            name = model if len(self._limits) <= 1 else f"{provider}/{model}"
            lim = self._by_key[key] = ModelLimiter(name, rpm, tpm, self._clock, self._block_cap_s)
        return lim

    def describe(self) -> list[str]:
        return [d for lim in self._by_key.values() if (d := lim.describe()) is not None]
