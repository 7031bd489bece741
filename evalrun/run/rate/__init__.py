"""Rate control: pacing, x-ratelimit-* headers, the adaptive rate, the Redis-shared limiter."""
