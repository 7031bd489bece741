"""Sending: lanes per provider × model and their workers, the one retry loop, stops, slots, the budget."""

from typing import TYPE_CHECKING

from evalrun.run import lazy_face

if TYPE_CHECKING:
    from evalrun.run.send.attempts import Admission, Attempts, Lane
    from evalrun.run.send.budget import CostBudget
    from evalrun.run.send.pool import Pool
    from evalrun.run.send.slots import Slots
    from evalrun.run.send.stops import PoolOutcome, Stops

__all__ = ["Admission", "Attempts", "CostBudget", "Lane", "Pool", "PoolOutcome", "Slots", "Stops"]

if not TYPE_CHECKING:  # mypy reads the imports above; at run time each name loads on first use
    __getattr__ = lazy_face(__name__, __file__)
