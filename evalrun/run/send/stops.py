"""Why sending stops, and the one path by which a stop reaches every wait.

A request is either *waiting* (for its rate slot, a concurrency slot, or between retries) or *on
the wire*. Waits are entered through `Stops.interruptible(provider)`; a stop cancels the tasks
waiting there, and the cancellation comes out of the `with` block as `Interrupted` — the request
was not answered, so it gets no row and `--resume` sends it later. Requests on the wire are left
to finish (their answers are paid for and recorded); only the second Ctrl-C cuts them off.

Who stops what:

    Ctrl-C, internal error   the whole run          stop_run
    budget                   the whole run          stop_budget (--max-requests, --max-cost)
    401/403/402, quota 429   one provider           stop_provider
    404                      one model (its lane)   dead_model — its requests get a not-sent row
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from types import TracebackType


class Interrupted(Exception):
    """A wait was cut short by a stop: the request gets no row."""


@dataclass(frozen=True, slots=True)
class PoolOutcome:
    """Why the pool's `run()` returned."""

    run_reason: str | None = None  # Ctrl-C or an internal error
    budget_reason: str | None = None
    providers: tuple[tuple[str, str], ...] = ()  # (provider, why it stopped)
    dead_models: tuple[tuple[str, str, str], ...] = ()  # (provider, model, why)
    interrupted: bool = False  # the run_reason is a Ctrl-C / SIGTERM

    @property
    def stopped(self) -> bool:
        return bool(self.run_reason or self.budget_reason or self.providers)


@dataclass
class Stops:
    """The stop state of one run, and the registry of tasks waiting (not on the wire) per provider."""

    run_reason: str | None = None
    budget_reason: str | None = None
    interrupted: bool = False
    providers: dict[str, str] = field(default_factory=dict)
    dead_models: dict[tuple[str, str], str] = field(default_factory=dict)
    _waiting: defaultdict[str, set[asyncio.Task[object]]] = field(default_factory=lambda: defaultdict(set))
    _cancelled: set[asyncio.Task[object]] = field(default_factory=set)

    def halted(self, provider: str) -> bool:
        """Whether nothing more may be sent to `provider`."""
        return self.run_reason is not None or self.budget_reason is not None or provider in self.providers

    def interruptible(self, provider: str) -> _Waiting:
        """`with stops.interruptible(p): await <a wait>` — raises Interrupted if `p` stops meanwhile
        (or had already stopped)."""
        return _Waiting(self, provider)

    def stop_run(self, reason: str, interrupted: bool = False) -> None:
        if self.run_reason is None:
            self.run_reason = reason
            self.interrupted = interrupted
        self._wake(list(self._waiting))

    def stop_budget(self, reason: str) -> None:
        if self.budget_reason is None:
            self.budget_reason = reason
        self._wake(list(self._waiting))

    def stop_provider(self, provider: str, reason: str) -> bool:
        """Stop sending to one provider; False if it had already stopped."""
        if provider in self.providers:
            return False
        self.providers[provider] = reason
        self._wake([provider])
        return True

    def _wake(self, providers: list[str]) -> None:
        for p in providers:
            for task in list(self._waiting[p]):
                if task not in self._cancelled:
                    self._cancelled.add(task)
                    task.cancel()

    def outcome(self) -> PoolOutcome:
        return PoolOutcome(
            self.run_reason,
            self.budget_reason,
            tuple(self.providers.items()),
            tuple((p, m, why) for (p, m), why in self.dead_models.items()),
            self.interrupted,
        )


class _Waiting:
    """The context manager of `Stops.interruptible` (a class: it is on every request's path)."""

    __slots__ = ("_provider", "_stops", "_task")

    def __init__(self, stops: Stops, provider: str) -> None:
        self._stops = stops
        self._provider = provider
        self._task: asyncio.Task[object] | None = None

    def __enter__(self) -> None:
        if self._stops.halted(self._provider):
            raise Interrupted
        self._task = asyncio.current_task()
        if self._task is not None:
            self._stops._waiting[self._provider].add(self._task)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        task = self._task
        if task is None:
            return
        self._stops._waiting[self._provider].discard(task)
        # A cancellation from a stop is always delivered at the await inside the block (the task
        # was suspended there when it was cancelled), so it is converted here; any other
        # cancellation (the second Ctrl-C cancels the pool) passes through untouched.
        if kind is asyncio.CancelledError and task in self._stops._cancelled:
            self._stops._cancelled.discard(task)
            task.uncancel()
            raise Interrupted from None
