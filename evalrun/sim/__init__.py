"""evalrun's embedded OpenAI-compatible simulator: deterministic answers, real HTTP, fault knobs.

handle = await start_simulator(SimOptions(latency_scale=0))
...  # talk to handle.base_url ("http://127.0.0.1:PORT/v1")
await handle.close()
"""

from evalrun.sim.app import SimulatorHandle, serve_forever, start_simulator
from evalrun.sim.faults import SimStats
from evalrun.sim.options import SimOptions, add_sim_arguments, options_from_args
from evalrun.sim.wire import KNOWN_MODELS

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
