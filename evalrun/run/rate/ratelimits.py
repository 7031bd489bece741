"""What a server says about its rate limits: the `x-ratelimit-*` and `retry-after-ms` headers.

The OpenAI shape, which most compatible gateways copy:

    x-ratelimit-limit-requests: 600        requests per minute allowed
    x-ratelimit-remaining-requests: 0      left in the current window
    x-ratelimit-reset-requests: 1s         until the window frees ("6m0s", "20ms", "1h2m3.5s")
    x-ratelimit-{limit,remaining,reset}-tokens   the same for tokens
    retry-after-ms: 1500                   a finer Retry-After
    retry-after: 2 (or an HTTP date)       the standard one, on a 429 or 503

`limiter.py` decides what they mean for the pace.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """What a response said about the server's limits (any field the server left out is None)."""

    limit_requests: int | None = None  # per minute
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None  # per minute
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    retry_after_ms: float | None = None  # in seconds, from retry-after-ms

    @property
    def window_full(self) -> bool:
        return self.remaining_requests == 0 or self.remaining_tokens == 0

    @property
    def window_open(self) -> bool:
        """The server says it still had room: a 429 with this is not about our rate."""
        return bool(self.remaining_requests) and self.remaining_tokens != 0

    def reset_s(self) -> float | None:
        """When the exhausted window frees, if the server said."""
        waits = [
            w
            for w, left in (
                (self.reset_requests_s, self.remaining_requests),
                (self.reset_tokens_s, self.remaining_tokens),
            )
            if w is not None and left == 0
        ]
        return max(waits) if waits else None


_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "retry-after-ms",
)
_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | None) -> float | None:
    """`x-ratelimit-reset-*`: "1s", "6m0s", "20ms", "1h2m3.5s" or bare seconds; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
            return None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    return seconds if 0 <= seconds < float("inf") else None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(float(value))
    except (ValueError, OverflowError):
        return None
    return n if n >= 0 else None


def parse_rate_headers(headers: Mapping[str, str]) -> RateHeaders | None:
    """The rate-limit headers of a response; None when it sent none (the common, cheap case).
    `headers` must look names up case-insensitively (aiohttp's do)."""
    values = [headers.get(h) for h in _HEADERS]
    if not any(v is not None for v in values):
        return None
    lr, rr, sr, lt, rt, st, ms = values
    ra_ms = _int(ms)
    return RateHeaders(
        _int(lr),
        _int(rr),
        parse_duration(sr),
        _int(lt),
        _int(rt),
        parse_duration(st),
        ra_ms / 1000.0 if ra_ms is not None else None,
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    if math.isnan(seconds) or seconds < 0:
        return None
    return seconds  # may be inf: the caller caps it
