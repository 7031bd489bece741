"""The grid: cells and the lazy request stream with stable ids; the dataset rows."""

from typing import TYPE_CHECKING

from evalrun.run import lazy_face

if TYPE_CHECKING:
    from evalrun.run.grid.datasets import estimate_tokens, iter_rows, render
    from evalrun.run.grid.grid import Plan, build_plan

__all__ = ["Plan", "build_plan", "estimate_tokens", "iter_rows", "render"]

if not TYPE_CHECKING:  # mypy reads the imports above; at run time each name loads on first use
    __getattr__ = lazy_face(__name__, __file__)
