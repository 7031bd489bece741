"""The worker pool: lanes of lazy RequestSpec streams → exactly one Result per request sent.

Scheduling is per provider × model (a *lane*). Each lane pulls from its own lazy iterator over
its cells (memory stays flat however large the grid: a worker holds one spec); the lanes of one
provider share its `max_concurrency` slots (what is on the wire). A worker takes its rate slot
before a concurrency slot (see `attempts.py`), so a slow, rate-limited or Retry-After-blocked
lane never holds a slot, a queue or a producer that another lane needs — there is no shared
producer to block.

A lane's *crew* keeps `awake_for(slots)` workers awake: enough to fill the slots and have the
next requests ready. A worker whose request falls asleep between retries hands its place to a
new worker, so sleepers never starve the slots (at 0 ms latency and 30 % sporadic 429s with
Retry-After 1 s, hundreds of requests sleep at once); when a sleeper wakes, the crew is over
strength, and the first worker to finish a request leaves. Sleepers are bounded per lane
(MAX_ASLEEP): beyond that a sleeping worker is not replaced, which bounds memory whatever the
grid size.

`run()` returns why it stopped (a `PoolOutcome`). Stops go through `Stops`: every wait is
interrupted at once, requests on the wire finish and are recorded; a request interrupted by a
stop gets no row. A failure never escapes a worker: it becomes an error Result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from evalrun.run.http.errors import StorageError
from evalrun.run.records.records import Result
from evalrun.run.send.attempts import Attempts, Lane, not_sent
from evalrun.run.send.stops import PoolOutcome, Stops

logger = logging.getLogger(__name__)

MAX_ASLEEP = 10_000  # requests asleep between retries per lane, each with a replacement worker


def awake_for(slots: int) -> int:
    """Workers kept awake per lane: one per slot on the wire, as many ready behind them."""
    return 2 * slots + 16


class _Crew:
    """The workers of one lane, kept at strength while some of them sleep between retries."""

    def __init__(self, pool: Pool, lane: Lane) -> None:
        self.pool = pool
        self.lane = lane
        self.awake_target = awake_for(lane.workers)
        self.tasks: set[asyncio.Task[None]] = set()
        self.asleep = 0
        self.exhausted = False  # the lane's iterator is empty

    def hire(self) -> None:
        task = asyncio.create_task(self.pool._worker(self))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def park(self) -> None:
        """A worker's request falls asleep until its next attempt: another one takes its place."""
        self.asleep += 1
        if not self.exhausted and self.asleep <= MAX_ASLEEP:
            self.hire()

    def unpark(self) -> None:
        self.asleep -= 1

    def over_strength(self) -> bool:
        return len(self.tasks) - self.asleep > self.awake_target


class Pool:
    def __init__(self, lanes: Sequence[Lane], attempts: Attempts, on_result: Callable[[Result], None]) -> None:
        self.lanes = lanes
        self.attempts = attempts
        self.stops: Stops = attempts.stops
        self.on_result = on_result

    @property
    def in_flight(self) -> int:
        """Requests on the wire right now (not those waiting on a limiter or between retries)."""
        return self.attempts.in_flight

    def request_stop(self, reason: str, interrupted: bool = True) -> None:
        """Ctrl-C (or SIGTERM): stop sending; waits end now, requests on the wire finish."""
        self.stops.stop_run(reason, interrupted)

    async def run(self) -> PoolOutcome:
        crews = [_Crew(self, lane) for lane in self.lanes]
        for crew in crews:
            for _ in range(crew.awake_target):
                crew.hire()
        try:
            while pending := [t for c in crews for t in c.tasks]:  # crews hire while they run
                await asyncio.wait(pending)
        except asyncio.CancelledError:
            # the second Ctrl-C: abandon requests on the wire (their rows are simply not written)
            tasks = [t for c in crews for t in c.tasks]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return self.stops.outcome()

    async def _worker(self, crew: _Crew) -> None:
        try:
            await self._work(crew)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug here must stop the run, not hang it
            logger.exception("worker for %s/%s failed", crew.lane.provider, crew.lane.model)
            self.stops.stop_run(f"internal error in a worker ({type(exc).__name__}: {exc})")

    async def _work(self, crew: _Crew) -> None:
        stops, lane = self.stops, crew.lane
        while not stops.halted(lane.provider) and not crew.over_strength():
            spec = next(lane.specs, None)  # the iterator is shared by the lane's workers
            if spec is None:
                crew.exhausted = True
                return
            dead = stops.dead_models.get((lane.provider, spec.cell.model))
            if dead is not None:
                self._record(not_sent(spec, dead))
                continue
            try:
                result = await self.attempts.run(spec, lane, crew)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must cost one row, not the run
                if stops.halted(lane.provider):
                    return  # stopping anyway; the request was not answered: no row
                logger.exception("internal error on request %s", spec.request_id)
                result = Result(
                    spec,
                    time.time(),
                    None,
                    0,
                    None,
                    error_type="internal_error",
                    error_message=f"{type(exc).__name__}: {exc}",
                )
            if result is not None:
                self._record(result)
            # recorded (journal, sink): the answer, ≈ 1 MB of logprobs at 2,000 tokens, is not kept
            # alive by this worker while it waits for its next request (issue 23)
            result = None

    def _record(self, result: Result) -> None:
        """Hand a result to the journal. If that fails, nothing more can be kept: stop."""
        try:
            self.on_result(result)
        except StorageError as exc:  # disk full: stop with its one line, not a traceback per request
            self.stops.stop_run(str(exc))
        except Exception as exc:
            logger.exception("could not record request %s", result.spec.request_id)
            self.stops.stop_run(f"internal error while recording a result ({type(exc).__name__}: {exc})")
