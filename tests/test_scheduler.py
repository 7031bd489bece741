"""The pool's scheduling and stops on a fake clock, with an in-memory provider (no network):
lanes per provider × model, the rate slot before the concurrency slot, one stop path."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from conftest import FakeClock

from evalrun.config.models import RetryConfig
from evalrun.run.http.client import Sent
from evalrun.run.http.errors import APIStatusError, RequestError
from evalrun.run.rate.limiter import ModelLimiter
from evalrun.run.records.records import Cell, Choice, Completion, RequestSpec, Result, Usage
from evalrun.run.send.attempts import Admission, Attempts, Lane
from evalrun.run.send.pool import Pool
from evalrun.run.send.slots import Slots
from evalrun.run.send.stops import PoolOutcome, Stops

pytestmark = pytest.mark.real_waits  # virtual time: the waits are the real ones, and cost nothing

OK = Completion("id", "m", [Choice(0, "42", "stop")], Usage(total_tokens=3))


@dataclass
class FakeProvider:
    """Answers after `latency` virtual seconds; `fail(spec, attempt)` may return an error instead."""

    clock: FakeClock
    latency: float = 0.05
    fail: Callable[[RequestSpec, int], RequestError | None] = lambda spec, attempt: None
    base_url: str = "http://127.0.0.1:9/v1"
    sent: list[tuple[float, str, str]] = field(default_factory=list)  # (time, model, request_id)
    on_wire: int = 0
    max_on_wire: int = 0
    _tries: dict[str, int] = field(default_factory=dict)

    async def send(self, spec: RequestSpec) -> Sent:
        self.sent.append((self.clock.now(), spec.cell.model, spec.request_id))
        self._tries[spec.request_id] = n = self._tries.get(spec.request_id, 0) + 1
        self.on_wire += 1
        self.max_on_wire = max(self.max_on_wire, self.on_wire)
        try:
            await self.clock.sleep(self.latency)
        finally:
            self.on_wire -= 1
        err = self.fail(spec, n)
        return Sent(self.base_url, self.latency, error=err) if err else Sent(self.base_url, self.latency, completion=OK)

    def note_failure(self, url: str) -> None: ...

    def note_success(self, url: str) -> None: ...


def specs(model: str, n: int, provider: str = "p") -> list[RequestSpec]:
    cell = Cell(f"c-{model}", provider, model, "p", {})
    return [RequestSpec(f"{model}-{i}", cell, f"r{i}", 0, [], {}, 1) for i in range(n)]


@dataclass
class Setup:
    clock: FakeClock
    pool: Pool
    results: list[tuple[float, Result]]
    providers: dict[str, FakeProvider]
    limiters: dict[str, ModelLimiter]


def setup(
    lanes: dict[str, tuple[int, int | None]],  # model → (requests, rpm)
    concurrency: int = 2,
    fail: Callable[[RequestSpec, int], RequestError | None] | None = None,
    retry: RetryConfig | None = None,
    providers_of: dict[str, str] | None = None,
) -> Setup:
    clock = FakeClock()
    providers_of = providers_of or {}
    fakes: dict[str, FakeProvider] = {}
    slots: dict[str, Slots] = {}
    built, limiters = [], {}
    for model, (n, rpm) in lanes.items():
        prov = providers_of.get(model, "p")
        fake = fakes.setdefault(prov, FakeProvider(clock, fail=fail or (lambda s, a: None)))
        slot = slots.setdefault(prov, Slots(concurrency))
        limiters[model] = lim = ModelLimiter(model, rpm, None, clock)
        built.append(Lane(prov, model, iter(specs(model, n, prov)), fake, lim, slot, concurrency))
    stops = Stops()
    attempts = Attempts(retry or RetryConfig(max_attempts=3), stops, Admission(), {}, clock)
    results: list[tuple[float, Result]] = []
    pool = Pool(built, attempts, lambda r: results.append((clock.now(), r)))
    return Setup(clock, pool, results, fakes, limiters)


def run(s: Setup, during: Callable[[], object] | None = None, at: float = 0.0) -> PoolOutcome:
    async def main() -> PoolOutcome:
        task = asyncio.ensure_future(s.pool.run())
        if during is not None:
            await s.clock.sleep(at)
            during()
        return await task

    return asyncio.run(s.clock.run(main()))


def finished(s: Setup, model: str) -> list[float]:
    return [t for t, r in s.results if r.spec.cell.model == model]


def test_a_rate_limited_model_does_not_hold_the_slots_another_model_needs() -> None:
    s = setup({"slow": (6, 30), "fast": (12, None)}, concurrency=2)
    run(s)
    fast, slow = finished(s, "fast"), finished(s, "slow")
    # alone, 12 requests at 2 concurrent × 0.05 s take 0.3 s; the 30-rpm model costs them at most a
    # slot for one of its own sends (the old pool held a slot while waiting on the limiter: 20 s)
    assert len(fast) == 12 and max(fast) <= 0.3 + 0.05 + 1e-9
    sends = [t for t, m, _ in s.providers["p"].sent if m == "slow"]
    assert len(slow) == 6 and all(b - a >= 2.0 for a, b in itertools.pairwise(sends))
    assert s.providers["p"].max_on_wire <= 2


def test_retry_after_on_one_model_delays_only_its_own_request() -> None:
    def fail(spec: RequestSpec, attempt: int) -> RequestError | None:
        if spec.request_id == "a-0" and attempt == 1:
            return APIStatusError(429, "slow down", retry_after=6.0)
        return None

    s = setup({"a": (4, None), "b": (12, None)}, concurrency=2, fail=fail)
    run(s)
    b = finished(s, "b")
    a = dict((r.spec.request_id, t) for t, r in s.results if r.spec.cell.model == "a")
    assert len(b) == 12 and max(b) < 1.0  # model b never waited for a's Retry-After
    assert max(t for rid, t in a.items() if rid != "a-0") < 1.0  # nor did a's other requests
    assert a["a-0"] >= 6.0  # the 429'd request waited what the server asked
    assert s.limiters["a"].decreases == 0


def test_a_stop_interrupts_limiter_waits_at_once_and_they_get_no_row() -> None:
    s = setup({"m": (20, 6)}, concurrency=8)  # 6 rpm: one send, then everyone waits 10 s a slot
    outcome = run(s, during=lambda: s.pool.request_stop("interrupted"), at=0.5)
    assert outcome.interrupted and outcome.run_reason == "interrupted"
    assert len(s.results) == 1 and s.results[0][1].ok  # the one answered request is kept
    assert s.clock.now() < 1.0  # nobody waited for the next 10-second slot
    assert len(s.providers["p"].sent) == 1 and s.pool.in_flight == 0


def test_in_flight_counts_requests_on_the_wire_only() -> None:
    s = setup({"m": (10, 6)}, concurrency=8)
    seen: list[int] = []
    run(s, during=lambda: seen.append(s.pool.in_flight), at=0.5)
    assert seen == [0]  # at 0.5 s: the first answer is in, 7 workers wait on the limiter, 0 on the wire


def test_a_stop_interrupts_retry_sleeps() -> None:
    def fail(spec: RequestSpec, attempt: int) -> RequestError | None:
        return APIStatusError(503, "down", retry_after=60.0)

    s = setup({"m": (3, None)}, concurrency=3, fail=fail, retry=RetryConfig(max_attempts=5, retry_after_max_s=60))
    run(s, during=lambda: s.pool.request_stop("interrupted"), at=1.0)
    assert s.results == [] and s.clock.now() < 2.0


def test_a_provider_stop_wakes_its_own_waiters_not_another_providers() -> None:
    def fail(spec: RequestSpec, attempt: int) -> RequestError | None:
        if spec.cell.provider == "a":
            return APIStatusError(401, "bad key")
        return None

    s = setup({"ma": (10, 6), "mb": (3, 6)}, concurrency=4, fail=fail, providers_of={"ma": "a", "mb": "b"})
    outcome = run(s)
    assert [p for p, _ in outcome.providers] == ["a"]
    a_rows = [r for _, r in s.results if r.spec.cell.provider == "a"]
    assert [r.error_type for r in a_rows] == ["authentication"]  # the rest of a: not sent, no row
    assert len(s.providers["a"].sent) == 1
    b = finished(s, "mb")
    assert len(b) == 3 and max(b) >= 20.0  # b kept its own 6-rpm pace: its waits were not cut short


def test_budget_stops_dispatch_exactly_and_interrupts_waiters() -> None:
    s = setup({"m": (50, 60)}, concurrency=8)  # one a second
    s.pool.attempts.admission.max_requests = 5
    outcome = run(s)
    assert outcome.budget_reason is not None and "--max-requests 5" in outcome.budget_reason
    assert len(s.providers["p"].sent) == 5 and len(s.results) == 5
    assert s.clock.now() < 6.0  # the waiters for slots 6, 7, … were interrupted, not waited out


@pytest.mark.parametrize("p", [0.05, 0.15, 0.30])
def test_sporadic_429s_do_not_slow_the_others(p: float) -> None:
    every = round(1 / p)

    def fail(spec: RequestSpec, attempt: int) -> RequestError | None:
        i = int(spec.request_id.split("-")[1])
        return APIStatusError(429, "upstream busy", retry_after=1.0) if attempt == 1 and i % every == 0 else None

    s = setup({"m": (300, None)}, concurrency=20, fail=fail)
    run(s)
    assert len(s.results) == 300 and all(r.ok for _, r in s.results)
    sent = [t for t, _, _ in s.providers["p"].sent]
    # the 20 slots never idle: 15 waves of 0.05 s in the first 0.75 s, as without faults (a
    # request waiting out its Retry-After holds no slot, and the lane's rate is untouched)
    assert sum(t < 0.75 - 1e-9 for t in sent) == 300
    retries = len(sent) - 300
    assert retries == len(range(0, 300, every))
    assert max(t for t, _ in s.results) <= len(sent) / 20 * 0.05 + 1.0 + 0.05 + 1e-9
    assert s.limiters["m"].decreases == 0


def test_requests_asleep_between_retries_do_not_starve_the_slots() -> None:
    def fail(spec: RequestSpec, attempt: int) -> RequestError | None:
        sporadic = attempt == 1 and int(spec.request_id.split("-")[1]) % 3 == 0
        return APIStatusError(429, "busy upstream", retry_after=10.0) if sporadic else None

    s = setup({"m": (300, None)}, concurrency=2, fail=fail)  # 100 sleepers, far more than awake workers
    run(s)
    firsts: dict[str, float] = {}
    for t, _, rid in s.providers["p"].sent:
        firsts.setdefault(rid, t)
    assert len(firsts) == 300 and max(firsts.values()) < 10.0  # every first attempt before any retry
    assert len(s.results) == 300 and all(r.ok for _, r in s.results)
