"""Client-side pacing per provider × model: requests per minute and tokens per minute.

Each limit is a reservation schedule (GCRA): a request books the next free slot and sleeps
until it, so sends are evenly spaced — never a burst that a server's sliding window would
count against us. Token reservations use an estimate (prompt size + max output) and are
corrected once the real usage is known. After a 429 the rate drops (multiplicatively) and
recovers a little with every success; a Retry-After blocks the whole provider × model.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

# Sends are spaced a hair wider than 60/R so that network jitter can never put R+1 of them
# in one 60 s window on the server's clock.
SPACING_MARGIN = 1.002
DECREASE_ON_429 = 0.7
RECOVER_PER_SUCCESS = 1.02
MIN_FACTOR = 0.05
OBSERVED_WINDOW = 256  # sends remembered to estimate the current rate when no rpm is set
MIN_OBSERVED = 8


@dataclass
class LimiterState:
    """What a limiter is waiting on right now, for the progress display."""

    waiting_rpm: int = 0
    waiting_tpm: int = 0
    waiting_retry_after: int = 0
    rate_limited: int = 0  # 429s seen


class ModelLimiter:
    """RPM and TPM pacing for one provider × model."""

    def __init__(self, rpm: int | None, tpm: int | None, state: LimiterState | None = None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.factor = 1.0  # adaptive multiplier on both rates, lowered by 429s
        self._adaptive_rpm: float | None = None  # set after a 429 when no rpm was configured
        self._next_request = 0.0
        self._next_token = 0.0
        self._blocked_until = 0.0
        self._sends: collections.deque[float] = collections.deque(maxlen=OBSERVED_WINDOW)
        self.state = state or LimiterState()

    def _request_interval(self) -> float | None:
        rpm = self.rpm * self.factor if self.rpm else self._adaptive_rpm
        return 60.0 / rpm * SPACING_MARGIN if rpm else None

    async def acquire(self, est_tokens: int) -> float:
        """Wait for a slot; returns the seconds waited."""
        now = time.monotonic()
        start = now
        if self._blocked_until > now:
            self.state.waiting_retry_after += 1
            try:
                await asyncio.sleep(self._blocked_until - now)
            finally:
                self.state.waiting_retry_after -= 1
            now = time.monotonic()
        interval = self._request_interval()
        rpm_at = tok_at = now
        if interval is not None:
            rpm_at = max(now, self._next_request)
            self._next_request = rpm_at + interval
        if self.tpm:
            tok_at = max(now, self._next_token)
            self._next_token = tok_at + est_tokens * 60.0 / (self.tpm * self.factor) * SPACING_MARGIN
        at = max(rpm_at, tok_at)
        if at > now:
            which = "waiting_tpm" if tok_at > rpm_at else "waiting_rpm"
            setattr(self.state, which, getattr(self.state, which) + 1)
            try:
                await asyncio.sleep(at - now)
            finally:
                setattr(self.state, which, getattr(self.state, which) - 1)
        self._sends.append(time.monotonic())
        return time.monotonic() - start

    def settle(self, est_tokens: int, actual_tokens: int | None) -> None:
        """Correct the token reservation with what the request really used."""
        if self.tpm and actual_tokens is not None and actual_tokens != est_tokens:
            self._next_token += (actual_tokens - est_tokens) * 60.0 / (self.tpm * self.factor) * SPACING_MARGIN

    def on_success(self) -> None:
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor * RECOVER_PER_SUCCESS)
        if self._adaptive_rpm is not None:
            self._adaptive_rpm *= RECOVER_PER_SUCCESS
            observed = self._observed_rpm()
            if observed is None or self._adaptive_rpm > observed * 4:
                self._adaptive_rpm = None  # recovered well past what we were sending: unlimit

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A 429: slow the whole provider × model down, and honour Retry-After for everyone."""
        self.state.rate_limited += 1
        self.factor = max(MIN_FACTOR, self.factor * DECREASE_ON_429)
        if not self.rpm:
            observed = self._observed_rpm()
            if observed is not None:
                current = min(self._adaptive_rpm or observed, observed)
                self._adaptive_rpm = max(1.0, current * DECREASE_ON_429)
        if retry_after:
            self._blocked_until = max(self._blocked_until, time.monotonic() + retry_after)

    def _observed_rpm(self) -> float | None:
        """The recent send rate; None when too few sends to tell (then Retry-After and backoff
        alone slow us down)."""
        if len(self._sends) < MIN_OBSERVED:
            return None
        span = self._sends[-1] - self._sends[0]
        return (len(self._sends) - 1) / span * 60.0 if span > 0 else None


class Limiters:
    """One ModelLimiter per provider × model, created on first use."""

    def __init__(self, limits: dict[str, tuple[int | None, int | None]]) -> None:
        self._limits = limits
        self._by_key: dict[tuple[str, str], ModelLimiter] = {}
        self.state = LimiterState()

    def get(self, provider: str, model: str) -> ModelLimiter:
        key = (provider, model)
        lim = self._by_key.get(key)
        if lim is None:
            rpm, tpm = self._limits.get(provider, (None, None))
            lim = self._by_key[key] = ModelLimiter(rpm, tpm, self.state)
        return lim
