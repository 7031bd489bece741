"""A provider's concurrency slots: a semaphore whose retries go ahead of new requests.

What is on the wire is bounded by `max_concurrency`; which waiter gets a freed slot first is a
policy: a request being retried was started earlier and holds a spec, a budget reservation and
maybe a partial answer, so finishing it first keeps fewer requests open (and, at concurrency 1,
keeps a request's attempts together, as a serial client would).
"""

from __future__ import annotations

import asyncio
import collections


class Slots:
    """`await acquire(retry)` / `release()`; FIFO within each of the two classes."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiters: tuple[collections.deque[asyncio.Future[None]], collections.deque[asyncio.Future[None]]] = (
            collections.deque(),  # retries
            collections.deque(),  # first attempts
        )

    def try_acquire(self) -> bool:
        if self.free > 0 and not self._waiters[0] and not self._waiters[1]:
            self.free -= 1
            return True
        return False

    async def acquire(self, retry: bool = False) -> None:
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiters[0 if retry else 1]
        queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted and cancelled in the same step: pass the slot on
            else:
                queue.remove(fut)
            raise

    def release(self) -> None:
        for queue in self._waiters:
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)  # the slot passes straight to this waiter
                    return
        self.free += 1
