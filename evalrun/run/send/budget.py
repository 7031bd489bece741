"""The cost budget of a run (--max-cost, budget.max_cost): spend most of it, never more.

A request waiting for room is judged at its *ceiling*, what it is expected to cost plus a margin:

    ceiling  = expected + margin
    expected = its prompt at the input price (the grid's token estimate)
             + what the answers of its kind cost beyond their prompt, on average
    margin   = up to the dearest such answer seen (the spread observed so far)
             + (worst case − dearest) / (answers seen + 1)

A kind is a model at one output budget (max_tokens × n): a judge's answers and those of the
model it grades differ. Before a kind has answered once, its ceiling is its worst case (the
prompt and every output token of max_tokens). The last term is what is still unseen: after n
answers the next is the dearest of all with chance 1 / (n + 1), and it costs at most the worst
case.

It goes when what is spent, plus the worst case of every request already in flight, plus its own
ceiling fit the budget. When it does not fit but requests are in flight, it waits (holding no
slot) until one settles, and asks again; only when it does not fit with nothing in flight does
the run stop: less than one ceiling short of the budget, not one worst case (a quickstart
request may generate 2,048 tokens and typically generates 100).

Why that bound holds: when a request goes, everything else in flight is counted at its worst
case, so only the newest request can cost more than was allowed for, and only by its excess
over its ceiling. The spend passes the budget only if the last request sent costs more than any
answer of its kind so far, beyond the margin; a kind that has shown a max_tokens answer has its
worst case as ceiling, and cannot. The price of the bound is concurrency near a small budget:
while one dear request is out, others wait. (Ceilings for all in flight, tried first, let cheap
answers settle first and free their room while the dear ones were still out: a server that
answers max_tokens one time in seven took such runs 2–9 % past their budget.)

Requests waiting for room are served in turn, cell by cell: the next one is of the cell given
room the fewest times (then first come, first served). So a run that its budget stops has
answers in every cell, and a dear model's first request (at its worst case) is not overtaken for
ever by cheap ones taking every bit of room that frees up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from evalrun.config.prices import Pricing


@dataclass
class _Kind:
    """What the answers of one kind cost beyond their prompt estimate."""

    answers: int = 0
    total: float = 0.0
    dearest: float = 0.0


@dataclass(frozen=True, slots=True)
class _Hold:
    """What one request in flight holds."""

    kind: tuple[str, int]
    prompt_cost: float
    expected: float
    ceiling: float
    worst: float


class CostBudget:
    """The spend, the requests in flight and what the answers cost so far, per kind."""

    def __init__(self, limit: float, pricing: Pricing, spent: float = 0.0) -> None:
        self.limit = limit
        self.pricing = pricing
        self.spent = spent
        self._held: dict[str, _Hold] = {}
        self._kinds: dict[tuple[str, int], _Kind] = {}
        self._waiting: dict[str, tuple[str, int]] = {}  # request id → (cell, arrival): waiting for room
        self._given: dict[str, int] = {}  # cell → requests given room
        self._next: str | None = None  # the waiting request whose turn it is
        self._seq = 0
        self._changed = asyncio.Event()  # set (and replaced) when room may have freed up

    @property
    def reserved(self) -> float:
        """What the requests in flight hold: each its worst case (see the module's docstring)."""
        return sum(max(h.ceiling, h.worst) for h in self._held.values())

    def _hold(self, model: str, prompt_tokens: int, max_output: int) -> _Hold:
        kind = (model, max_output)
        prompt_cost = self.pricing.cost(model, {"prompt_tokens": prompt_tokens, "completion_tokens": 0})["cost_total"]
        worst = self.pricing.worst_case(model, prompt_tokens, max_output) or 0.0
        seen = self._kinds.get(kind)
        if seen is None or not seen.answers or prompt_cost is None:
            return _Hold(kind, prompt_cost or 0.0, worst, worst, worst)
        expected = max(0.0, prompt_cost + seen.total / seen.answers)
        unseen = max(0.0, worst - prompt_cost - seen.dearest) / (seen.answers + 1)
        ceiling = max(expected, prompt_cost + seen.dearest + unseen)
        return _Hold(kind, prompt_cost, expected, min(ceiling, max(worst, prompt_cost + seen.dearest)), worst)

    def _fits(self, hold: _Hold) -> bool | None:
        """True: it fits now; None: not now (requests are in flight); False: never (nothing is)."""
        if self.spent + self.reserved + hold.ceiling <= self.limit:
            return True
        return None if self._held else False

    async def hold(self, request_id: str, cell: str, model: str, prompt_tokens: int, max_output: int) -> bool:
        """Hold a request's ceiling, waiting in turn for room; False when it can never fit."""
        if not self._waiting and self._fits(self._hold(model, prompt_tokens, max_output)):
            return self._take(request_id, cell, self._hold(model, prompt_tokens, max_output))
        self._seq += 1
        self._waiting[request_id] = (cell, self._seq)
        self._next = self._choose()
        try:
            while True:
                if self._next == request_id:
                    hold = self._hold(model, prompt_tokens, max_output)
                    verdict = self._fits(hold)
                    if verdict is not None:
                        return verdict and self._take(request_id, cell, hold)
                await self._changed.wait()
        finally:
            del self._waiting[request_id]
            self._next = self._choose()
            self._notify()  # the next in turn looks

    def _take(self, request_id: str, cell: str, hold: _Hold) -> bool:
        self._held[request_id] = hold
        self._given[cell] = self._given.get(cell, 0) + 1
        return True

    def _choose(self) -> str | None:
        """The waiting request whose turn it is: of the cell given room the fewest times, then the first."""
        if not self._waiting:
            return None
        return min(self._waiting, key=lambda r: (self._given.get(self._waiting[r][0], 0), self._waiting[r][1]))

    def settle(self, request_id: str, cost: float | None) -> None:
        """A request's cost is known: spent, and learnt (what its kind's answers cost)."""
        hold = self._held.get(request_id)
        if hold is not None and cost is not None:
            kind = self._kinds.setdefault(hold.kind, _Kind())
            beyond = cost - hold.prompt_cost
            kind.dearest = beyond if not kind.answers else max(kind.dearest, beyond)
            kind.answers += 1
            kind.total += beyond
        self.release(request_id)
        self.spent += cost or 0.0

    def release(self, request_id: str) -> None:
        """A request in flight will not be recorded (a stop cut it short): it holds nothing."""
        if self._held.pop(request_id, None) is not None:
            self._notify()

    def _notify(self) -> None:
        """Wake the requests waiting for room (each waits on the event current when it began)."""
        if self._waiting:
            self._changed.set()
            self._changed = asyncio.Event()

    @property
    def reason(self) -> str:
        return (
            f"budget: --max-cost {self.limit:g} {self.pricing.currency} reached (spent {self.spent:.4f}; "
            "the next request might cost more than is left)"
        )
