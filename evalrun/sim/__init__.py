"""evalrun's embedded OpenAI-compatible simulator: deterministic answers, real HTTP, fault knobs.

handle = await start_simulator(SimOptions(latency_scale=0))
...  # talk to handle.base_url ("http://127.0.0.1:PORT/v1")
await handle.close()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evalrun.sim.app import SimulatorHandle, serve_forever, start_simulator
    from evalrun.sim.faults import SimStats
    from evalrun.sim.options import SimOptions, add_sim_arguments, options_from_args
    from evalrun.sim.wire import KNOWN_MODELS

# Loaded on first use (PEP 562): the config schema imports evalrun.sim.options for every run,
# and importing the server (aiohttp.web) with it cost every `evalrun run` ~0.1 s at start.
_WHERE = {
    "SimulatorHandle": "app",
    "serve_forever": "app",
    "start_simulator": "app",
    "SimStats": "faults",
    "SimOptions": "options",
    "add_sim_arguments": "options",
    "options_from_args": "options",
    "KNOWN_MODELS": "wire",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"evalrun.sim.{_WHERE[name]}"), name)


__all__ = [
    "KNOWN_MODELS",
    "SimOptions",
    "SimStats",
    "SimulatorHandle",
    "add_sim_arguments",
    "options_from_args",
    "serve_forever",
    "start_simulator",
]
