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
  `x-ratelimit-remaining-requests` / `-tokens` is 0; or, without such headers, the rule of
  `adaptive.py` (a run of rejections in *send* order, or a failed probe). The whole lane then
  waits until the window frees (`x-ratelimit-reset-*`, `retry-after-ms`, `Retry-After`, capped)
  and the adaptive rate decreases (a failed probe only drops back to the known-good rate). A 200
  that says `remaining: 0` blocks the lane the same way, before any 429.
* sporadic: anything else (`remaining` > 0, or 429s scattered among successes, which is what an
  overloaded upstream behind a gateway produces). Only that request waits its Retry-After (the
  retry loop does that); the lane's rate is untouched, so sporadic 429s at any rate cost their
  own retries and nothing else.

An announced limit (`x-ratelimit-limit-*` on any answer, a 200 or a 429) is the ceiling at once:
the pace is never above it, a learnt rate below a *raised* announced limit is dropped (the
server said more is allowed), and 429s answering requests sent before the limit was known do
not decrease the rate. How the adaptive rate is learnt and recovers: `adaptive.py`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol, TypedDict

from evalrun.run.rate.adaptive import MIN_EPISODE_S, AdaptiveRate, Send
from evalrun.run.rate.ratelimits import RateHeaders

# Sends are spaced a hair wider than 60/R so that network jitter can never put R+1 of them
# in one 60 s window on the server's clock. (The adaptive rule's numbers are in adaptive.py.)
SPACING_MARGIN = 1.002


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
        self.aimd = AdaptiveRate()  # the rate learnt from 429s (see adaptive.py)
        self.started_from: str | None = None  # "600 rpm, the limit the last run learnt", in words
        self.blocked_until = 0.0
        self.waiting = 0  # requests waiting here right now
        self._last_request = -float("inf")
        self._next_token = 0.0
        self._queue = asyncio.Lock()  # FIFO: the waiter at its head sleeps until the slot

    # adaptive.py holds the learnt rate; these name it for the pace, the progress line and Redis
    @property
    def adaptive(self) -> float | None:
        return self.aimd.rate

    @adaptive.setter
    def adaptive(self, rate: float | None) -> None:
        self.aimd.rate = rate

    @property
    def ceiling(self) -> float | None:
        return self.aimd.ceiling

    @ceiling.setter
    def ceiling(self, rate: float | None) -> None:
        self.aimd.ceiling = rate

    @property
    def decreases(self) -> int:
        return self.aimd.decreases

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
        if headers.limit_requests and headers.limit_requests != self.header_rpm:
            self._announced(self.header_rpm, headers.limit_requests)
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

    def _announced(self, old: int | None, new: int) -> None:
        """A new announced request limit: the ceiling at once. Requests sent before it was known
        did not know it (their 429s do not decrease); a learnt rate under a raised limit is
        dropped — the server says more is allowed, and 429s will teach again if not."""
        aimd = self.aimd
        aimd.changed_at = self.clock.now()
        if old is not None and new > old and aimd.rate is not None:
            aimd.rate = aimd.ceiling = None

    def sent(self) -> Send:
        """A request goes on the wire now: its entry in the ledger its answer is attributed to."""
        return self.aimd.sent(self.clock.now())

    def on_success(
        self, latency_s: float | None = None, headers: RateHeaders | None = None, send: Send | None = None
    ) -> None:
        now = self.clock.now()
        send = send if send is not None else self.aimd.sent(now)  # callers without a ledger entry
        self.aimd.answered(send, False, latency_s)
        self._learn(headers, None)
        if self.aimd.on_success(now, send):
            self._adapted(decreased=False)

    def on_rate_limited(
        self, retry_after: float | None = None, headers: RateHeaders | None = None, send: Send | None = None
    ) -> bool:
        """A 429. Returns True when it means the server's window is full (the lane was slowed
        and blocked), False when it was sporadic (only that request waits)."""
        now = self.clock.now()
        aimd = self.aimd
        send = send if send is not None else aimd.sent(now)
        aimd.answered(send, True, None)
        retry_after = _finer(retry_after, headers)
        if self._learn(headers, retry_after):
            full = True
        elif headers is not None and headers.window_open:
            return False
        else:
            soft = aimd.over_ceiling(send)
            full = soft or aimd.full_window(send, aimd.span(retry_after))
            if full and not soft:
                # a ceiling found too high only drops the rate; a full window is waited out
                self._block(aimd.block_s(now, retry_after))
        if full and aimd.on_full(now, send, retry_after, self.request_rate()):
            self._adapted(decreased=True)
        return full

    def _adapted(self, decreased: bool) -> None:
        """The learnt rate changed (the shared limiter tells every process through Redis)."""

    def _block(self, seconds: float) -> None:
        until = self.clock.now() + min(seconds, self.block_cap_s)
        if until > self.blocked_until:
            self.blocked_until = until

    def learned(self) -> tuple[int, str] | None:
        """The server's limit as this run learnt it, in rpm, and from what; None if nothing was."""
        if self.header_rpm and (self.aimd.rate is None or self.aimd.rate * 60 >= self.header_rpm):
            return self.header_rpm, "x-ratelimit headers"
        if self.aimd.ceiling is not None:
            return max(1, round(self.aimd.ceiling * 60)), self.aimd.source
        return None

    def start_from(self, rpm: int, source: str) -> None:
        """Start at a limit learnt by an earlier run (its manifest), instead of a burst."""
        self.aimd.start_from(rpm / 60.0, source)
        self.started_from = f"started at {rpm:,} rpm, the limit {source} learnt"

    # ---- for the progress line -----------------------------------------------------------------

    def describe(self) -> str | None:
        """What this lane is doing to its pace right now, in words; None when nothing."""
        now = self.clock.now()
        if self.blocked_until > now:
            return f"{self.name}: server window full, resumes in {self.blocked_until - now:.1f} s"
        rate = self.request_rate()
        if self.adaptive is not None and rate == self.adaptive:
            return f"{self.name}: held to {self.adaptive * 60:,.0f} rpm, a limit learnt from {self.aimd.source}"
        if not self.waiting:
            return None
        limits = []
        for kind, mine, theirs in (("rpm", self.rpm, self.header_rpm), ("tpm", self.tpm, self.header_tpm)):
            if mine and (not theirs or mine <= theirs):
                limits.append(f"{kind} {mine:,}")
            elif theirs:
                limits.append(f"{kind} {theirs:,} (server's x-ratelimit headers)")
        return f"{self.name}: {self.waiting} waiting on {', '.join(limits) or 'the pace'}"


