"""The limiter's rules on a fake clock: pacing, window-full vs sporadic 429s, AIMD by episodes,
what x-ratelimit-* headers teach. Milliseconds each; no network."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from conftest import FakeClock

from evalrun.run.rate.adaptive import DECREASE, INCREASE, MIN_EPISODE_S
from evalrun.run.rate.limiter import SPACING_MARGIN, Limiters, ModelLimiter
from evalrun.run.rate.ratelimits import RateHeaders, parse_duration, parse_rate_headers


def lane(rpm: int | None = None, tpm: int | None = None) -> tuple[ModelLimiter, FakeClock]:
    clock = FakeClock()
    return ModelLimiter("m", rpm, tpm, clock), clock


def test_rpm_books_evenly_spaced_slots() -> None:
    lim, clock = lane(rpm=600)
    slots = [lim.reserve(1) for _ in range(5)]
    assert slots == pytest.approx([i * 0.1 * SPACING_MARGIN for i in range(5)])
    clock.t = 10.0  # idle for a while: no burst credit is saved up beyond "now"
    assert lim.reserve(1) == 10.0 and lim.reserve(1) == pytest.approx(10.0 + 0.1 * SPACING_MARGIN)


def test_unpaced_lane_never_waits() -> None:
    lim, _ = lane()
    assert all(lim.reserve(10_000) == 0.0 for _ in range(1000))
    assert lim.request_rate() is None and lim.describe() is None


def test_tpm_books_by_tokens_and_settles_with_real_usage() -> None:
    lim, _ = lane(tpm=6000)  # 100 tokens a second
    assert lim.reserve(50) == 0.0
    assert lim.reserve(50) == pytest.approx(0.5 * SPACING_MARGIN)
    lim.settle(50, 150)  # the second used 100 more than booked: the next slot moves 1 s later
    assert lim.reserve(50) == pytest.approx((1.0 + 1.0 + 0.0) * SPACING_MARGIN, rel=1e-3)


def _burst(lim: ModelLimiter, ok: int, rejected: int, retry_after: float | None = 1.0) -> list[bool]:
    for _ in range(ok):
        lim.on_success(0.0)
    return [lim.on_rate_limited(retry_after) for _ in range(rejected)]


def test_a_full_window_slows_the_lane_to_what_the_server_accepted_once_per_episode() -> None:
    lim, clock = lane()
    full = _burst(lim, ok=10, rejected=90)  # 10 accepted, then the window is full
    assert full.index(True) == 9  # the 10th 429 makes 429s half of what was heard: window full
    # 81 more window-full 429s answering requests sent at the old pace: no more decreases (the
    # old rule counted episodes by answer time; now by send time — same outcome here)
    assert lim.decreases == 1
    assert lim.ceiling == pytest.approx(10 / MIN_EPISODE_S)
    assert lim.adaptive == pytest.approx(DECREASE * 10)
    assert lim.blocked_until == pytest.approx(1.0)
    assert lim.reserve(1) == pytest.approx(1.0)  # the whole lane waits for the window
    assert "server window full" in (lim.describe() or "")
    clock.t = 1.5
    assert (lim.describe() or "").split(": ", 1)[1] == "held to 540 rpm, a limit learnt from 429s"


def test_sporadic_429s_never_slow_the_lane() -> None:
    for p in (0.05, 0.15, 0.30):
        lim, clock = lane()
        rng = random.Random(1)
        for i in range(3000):  # 1,000 answers a second, p of them 429 (an upstream's, not a window)
            clock.t = i / 1000
            if rng.random() < p:
                assert lim.on_rate_limited(1.0) is False
            else:
                lim.on_success(0.0)
        assert (lim.decreases, lim.adaptive, lim.blocked_until) == (0, None, 0.0), p
        assert lim.reserve(1) == clock.t  # no wait for anyone


def test_a_burst_after_a_quiet_spell_opening_with_429s_is_not_a_full_window() -> None:
    # retries of a 30 %-sporadic server coming back together after their Retry-After: the first
    # answers of the burst may be 429s by chance; that is no evidence of a window
    lim, clock = lane()
    for _ in range(50):
        lim.on_success(0.0)
    clock.t = 5.0
    assert [lim.on_rate_limited(1.0) for _ in range(5)] == [False] * 5
    lim.on_success(0.0)
    assert lim.on_rate_limited(1.0) is False
    assert (lim.decreases, lim.adaptive, lim.blocked_until) == (0, None, 0.0)


def test_a_429_saying_the_window_has_room_is_sporadic_even_in_a_crowd() -> None:
    lim, _ = lane()
    room = RateHeaders(limit_requests=600, remaining_requests=42)
    assert not any(lim.on_rate_limited(1.0, room) for _ in range(50))
    assert lim.decreases == 0 and lim.header_rpm == 600


def test_remaining_zero_blocks_until_reset_even_on_a_success() -> None:
    lim, clock = lane()
    clock.t = 5.0
    lim.on_success(0.01, RateHeaders(limit_requests=600, remaining_requests=0, reset_requests_s=0.25))
    assert lim.blocked_until == pytest.approx(5.25)
    assert lim.reserve(1) == pytest.approx(5.25)
    lim.on_rate_limited(30.0, RateHeaders(remaining_tokens=0, reset_tokens_s=2.0))  # reset beats Retry-After
    assert lim.blocked_until == pytest.approx(7.0)


def test_retry_after_ms_is_the_block_when_no_reset_is_given() -> None:
    lim, _ = lane()
    lim.on_rate_limited(3.0, RateHeaders(remaining_requests=0, retry_after_ms=0.4))
    assert lim.blocked_until == pytest.approx(0.4)


def test_a_huge_retry_after_ms_is_held_to_the_callers_cap() -> None:
    """The attempt loop passes Retry-After already capped at retry_after_max_s; the header's
    own retry-after-ms (here 100 s) must not lengthen the block past it."""
    lim, _ = lane()
    lim.on_rate_limited(5.0, RateHeaders(remaining_requests=0, retry_after_ms=100.0))
    assert lim.blocked_until == pytest.approx(5.0)


def test_announced_limit_paces_before_any_429() -> None:
    lim, _ = lane()
    lim.on_success(0.01, RateHeaders(limit_requests=600, remaining_requests=599))
    assert lim.request_rate() == pytest.approx(10.0)
    lim2, _ = lane(rpm=120)  # a lower configured limit wins
    lim2.on_success(0.01, RateHeaders(limit_requests=600, remaining_requests=599))
    assert lim2.request_rate() == pytest.approx(2.0)


def _at_pace(lim: ModelLimiter, clock: FakeClock, seconds: float) -> None:
    """The requests a lane sends at its pace over `seconds`, all answered 200 at once."""
    rate = lim.adaptive or 1.0
    for _ in range(math.ceil(rate * seconds)):
        clock.t += 1 / rate
        lim.on_success(0.01, None, lim.sent())


def test_a_clean_episode_the_lane_did_not_use_is_no_probe() -> None:
    # A lane held back by its concurrency (or out of requests) sends far below its pace: every
    # episode is clean without testing that pace, and read as clean probes they raised the
    # ceiling without bound (the next night starts from it).
    lim, clock = lane()
    _burst(lim, ok=10, rejected=20)
    for step in range(1, 12):  # two requests an episode, against a pace of 9-10 a second
        clock.t = step * (MIN_EPISODE_S + 0.01)
        lim.on_success(0.01, None, lim.sent())
        clock.t += 0.001
        lim.on_success(0.01, None, lim.sent())
    assert lim.ceiling == pytest.approx(10.0) and lim.adaptive == pytest.approx(10.0)
    _at_pace(lim, clock, 3.5 * MIN_EPISODE_S)  # at its pace: held one episode, then probes
    assert (lim.adaptive or 0) > 10.0


def test_recovery_is_multiplicative_to_the_ceiling_then_probes_with_growing_steps() -> None:
    # the old rule added 5 % of the ceiling per clean episode and probed only after 20 clean
    # episodes at it: an underestimate of 5x took minutes to make up (issue 24)
    lim, clock = lane()
    _burst(lim, ok=10, rejected=20)
    rates = []
    for step in range(1, 9):  # answers to requests sent at the current pace, one per episode
        clock.t = step * (MIN_EPISODE_S + 0.01)
        lim.on_success(0.01, None, lim.sent())
        clock.t += 0.001
        lim.on_success(0.01, None, lim.sent())
        rates.append(lim.adaptive)
        _at_pace(lim, clock, 0.9 * MIN_EPISODE_S)  # the episode's requests: the lane used its pace
    assert rates[0] == pytest.approx(10.0)  # × RECOVER, capped at the ceiling: back in one episode
    assert rates[1] == pytest.approx(10.0)  # one episode held at the ceiling
    # then probes of 5 %, 10 %, 20 %, 40 % … of the ceiling, each clean one the new ceiling
    assert rates[2] == pytest.approx(10 * (1 + INCREASE))
    assert rates[3] == pytest.approx(10 * (1 + INCREASE) * (1 + 2 * INCREASE))
    assert rates[5] == pytest.approx(10 * 1.05 * 1.1 * 1.2 * 1.4)
    # a 429 while the lane got far less than the ceiling through is a sporadic one, not a
    # failed probe: the ceiling stays
    ceiling = lim.ceiling
    clock.t += 2 * MIN_EPISODE_S  # nothing sent for a while: the server got far less through
    assert lim.on_rate_limited(0.5, None, lim.sent()) is False
    assert lim.ceiling == ceiling and lim.decreases == 1
    # a single 429 answering a probe while the lane sends at its pace means it failed: back to
    # the last rate that passed, at once
    for _ in range(int(lim.adaptive or 0) + 1):  # the probe's pace, on the wire
        lim.sent()
    assert lim.on_rate_limited(0.5, None, lim.sent()) is True
    assert lim.adaptive == pytest.approx(ceiling) and lim.decreases == 2
    assert lim.blocked_until < clock.t  # a failed probe is not a full window: nobody waits


def test_an_underestimate_is_made_up_within_ten_seconds_of_clean_answers() -> None:
    lim, clock = lane()
    lim.start_from(120, "the last run")  # told 2/s; the server allows 10/s
    t = 0.0
    while lim.adaptive is not None and lim.adaptive < 0.9 * 10:
        t += 1 / lim.adaptive
        clock.t = t
        lim.on_success(0.02, None, lim.sent())
    assert t <= 10.0


def test_rejections_answered_before_the_acceptances_do_not_collapse_the_rate() -> None:
    # issue 24: 10 per 1-s window, 32 sent at once; the 22 rejections come back at once, the
    # 10 acceptances 20 ms later. Counted by answer time the accepted rate looked like ~0/s.
    lim, clock = lane()
    sends = [lim.sent() for _ in range(32)]
    clock.t = 0.001
    for s in sends[10:]:
        lim.on_rate_limited(1.0, None, s)
    assert lim.decreases == 1 and lim.ceiling == pytest.approx(10.0)
    clock.t = 0.02
    for s in sends[:10]:
        lim.on_success(0.02, None, s)
    assert lim.adaptive == pytest.approx(9.0)


def test_sporadic_429s_answered_before_the_successes_never_slow_the_lane() -> None:
    # 30 % sporadic 429s answered at once, 200s after 50 ms: by arrival, 429s come in runs
    lim, clock = lane()
    rng = random.Random(3)
    pending: list[tuple[float, object]] = []
    for i in range(3000):
        clock.t = i / 1000
        for _due, s in [p for p in pending if p[0] <= clock.t]:
            lim.on_success(0.05, None, s)  # type: ignore[arg-type]
        pending = [p for p in pending if p[0] > clock.t]
        send = lim.sent()
        if rng.random() < 0.3:
            assert lim.on_rate_limited(1.0, None, send) is False
        else:
            pending.append((clock.t + 0.05, send))
    assert lim.adaptive is None and lim.decreases == 0


def test_an_announced_limit_is_the_ceiling_at_once_and_a_raise_lifts_a_learnt_rate() -> None:
    lim, clock = lane()
    burst = [lim.sent() for _ in range(30)]
    clock.t = 0.001
    # the first 429 announces 600 rpm: the burst's other 429s were sent before it was known
    for s in burst[10:]:
        lim.on_rate_limited(1.0, RateHeaders(limit_requests=600), s)
    assert lim.decreases == 0 and lim.request_rate() == pytest.approx(10.0)
    assert lim.learned() == (600, "x-ratelimit headers")
    lim.start_from(300, "the last run")
    lim.on_success(0.01, RateHeaders(limit_requests=1200), lim.sent())  # the server raised it
    assert lim.adaptive is None and lim.request_rate() == pytest.approx(20.0)


def test_a_block_that_starts_while_waiting_is_waited_out() -> None:
    async def scenario(lim: ModelLimiter, clock: FakeClock) -> float:
        async def later() -> None:
            await clock.sleep(0.05)
            lim.on_rate_limited(2.0, RateHeaders(remaining_requests=0, reset_requests_s=2.0))

        first = await lim.acquire(1)
        assert first == 0.0
        lim.on_success(0.0, None, lim.sent())  # the server accepted one: the 429 below can decrease
        blocker = asyncio.ensure_future(later())
        waited = await lim.acquire(1)  # booked for 0.1 s; the block from 0.05 s moves it to 2.05 s
        await blocker
        return waited

    lim, clock = lane(rpm=600)
    waited = asyncio.run(clock.run(scenario(lim, clock)))
    assert waited >= 2.05 - 1e-9  # the block (and the decrease that came with it) applied to the waiter
    assert lim.decreases == 1 and lim.waiting == 0


@pytest.mark.parametrize(
    "value, seconds",
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("soon", None), ("-1", None)],
)
def test_parse_duration(value: str, seconds: float | None) -> None:
    assert parse_duration(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_parse_rate_headers() -> None:
    assert parse_rate_headers({}) is None
    h = parse_rate_headers(
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "250ms",
            "retry-after-ms": "1500",
        }
    )
    assert h == RateHeaders(600, 0, 0.25, None, None, None, 1.5)
    assert h is not None and h.window_full and h.reset_s() == 0.25


def test_progress_words_say_what_holds_the_pace() -> None:
    limiters = Limiters({"p": (600, None)}, clock=FakeClock())
    lim = limiters.get("p", "m")
    assert limiters.describe() == []
    lim.waiting = 3
    assert limiters.describe() == ["m: 3 waiting on rpm 600"]
    unlimited = Limiters({"p": (None, None)}, clock=FakeClock()).get("p", "m")
    unlimited.waiting = 3
    assert "rpm" not in (unlimited.describe() or "")  # no rpm was configured: never "waiting on RPM"
