"""Fault switches and sliding-window rate limits, plus the live counters that expose them.

Faults come from their own RNG, seeded by the `seed` option and advanced once per arrival:
a retried request is a new arrival, so it does not deterministically hit the same fault
again, yet a whole run replays the same fault sequence.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from evalrun.sim.options import SimOptions

__all__ = ["WINDOW_S", "Fault", "FaultState", "RateWindows", "SimStats"]

WINDOW_S = 60.0
ARRIVALS_KEPT = 100_000
_5XX = (500, 502, 503, 504)


class Fault(StrEnum):
    RATE_429 = "rate_429"
    STATUS_5XX = "rate_500"
    HANG = "rate_hang"
    MALFORMED = "rate_malformed"
    ERROR_200 = "rate_error_200"
    NULL_USAGE = "rate_null_usage"


# checked in this order against one uniform draw, so the rates are disjoint slices
_RANDOM_FAULTS = tuple(Fault)


@dataclass(slots=True)
class SimStats:
    """Live counters, served at GET /sim/stats and shared with the in-process handle."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    max_in_window: dict[str, int] = field(default_factory=dict)  # per model, any 60 s window
    max_tokens_in_window: dict[str, int] = field(default_factory=dict)
    tokens_total: int = 0
    count_429: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=ARRIVALS_KEPT))

    def reset(self) -> None:
        """Zero in place: callers hold a reference to this very object."""
        fresh = SimStats()
        for name in self.__slots__:
            if name != "in_flight":  # requests still being served will decrement it
                setattr(self, name, getattr(fresh, name))
        self.max_in_flight = self.in_flight

    def count_status(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status == 429:
            self.count_429 += 1

    def to_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_model": dict(self.by_model),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_in_window": dict(self.max_in_window),
            "max_tokens_in_window": dict(self.max_tokens_in_window),
            "tokens_total": self.tokens_total,
            "count_429": self.count_429,
            "faults": dict(self.faults),
            "arrivals": list(self.arrivals),
        }


@dataclass(slots=True)
class FaultState:
    """Per-server fault counters and the fault RNG."""

    seed: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    arrivals: int = 0  # counted after auth, for fail_first
    successes: int = 0  # successful answers, for quota_after
    null_usage_flips: int = 0

    def reset(self, seed: int) -> None:
        self.seed, self.rng = seed, random.Random(seed)
        self.arrivals = self.successes = self.null_usage_flips = 0

    def draw(self, options: SimOptions) -> tuple[float, float]:
        """Two uniforms for this arrival: which fault, and which 5xx status."""
        if options.seed != self.seed:  # the seed was changed at runtime: restart the sequence
            self.seed, self.rng = options.seed, random.Random(options.seed)
        return self.rng.random(), self.rng.random()

    def pick(self, options: SimOptions, u: float, u_status: float) -> tuple[Fault | None, int]:
        """The random fault for this arrival (or None) and the 5xx status it would use."""
        edge = 0.0
        for fault in _RANDOM_FAULTS:
            edge += getattr(options, fault.value)
            if u < edge:
                status = options.status_5xx or _5XX[int(u_status * len(_5XX))]
                return fault, status
        return None, 0


@dataclass(slots=True)
class _Window:
    times: deque[float] = field(default_factory=deque)
    tokens: deque[int] = field(default_factory=deque)
    token_sum: int = 0

    def expire(self, now: float) -> None:
        horizon = now - WINDOW_S
        times, tokens = self.times, self.tokens
        while times and times[0] <= horizon:
            times.popleft()
            self.token_sum -= tokens.popleft()


class RateWindows:
    """Requests and tokens accepted per model over the last 60 s (always tracked for stats)."""

    __slots__ = ("_by_model",)

    def __init__(self) -> None:
        self._by_model: dict[str, _Window] = {}

    def reset(self) -> None:
        self._by_model.clear()

    def retry_after(self, model: str, now: float, tokens: int, options: SimOptions) -> int | None:
        """Seconds (rounded up) until this request would fit, or None if it fits now."""
        w = self._by_model.get(model)
        if w is None:
            return None
        w.expire(now)
        waits: list[float] = []
        if options.rpm_limit is not None and len(w.times) >= options.rpm_limit:
            waits.append(w.times[len(w.times) - options.rpm_limit] + WINDOW_S - now)
        if options.tpm_limit is not None and w.times and w.token_sum + tokens > options.tpm_limit:
            # an empty window admits even an oversized request, or it could never pass
            freed, need = 0, w.token_sum + tokens - options.tpm_limit
            for t, n in zip(w.times, w.tokens):
                freed += n
                if freed >= need:
                    waits.append(t + WINDOW_S - now)
                    break
            else:  # too big even for an empty window: wait until it is empty
                waits.append(w.times[-1] + WINDOW_S - now)
        if not waits:
            return None
        return max(1, math.ceil(max(waits)))

    def admit(self, model: str, now: float, tokens: int) -> tuple[int, int]:
        """Record an accepted request; returns (requests, tokens) now in its window."""
        w = self._by_model.get(model)
        if w is None:
            w = self._by_model[model] = _Window()
        else:
            w.expire(now)
        w.times.append(now)
        w.tokens.append(tokens)
        w.token_sum += tokens
        return len(w.times), w.token_sum