class LearnedLimit(TypedDict):
    """A lane's learnt limit as the manifest records it."""

    rpm: int
    source: str


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

    def learned(self) -> dict[str, LearnedLimit]:
        """'provider/model' → the server's limit as learnt and from what (the manifest's record)."""
        out: dict[str, LearnedLimit] = {}
        for (provider, model), lim in sorted(self._by_key.items()):
            got = lim.learned()
            if got is not None:
                out[f"{provider}/{model}"] = {"rpm": got[0], "source": got[1]}
        return out

    def record(self, before: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]] | None:
        """What the manifest records, when a limit was learnt: the limit per lane (over those
        recorded `before`), for a resume; and, for this session's summary, what held the pace
        back (`pace_held_by`, taken out again by the runner)."""
        learned = self.learned()
        if not learned:
            return None
        started = {f"{p}/{m}": lim.started_from for (p, m), lim in self._by_key.items() if lim.started_from}
        held = [
            f"{k}: {v['rpm']:,} rpm, learnt from {v['source']}" + (f" ({started[k]})" if k in started else "")
            for k, v in learned.items()
        ]
        return {**(before or {}), **learned}, held

    def start_from(self, learned: object, source: str = "the last run", share: int = 1) -> None:
        """Lanes without a configured rpm start at the limit a manifest recorded (1/share of it
        with --workers), instead of learning it again from a burst of 429s. Bad records are skipped."""
        if not isinstance(learned, dict):
            return
        for key, rec in learned.items():
            provider, _, model = str(key).partition("/")
            rpm = rec.get("rpm") if isinstance(rec, dict) else None
            if isinstance(rpm, int) and rpm > 0 and self._limits.get(provider, (None, None))[0] is None:
                self.get(provider, model).start_from(max(1, rpm // max(1, share)), source)
