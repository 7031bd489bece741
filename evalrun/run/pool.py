"""The worker pool: a lazy stream of RequestSpecs → exactly one Result per request sent.

Per provider: a bounded queue fed from the grid iterator (memory stays flat however large the
grid) and `max_concurrency` workers. Each request passes the RPM/TPM limiter, then the client,
under a tenacity policy built from `retry.classify`. A failure never escapes a worker: it
becomes an error Result. Stops (Ctrl-C, budget, bad key, exhausted quota) end sending
promptly; requests that were not sent get no row, so `--resume` sends them later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, stop_after_attempt, stop_before_delay

from evalrun.config.models import RetryConfig
from evalrun.config.params import output_budget
from evalrun.config.prices import CostBudget
from evalrun.run.client import ProviderClient
from evalrun.run.errors import RequestError, StorageError
from evalrun.run.limiter import Limiters, ModelLimiter
from evalrun.run.records import Completion, RequestSpec, Result
from evalrun.run.retry import Action, classify, retry_wait

logger = logging.getLogger(__name__)

QUEUE_PER_WORKER = 2  # specs buffered ahead of the workers, per worker


class _Halted(Exception):
    """Raised inside an attempt when the run or its provider stopped meanwhile."""


@dataclass
class _Attempts:
    """What the attempts of one request have cost so far."""

    t0: float  # monotonic start, for max_total_s
    attempts: int = 0
    waited: float = 0.0
    latency: float | None = None
    base_url: str | None = None
    retry_types: list[str] = field(default_factory=list)


@dataclass
class StopState:
    """Why sending stopped, if it did."""

    run_reason: str | None = None  # Ctrl-C: stop sending at once
    budget_reason: str | None = None  # a budget: stop dispatching, let what is queued go
    providers: dict[str, str] = field(default_factory=dict)  # provider → why it stopped
    dead_models: dict[tuple[str, str], str] = field(default_factory=dict)


class Pool:
    def __init__(
        self,
        clients: dict[str, ProviderClient],
        concurrency: dict[str, int],
        limiters: Limiters,
        retry: RetryConfig,
        on_result: Callable[[Result], None],
        key_env: dict[str, str | None],
        max_requests: int | None = None,
        budget: CostBudget | None = None,
    ) -> None:
        self.clients = clients
        self.concurrency = concurrency
        self.limiters = limiters
        self.retry = retry
        self.on_result = on_result
        self.key_env = key_env
        self.max_requests = max_requests
        self.budget = budget
        self.stop = StopState()
        self.dispatched = 0
        self.in_flight = 0
        # Set when sending to a provider stops (the run, or that provider alone): cuts its
        # retry sleeps short. One per provider: another provider's stop must not.
        self._wake = {p: asyncio.Event() for p in clients}

    # ---- stopping ------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if self.stop.run_reason is None:
            self.stop.run_reason = reason
        for event in self._wake.values():
            event.set()

    def _halted(self, provider: str) -> bool:
        return self.stop.run_reason is not None or provider in self.stop.providers

    def _stop_provider(self, provider: str, exc: RequestError, reason: str) -> None:
        if provider in self.stop.providers:
            return
        env = self.key_env.get(provider)
        if reason == "insufficient_quota":
            why = f"credits exhausted on provider {provider!r} (HTTP {exc.status_code}): {exc}"
        else:
            key = f"the key in ${env}" if env else "the request (no API key configured)"
            why = f"provider {provider!r} rejected {key} (HTTP {exc.status_code}): {exc}"
        self.stop.providers[provider] = why
        logger.error("%s — no more requests will be sent to it", why)
        self._wake[provider].set()

    async def _sleep(self, provider: str, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake[provider].wait(), timeout=seconds)
        except TimeoutError:
            pass

    # ---- running -------------------------------------------------------------------------

    async def run(self, specs: Iterable[RequestSpec]) -> None:
        queues = {
            p: asyncio.Queue[RequestSpec | None](maxsize=c * QUEUE_PER_WORKER) for p, c in self.concurrency.items()
        }
        workers = [
            asyncio.create_task(self._worker(p, queues[p]), name=f"worker-{p}-{i}")
            for p, c in self.concurrency.items()
            for i in range(c)
        ]
        try:
            for spec in specs:
                provider = spec.cell.provider
                if self.stop.run_reason is not None:
                    break
                if provider in self.stop.providers:
                    continue  # not sent, no row: --resume sends it
                if self.max_requests is not None and self.dispatched >= self.max_requests:
                    self.stop.budget_reason = f"budget: --max-requests {self.max_requests} reached"
                    break
                if self.budget is not None and not self.budget.reserve(
                    spec.request_id, spec.cell.model, spec.est_prompt_tokens, output_budget(spec.params)
                ):
                    self.stop.budget_reason = self.budget.reason
                    break
                self.dispatched += 1
                await queues[provider].put(spec)
            for p, q in queues.items():
                for _ in range(self.concurrency[p]):
                    await q.put(None)
            await asyncio.gather(*workers)
        except asyncio.CancelledError:
            # a second Ctrl-C: abandon in-flight requests (their rows are simply not written)
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise

    async def _worker(self, provider: str, queue: asyncio.Queue[RequestSpec | None]) -> None:
        try:
            await self._work(provider, queue)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug here must not leave the producer blocked on a full queue
            logger.exception("worker for %s failed", provider)
            self.request_stop(f"internal error in a worker ({type(exc).__name__}: {exc})")
            while await queue.get() is not None:  # keep draining (unsent) until the end marker
                pass

    async def _work(self, provider: str, queue: asyncio.Queue[RequestSpec | None]) -> None:
        client = self.clients[provider]
        while True:
            spec = await queue.get()
            if spec is None:
                return
            if self._halted(provider):
                self._not_sent(spec)
                continue
            dead = self.stop.dead_models.get((provider, spec.cell.model))
            if dead is not None:
                self._record(
                    Result(
                        spec,
                        time.time(),
                        None,
                        0,
                        client.base_url,
                        http_status=404,
                        error_type="not_found",
                        error_message=f"not sent: {dead}",
                    )
                )
                continue
            self.in_flight += 1
            try:
                result = await self._execute(client, spec)
            finally:
                self.in_flight -= 1
            if result is None:
                self._not_sent(spec)
            else:
                self._record(result)

    def _not_sent(self, spec: RequestSpec) -> None:
        """A dispatched request that will not be sent: it gets no row (--resume sends it)."""
        if self.budget is not None:
            self.budget.release(spec.request_id)

    def _record(self, result: Result) -> None:
        """Hand a result to the journal. If that fails, nothing more can be kept: stop."""
        try:
            self.on_result(result)
        except StorageError as exc:  # disk full: stop with its one line, not a traceback per request
            self.request_stop(str(exc))
        except Exception as exc:
            logger.exception("could not record request %s", result.spec.request_id)
            self.request_stop(f"internal error while recording a result ({type(exc).__name__}: {exc})")

    def _retryable(self, exc: BaseException | None, attempt: int) -> bool:
        """Whether failed attempt number `attempt` is followed by another."""
        if not isinstance(exc, RequestError) or attempt >= self.retry.max_attempts:
            return False
        decision = classify(exc)
        if decision.action is not Action.RETRY:
            return False
        return decision.max_attempts is None or attempt < decision.max_attempts

    def _wait_after(self, exc: BaseException | None, attempt: int) -> float:
        decision = classify(exc) if exc is not None else classify(RequestError())
        r = self.retry
        return retry_wait(decision, attempt, r.backoff_initial_s, r.backoff_max_s, r.retry_after_max_s)

    async def _attempt(
        self, client: ProviderClient, limiter: ModelLimiter, spec: RequestSpec, est: int, st: _Attempts
    ) -> Completion:
        """One try: wait for the limiter, send, record what it cost in time. Raises on failure."""
        provider = spec.cell.provider
        if self._halted(provider):
            raise _Halted()
        st.waited += await limiter.acquire(est)
        if self._halted(provider):
            raise _Halted()
        st.attempts += 1
        st.base_url = client.base_url
        t0 = time.monotonic()
        try:
            return await client.send(spec)
        except RequestError as exc:
            self._after_failure(client, limiter, spec, exc, st.retry_types)
            raise
        finally:
            st.latency = time.monotonic() - t0

    async def _retry(
        self,
        first: RequestError,
        client: ProviderClient,
        limiter: ModelLimiter,
        spec: RequestSpec,
        est: int,
        st: _Attempts,
    ) -> Completion:
        """Attempts 2…max_attempts under the tenacity policy, starting with the wait after the
        first failure. Bounded by attempts and by max_total_s from the request's start."""
        r = self.retry
        first_wait = self._wait_after(first, 1)
        if time.monotonic() - st.t0 + first_wait > r.max_total_s:
            raise first
        provider = spec.cell.provider
        await self._sleep(provider, first_wait)
        remaining = r.max_total_s - (time.monotonic() - st.t0)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(r.max_attempts - 1) | stop_before_delay(max(0.0, remaining)),
            wait=lambda rs: self._wait_after(rs.outcome.exception() if rs.outcome else None, rs.attempt_number + 1),
            retry=lambda rs: self._retryable(rs.outcome.exception() if rs.outcome else None, rs.attempt_number + 1),
            sleep=lambda seconds: self._sleep(provider, seconds),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                completion = await self._attempt(client, limiter, spec, est, st)
        return completion

    async def _execute(self, client: ProviderClient, spec: RequestSpec) -> Result | None:
        cell = spec.cell
        limiter = self.limiters.get(cell.provider, cell.model)
        est = spec.est_prompt_tokens + output_budget(spec.params)
        started = time.time()
        st = _Attempts(t0=time.monotonic())
        try:
            try:
                # most requests succeed at once: no retry machinery on that path
                completion = await self._attempt(client, limiter, spec, est, st)
            except RequestError as exc:
                if not self._retryable(exc, 1):
                    raise
                completion = await self._retry(exc, client, limiter, spec, est, st)
            client.note_success()
            limiter.on_success()
            limiter.settle(est, completion.usage.total_tokens)
            return Result(
                spec,
                started,
                st.latency,
                st.attempts,
                st.base_url,
                completion=completion,
                limiter_wait_s=st.waited,
                retry_types=st.retry_types,
            )
        except _Halted:
            return None
        except RequestError as exc:
            # the last entry of retry_types is this final error, not a retry
            return Result(
                spec,
                started,
                st.latency,
                st.attempts,
                client.base_url,
                http_status=exc.status_code,
                error_type=exc.error_type,
                error_message=str(exc),
                limiter_wait_s=st.waited,
                retry_types=st.retry_types[:-1],
                partial=exc.partial,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one row, not the run
            logger.exception("internal error on request %s", spec.request_id)
            return Result(
                spec,
                started,
                st.latency,
                st.attempts,
                client.base_url,
                error_type="internal_error",
                error_message=f"{type(exc).__name__}: {exc}",
            )

    def _after_failure(
        self,
        client: ProviderClient,
        limiter: ModelLimiter,
        spec: RequestSpec,
        exc: RequestError,
        retry_types: list[str],
    ) -> None:
        """Side effects of a failed attempt that reach beyond this request."""
        decision = classify(exc)
        retry_types.append(exc.error_type)
        if decision.rate_limited:
            cap = self.retry.retry_after_max_s
            limiter.on_rate_limited(min(decision.wait_s, cap) if decision.wait_s else None)
        if decision.counts_for_fallback:
            client.note_failure()
        if decision.action is Action.STOP_PROVIDER:
            self._stop_provider(spec.cell.provider, exc, decision.reason)
        elif decision.action is Action.FAIL_MODEL:
            self.stop.dead_models.setdefault(
                (spec.cell.provider, spec.cell.model),
                f"model {spec.cell.model!r} was not found on provider {spec.cell.provider!r} "
                f"(HTTP 404: {getattr(exc, 'message', exc)})",
            )
