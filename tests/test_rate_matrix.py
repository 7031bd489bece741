"""Rate control across server shapes, on a fake clock: the real ModelLimiter (pacing, blocks,
the adaptive rate) against a model of a gateway's window — fixed or sliding, 1 s to 60 s,
Retry-After absent, constant or the rest of the window, latency 20 ms to 2 s, concurrency 4
to 500 — with retries that wait as the pool's do. Minutes of virtual time run in about a
second each. The same shapes over real HTTP are in tests/bench/rate_bench.py (medians of 3 in
RESULTS.md) and a slice of them in tests/test_rate_control.py.

Targets (issue: rate control, third round): never told the limit, the run takes at most
1.15 × N / limit plus one window, and 429s after the first episode (first 429 + one window)
are at most 5 % of N; the limit learnt is the server's within 20 %.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import random
from dataclasses import dataclass, field

import pytest
from conftest import FakeClock

from evalrun.run.rate.limiter import ModelLimiter


@dataclass
class Window:
    """A gateway's limit: `limit` requests per `window_s`, fixed or sliding; what its 429 says
    in Retry-After ("rest": the rest of the window; None: nothing); sporadic 429s at `p429`."""

    limit: int
    window_s: float
    sliding: bool
    retry_after: str | float | None
    p429: float = 0.0
    log: list[tuple[float, bool]] = field(default_factory=list)  # (time, accepted)
    _kept: collections.deque[float] = field(default_factory=collections.deque)
    _fixed: tuple[int, int] = (0, 0)  # (window index, used)
    _rng: random.Random = field(default_factory=lambda: random.Random(7))

    def answer(self, t: float) -> tuple[bool, float | None]:
        if self.sliding:
            while self._kept and self._kept[0] <= t - self.window_s:
                self._kept.popleft()
            ok = len(self._kept) < self.limit
            rest = self.window_s if ok else self._kept[0] + self.window_s - t
            if ok:
                self._kept.append(t)
        else:
            index = int(t // self.window_s)
            used = self._fixed[1] if self._fixed[0] == index else 0
            ok = used < self.limit
            self._fixed = (index, used + ok)
            rest = (index + 1) * self.window_s - t
        if ok and self.p429 and self._rng.random() < self.p429:
            ok, rest = False, 1.0  # upstream, whatever the client's rate; the window keeps the slot
        self.log.append((t, ok))
        if ok:
            return True, None
        if self.retry_after == "rest":
            return False, max(0.001, rest)
        return False, None if self.retry_after is None else float(self.retry_after)


async def _run(clock: FakeClock, lim: ModelLimiter, server: Window, n: int, conc: int, latency_s: float) -> None:
    slots = asyncio.Semaphore(conc)

    async def one() -> None:
        attempt = 0
        while True:
            attempt += 1
            async with slots:  # held while on the wire, not while waiting to retry (the pool's park)
                await lim.acquire(1)
                send = lim.sent()
                ok, retry_after = server.answer(clock.now())
                if ok:
                    await clock.sleep(latency_s)
                    lim.on_success(latency_s, None, send)
                    return
                lim.on_rate_limited(retry_after, None, send)  # 429s come back at once
            await clock.sleep(retry_after if retry_after is not None else min(0.05 * 2 ** (attempt - 1), 0.5))

    await asyncio.gather(*(one() for _ in range(n)))


@dataclass(frozen=True)
class Outcome:
    phase_s: float  # first request → last accepted one
    late_429s: int  # after the first episode: first 429 + one window
    learned_rpm: int | None


def simulate(server: Window, n: int, conc: int, latency_s: float, start_rpm: int | None = None) -> Outcome:
    clock = FakeClock()
    lim = ModelLimiter("m", None, None, clock, 120.0)
    if start_rpm is not None:
        lim.start_from(start_rpm, "the last run")
    asyncio.run(clock.run(_run(clock, lim, server, n, conc, latency_s)))
    t0 = server.log[0][0]
    first_429 = next((t for t, ok in server.log if not ok), None)
    late_from = float("inf") if first_429 is None else first_429 + server.window_s
    late = sum(1 for t, ok in server.log if not ok and t > late_from)
    learned = lim.learned()
    return Outcome(max(t for t, ok in server.log if ok) - t0, late, None if learned is None else learned[0])


def _miss(why: str) -> pytest.MarkDecorator:
    """A shape that misses the target today, as measured; strict: the day it passes, this fails
    and the mark must go."""
    return pytest.mark.xfail(strict=True, reason=why)


# name: (server, N, concurrency, latency)
SHAPES = {
    "10 per sliding 1 s, Retry-After 1": (Window(10, 1, True, 1.0), 200, 32, 0.02),
    "10 per fixed 1 s, Retry-After the rest": (Window(10, 1, False, "rest"), 300, 32, 0.02),
    "10 per fixed 1 s, no Retry-After": (Window(10, 1, False, None), 300, 32, 0.02),
    "100 per fixed 10 s, Retry-After the rest": (Window(100, 10, False, "rest"), 300, 32, 0.02),
    "100 per sliding 10 s, no Retry-After": (Window(100, 10, True, None), 300, 32, 0.02),
    "100 per sliding 10 s, Retry-After 1 (a gateway's constant)": (Window(100, 10, True, 1.0), 300, 32, 0.02),
    "1,000 per sliding 60 s, no Retry-After": (Window(1000, 60, True, None), 2500, 64, 0.02),
    "100 per fixed 1 s, concurrency 500, latency 500 ms": (Window(100, 1, False, None), 2000, 500, 0.5),
    "20 per fixed 1 s, concurrency 100, latency 2 s": (Window(20, 1, False, None), 500, 100, 2.0),
}
MISSES = {
    # honouring a Retry-After of 5 s on a 1-s window: every episode costs 5 s, and the rate is
    # learnt over 5 s (≈ 400 rpm for 600); 2.2 × N / limit. By design: Retry-After is the contract
    "10 per fixed 1 s, Retry-After 5 s": (Window(10, 1, False, 5.0), 300, 32, 0.02),
    # 60 rpm: a 1-s episode held one request, so probes passed clean before their 429s showed
    # and the ceiling ran away to 352 rpm (263 late 429s); episodes of at least two requests
    # keep it at 66 (8 late of 100, the bound is 5): every over-shoot at 1 rps is a 429
    "1 per fixed 1 s, concurrency 4": (Window(1, 1, False, None), 100, 4, 0.02),
}


@pytest.mark.parametrize(
    "name", [*SHAPES, *(pytest.param(name, marks=_miss("measured: misses the target")) for name in MISSES)]
)
def test_a_limit_nobody_told_is_learnt_whatever_the_window_shape(name: str) -> None:
    server, n, conc, latency_s = {**SHAPES, **MISSES}[name]
    server = copy.deepcopy(server)  # a fresh gateway per test: it keeps a log
    out = simulate(server, n, conc, latency_s)
    rate = server.limit / server.window_s
    assert out.phase_s <= 1.15 * n / rate + server.window_s, out
    assert out.late_429s <= 0.05 * n, out
    assert out.learned_rpm is not None and abs(out.learned_rpm - rate * 60) <= 0.2 * rate * 60, out


@pytest.mark.parametrize(
    "p", [0.05, *(pytest.param(p, marks=_miss("measured: 1.1-1.3 x the target")) for p in (0.15, 0.3))]
)
def test_sporadic_429s_under_a_window_do_not_lower_the_pace(p: float) -> None:
    # 600 rpm in 1-s windows plus p upstream 429s: the lane should keep near the window's pace.
    # Each sporadic 429 to a request sent at the learnt ceiling used to read as "the ceiling is
    # too high", measured against an accepted rate that lacked the sporadic ones: the ceiling
    # ratcheted down (5 % → 48 s, 15 % → 527 s, 30 % → 16,936 s for ~36–50 s of work). Now a
    # 429 at the ceiling counts only while the server took about the ceiling's worth: 34, 53,
    # 62 s; 15 % and 30 % still miss the 1.15 × bound.
    server = Window(10, 1, True, 1.0, p429=p)
    out = simulate(server, 300, 32, 0.02)
    assert out.phase_s <= 1.15 * 300 / 10 / (1 - p) + 1, out


def test_a_60_rpm_lane_does_not_run_away() -> None:
    # the part of the 60-rpm shape above that holds: the ceiling stays near the server's
    server, n, conc, latency_s = MISSES["1 per fixed 1 s, concurrency 4"]
    out = simulate(copy.deepcopy(server), n, conc, latency_s)
    assert out.learned_rpm is not None and out.learned_rpm <= 72 and out.late_429s <= 0.1 * n, out


def test_a_lane_that_cannot_reach_its_pace_does_not_raise_the_limit_it_learnt() -> None:
    # Started from last night's 600 rpm, but concurrency 3 at 500 ms answers can send only
    # 360 rpm: every episode is clean without testing the pace. Counted as clean probes, they
    # raised the ceiling without bound, and the next night would start from that.
    server = Window(10, 1, False, None)
    out = simulate(server, 600, 3, 0.5, start_rpm=600)
    assert out.learned_rpm == 600, out
