"""Rate control: pacing, x-ratelimit-* headers, the adaptive rate, the Redis-shared limiter."""

from typing import TYPE_CHECKING

from evalrun.run import lazy_face

if TYPE_CHECKING:
    from evalrun.run.rate.adaptive import Send
    from evalrun.run.rate.limiter import MONOTONIC, Clock, Limiters, ModelLimiter
    from evalrun.run.rate.ratelimits import RateHeaders, parse_rate_headers, parse_retry_after
    from evalrun.run.rate.shared_limiter import check_reachable, make_limiters

__all__ = [
    "MONOTONIC",
    "Clock",
    "Limiters",
    "ModelLimiter",
    "RateHeaders",
    "Send",
    "check_reachable",
    "make_limiters",
    "parse_rate_headers",
    "parse_retry_after",
]

if not TYPE_CHECKING:  # mypy reads the imports above; at run time each name loads on first use
    __getattr__ = lazy_face(__name__, __file__)
