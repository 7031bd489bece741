"""The worker pool: lanes of lazy RequestSpec streams → exactly one Result per request sent.

Scheduling is per provider × model (a *lane*). Each lane pulls from its own lazy iterator over
its cells (memory stays flat however large the grid: a worker holds one spec), and runs a
bounded number of workers (`workers_for`: one per slot of its provider's `max_concurrency`,
plus spares for requests asleep between retries); the lanes of one provider share that many
concurrency slots (a semaphore: what is on the wire). A worker takes its rate slot before a concurrency slot (see `attempts.py`),
so a slow, rate-limited or Retry-After-blocked lane never holds a slot, a queue or a producer
that another lane needs — there is no shared producer to block.

`run()` returns why it stopped (a `PoolOutcome`). Stops go through `Stops`: every wait is
interrupted at once, requests on the wire finish and are recorded; a request interrupted by a
stop gets no row. A failure never escapes a worker: it becomes an error Result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from evalrun.run.attempts import Attempts, Lane, not_sent
from evalrun.run.records import Result
from evalrun.run.stops import PoolOutcome, Stops

logger = logging.getLogger(__name__)

# Spare workers per lane, beyond one per concurrency slot. A worker sleeping between retries
# holds no slot, so spares keep the slots busy meanwhile: at 0 ms latency with 30 % sporadic
# 429s (Retry-After 1 s), 16 slots doing ~800 requests a second have ~240 workers asleep.
# Each holds one spec, so memory stays flat in the grid size.
SPARE_PER_SLOT, SPARE_MIN = 3, 256


def workers_for(slots: int) -> int:
    return slots + max(SPARE_PER_SLOT * slots, SPARE_MIN)


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
        workers = [
            asyncio.create_task(self._worker(lane), name=f"worker-{lane.provider}-{lane.model}-{i}")
            for lane in self.lanes
            for i in range(workers_for(lane.workers))
        ]
        try:
            await asyncio.gather(*workers)
        except asyncio.CancelledError:
            # the second Ctrl-C: abandon requests on the wire (their rows are simply not written)
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return self.stops.outcome()

    async def _worker(self, lane: Lane) -> None:
        try:
            await self._work(lane)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug here must stop the run, not hang it
            logger.exception("worker for %s/%s failed", lane.provider, lane.model)
            self.stops.stop_run(f"internal error in a worker ({type(exc).__name__}: {exc})")

    async def _work(self, lane: Lane) -> None:
        stops = self.stops
        while not stops.halted(lane.provider):
            spec = next(lane.specs, None)  # the iterator is shared by the lane's workers
            if spec is None:
                return
            dead = stops.dead_models.get((lane.provider, spec.cell.model))
            if dead is not None:
                self._record(not_sent(spec, dead))
                continue
            try:
                result = await self.attempts.run(spec, lane)
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

    def _record(self, result: Result) -> None:
        """Hand a result to the journal. If that fails, nothing more can be kept: stop."""
        try:
            self.on_result(result)
        except Exception as exc:
            logger.exception("could not record request %s", result.spec.request_id)
            self.stops.stop_run(f"internal error while recording a result ({type(exc).__name__}: {exc})")
