"""One rate budget for many processes: the limiter's state in Redis (`limiter: redis://HOST:PORT/DB`).

Every evalrun process on the same endpoint host × API key × model books its sends in one Redis
hash, so K processes (shards, `--workers`, machines) together keep one rpm/tpm. The pacing is
the local limiter's (see `limiter.py`) — wait your turn, never reject — with its state moved:

* `book` (a Lua script, atomic, on Redis's own clock `TIME`): the next request may go at
  max(last send + 1/rate, next token slot, blocked-until); if that moment has come it is booked
  (last send = now, token slot advanced by the request's estimated tokens) and the caller sends
  at once; otherwise the caller learns how long to sleep and asks again. Nothing is booked ahead,
  so a block or a decrease applies at once to every waiter of every process — as locally. Within
  a process only the head of a FIFO queue asks Redis, so Redis sees ~one call per send and waiter.
* `settle` corrects the token slot from the real usage (HINCRBYFLOAT), as the local limiter does.
* `block` (a full server window, from headers or a run of 429s) sets blocked-until for everyone.
* `adapt`: the learnt rate across processes, with the local rules of `adaptive.py`. The process
  that hears a window-full 429 (or ends a clean episode) decides the new rate and ceiling from
  its own ledger — its accepted rate times the processes sharing the budget — and sets them for
  everyone; on Redis's clock, a decrease opens an episode within which other processes' decreases
  are refused, and an increase is refused before the next one is due.

Keys are `evalrun:rl:<hash>` of the endpoint host, a keyed hash of the API key (never the key,
never reversible) and the model; they expire an hour after the last send.

When Redis goes away mid-run (a refused connection, a timeout), the limiter never bursts: it
falls back, for the rest of the run, to pacing locally at 1/P of the budget, where P is the
largest number of processes that shared it (seen in Redis over the last PEER_TTL_S, and at least
the N of `--shard I/N` or the K of `--workers K`), starting one interval after the fallback. It
logs one warning saying so. Redis unreachable at the start is a usage error (exit 2) before
anything is sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
from collections.abc import Coroutine, Mapping
from typing import Any
from urllib.parse import urlsplit

from evalrun.errors import ConfigError
from evalrun.run.rate.limiter import MONOTONIC, SPACING_MARGIN, Clock, Limiters, ModelLimiter
from evalrun.run.rate.redis_scripts import ADAPT_LUA, BLOCK, BOOK

logger = logging.getLogger(__name__)

KEY_TTL_S = 3600  # state of a budget nobody used for an hour is dropped
PEER_TTL_S = 30.0  # a process that booked within this long counts as sharing the budget
REDIS_TIMEOUT_S = 2.0  # a Redis slower than this counts as gone
MAX_POLL_S = 1.0  # a waiter asks again at least this often (a block may have been lifted early)
# The key fingerprint's hash key: the same for every process that must share a budget. Set
# EVALRUN_LIMITER_SECRET to make fingerprints unguessable even for low-entropy keys.
FINGERPRINT_KEY = b"evalrun-limiter-v1"


def key_fingerprint(api_key: str | None) -> str:
    """A keyed hash of the API key: equal keys share a budget; the key cannot be read back."""
    secret = os.environ.get("EVALRUN_LIMITER_SECRET", "").encode() or FINGERPRINT_KEY
    return hashlib.blake2b((api_key or "").encode(), key=secret[:64], digest_size=16).hexdigest()


def budget_key(base_url: str, api_key: str | None, model: str) -> str:
    """The Redis key of one budget: endpoint host × key fingerprint × model, all hashed."""
    host = (urlsplit(base_url).hostname or base_url).lower()
    digest = hashlib.blake2b(f"{host}|{key_fingerprint(api_key)}|{model}".encode(), digest_size=16).hexdigest()
    return f"evalrun:rl:{digest}"


def _client(url: str) -> Any:
    import redis.asyncio

    return redis.asyncio.from_url(
        url,
        password=os.environ.get("REDIS_PASSWORD") or None,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
    )


def check_reachable(urls: Mapping[str, str]) -> None:
    """provider → limiter URL; a ConfigError (exit 2, nothing sent) when one is not reachable."""
    try:
        import redis
    except ImportError:
        raise ConfigError("limiter: redis://… needs the redis package: pip install 'evalrun[shared]'") from None
    for provider, url in sorted(urls.items()):
        client = redis.Redis.from_url(
            url, password=os.environ.get("REDIS_PASSWORD") or None, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            raise ConfigError(
                f"providers.{provider}.limiter: cannot reach {url} ({type(exc).__name__}: {exc}); "
                "start Redis there, or drop limiter: to pace this process alone"
            ) from None
        finally:
            client.close()


class SharedLimiter(ModelLimiter):
    """A ModelLimiter whose pacing, blocks and adaptive rate live in Redis (see the module doc)."""

    def __init__(
        self,
        name: str,
        rpm: int | None,
        tpm: int | None,
        client: Any,
        key: str,
        url: str,
        min_peers: int = 1,
        clock: Clock = MONOTONIC,
        block_cap_s: float = 120.0,
    ) -> None:
        super().__init__(name, rpm, tpm, clock, block_cap_s)
        self.client, self.key, self.url = client, key, url
        self.peers_key = key + ":peers"
        self.peers = max(1, min_peers)  # the most processes seen sharing this budget
        self.me = secrets.token_hex(8)
        self.fallen_back: str | None = None  # why Redis was given up, once it was
        self._tasks: set[asyncio.Task[Any]] = set()
        self._scripts: dict[str, Any] = {}

    # ---- the pace: asked of Redis --------------------------------------------------------------

    def _intervals(self) -> tuple[float, float]:
        """Seconds per request and per token from rpm/tpm and the server's headers (0: unpaced);
        the adaptive rate is Redis's."""
        req = [r / 60.0 for r in (self.rpm, self.header_rpm) if r]
        tok = [r / 60.0 for r in (self.tpm, self.header_tpm) if r]
        return (SPACING_MARGIN / min(req) if req else 0.0), (SPACING_MARGIN / min(tok) if tok else 0.0)

    def request_rate(self) -> float | None:
        rate = super().request_rate()
        if self.fallen_back is not None and rate is not None:
            return rate / self.peers  # header limits and the learnt rate are the whole budget's
        return rate

    def token_rate(self) -> float | None:
        rate = super().token_rate()
        if self.fallen_back is not None and rate is not None:
            return rate / self.peers
        return rate

    def try_acquire(self, est_tokens: int) -> bool:
        if self.fallen_back is not None:
            return super().try_acquire(est_tokens)
        return False  # every slot is booked in Redis: the async path

    async def acquire(self, est_tokens: int) -> float:
        if self.fallen_back is not None:
            return await super().acquire(est_tokens)
        t0 = self.clock.now()
        self.waiting += 1
        try:
            async with self._queue:
                while self.fallen_back is None:
                    try:
                        booked, wait = await self._book(est_tokens)
                    except Exception as exc:  # any Redis failure: the local share
                        self._fall_back(exc)
                        break
                    if booked:
                        return self.clock.now() - t0
                    await self.clock.sleep(min(wait, MAX_POLL_S))
        finally:
            self.waiting -= 1
        return self.clock.now() - t0 + await super().acquire(est_tokens)

    async def _book(self, est_tokens: int) -> tuple[bool, float]:
        interval, tok_per = self._intervals()
        reply = await self._run(
            "book",
            BOOK,
            [self.key, self.peers_key],
            [interval, tok_per, est_tokens, self.me, PEER_TTL_S, SPACING_MARGIN, KEY_TTL_S],
        )
        booked, wait, blocked, adaptive, peers, ceiling = (
            int(reply[0]),
            float(reply[1]),
            float(reply[2]),
            reply[3],
            int(reply[4]),
            reply[5],
        )
        now = self.clock.now()
        self.blocked_until = now + blocked if blocked > 0 else min(self.blocked_until, now)
        if adaptive not in (b"", ""):  # the learnt rate, as whichever process last changed it set it
            self.adaptive = float(adaptive)
            self.ceiling = float(ceiling) if ceiling not in (b"", "") else self.adaptive
        self.peers = max(self.peers, peers)
        self.aimd.scale = self.peers  # this process's accepted rate is 1/peers of the budget's
        return bool(booked), wait

    async def _run(self, name: str, source: str, keys: list[str], args: list[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(source)
        return await asyncio.wait_for(script(keys=keys, args=args), REDIS_TIMEOUT_S)

    def _fall_back(self, exc: BaseException) -> None:
        """Redis is gone: pace locally at 1/peers of the budget from one interval from now."""
        if self.fallen_back is not None:
            return
        self.fallen_back = f"{type(exc).__name__}: {exc}"
        now = self.clock.now()
        self._last_request = now  # the next send one local interval from now: no burst
        self._next_token = max(self._next_token, now)
        logger.warning(
            "shared limiter %s unreachable (%s): %s now paces alone at 1/%d of the budget for the rest of this run",
            self.url,
            self.fallen_back,
            self.name,
            self.peers,
        )

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """An update the caller need not wait for (the callers are synchronous)."""
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (a unit test calling synchronously): nothing to tell Redis
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._fall_back(task.exception())  # type: ignore[arg-type]

    # ---- what the server said: told to every process -------------------------------------------

    def settle(self, est_tokens: int, actual_tokens: int | None) -> None:
        if self.fallen_back is not None:
            return super().settle(est_tokens, actual_tokens)
        _, tok_per = self._intervals()
        if tok_per and actual_tokens is not None and actual_tokens != est_tokens:
            delta = (actual_tokens - est_tokens) * tok_per
            self._background(asyncio.wait_for(self.client.hincrbyfloat(self.key, "tok", delta), REDIS_TIMEOUT_S))

    def _block(self, seconds: float) -> None:
        super()._block(seconds)
        if self.fallen_back is None:
            secs = min(seconds, self.block_cap_s)
            self._background(self._run("block", BLOCK, [self.key], [secs, KEY_TTL_S]))

    def _adapted(self, decreased: bool) -> None:
        if self.fallen_back is not None or self.adaptive is None or self.ceiling is None:
            return
        episode = max(0.0, self.aimd.next_increase - self.clock.now())
        args = [repr(self.adaptive), repr(self.ceiling), episode, 1 if decreased else 0, KEY_TTL_S]
        self._background(self._run("adapt", ADAPT_LUA, [self.key], args))

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class SharedLimiters(Limiters):
    """Limiters: the Redis-shared kind for providers with `limiter:`, the local kind otherwise."""

    def __init__(
        self,
        limits: dict[str, tuple[int | None, int | None]],
        shared: Mapping[str, tuple[str, str, str | None]],  # provider → (redis URL, base URL, API key)
        min_peers: int = 1,
        block_cap_s: float = 120.0,
    ) -> None:
        super().__init__(limits, block_cap_s=block_cap_s)
        self._shared = shared
        self._min_peers = min_peers
        self._clients: dict[str, Any] = {}

    def get(self, provider: str, model: str) -> ModelLimiter:
        key = (provider, model)
        if key in self._by_key or provider not in self._shared:
            return super().get(provider, model)
        url, base_url, api_key = self._shared[provider]
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = _client(url)
        rpm, tpm = self._limits.get(provider, (None, None))
        name = model if len(self._limits) <= 1 else f"{provider}/{model}"
        lim = SharedLimiter(
            name,
            rpm,
            tpm,
            client,
            budget_key(base_url, api_key, model),
            url,
            self._min_peers,
            self._clock,
            self._block_cap_s,
        )
        self._by_key[key] = lim
        return lim

    async def aclose(self) -> None:
        for lim in self._by_key.values():
            if isinstance(lim, SharedLimiter):
                await lim.aclose()
        for client in self._clients.values():
            try:
                await client.aclose()
            except Exception:  # closing a connection to a Redis that is gone
                pass


def make_limiters(
    providers: Mapping[str, Any],
    base_urls: Mapping[str, list[str]],
    keys: Mapping[str, str | None],
    rate_share: int,
    min_peers: int,
    block_cap_s: float,
) -> SharedLimiters:
    """The run's limiters. A provider with `limiter:` shares its whole budget through Redis (the
    share is then only the floor of its fallback); the others pace at 1/rate_share of theirs."""
    limits = {n: (p.rpm, p.tpm) if p.limiter else share_limits(p.rpm, p.tpm, rate_share) for n, p in providers.items()}
    shared = {n: (p.limiter, base_urls[n][0], keys.get(n)) for n, p in providers.items() if p.limiter}
    return SharedLimiters(limits, shared, max(min_peers, rate_share), block_cap_s)


def share_limits(rpm: int | None, tpm: int | None, share: int) -> tuple[int | None, int | None]:
    """A 1/share part of a budget, rounded down (K parts never add up to more than the whole)."""
    if share <= 1:
        return rpm, tpm
    return (None if rpm is None else max(1, rpm // share), None if tpm is None else max(1, tpm // share))
