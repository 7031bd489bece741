"""The simulator's lifecycle: the aiohttp application, start in-process, serve standalone."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine

from aiohttp import web

from evalrun.sim.faults import SimStats
from evalrun.sim.options import SimOptions
from evalrun.sim.server import MAX_BODY, SHUTDOWN_S, Simulator

__all__ = ["SimulatorHandle", "serve_forever", "start_simulator"]

logger = logging.getLogger(__name__)


class SimulatorHandle:
    """A running simulator in the current event loop."""

    def __init__(self, sim: Simulator, runner: web.AppRunner, host: str, port: int) -> None:
        self._sim = sim
        self._runner = runner
        self.port = port
        self.base_url = f"http://{host}:{port}/v1"

    @property
    def options(self) -> SimOptions:
        return self._sim.options

    @options.setter
    def options(self, value: SimOptions) -> None:
        self._sim.options = value

    @property
    def stats(self) -> SimStats:
        return self._sim.stats

    def reset(self) -> None:
        """Same as POST /sim/reset."""
        self._sim.reset_state()

    async def close(self) -> None:
        self._sim.closing.set()  # releases hung requests at once
        await self._runner.cleanup()

    async def __aenter__(self) -> SimulatorHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _make_app(sim: Simulator) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    # Clients differ on whether base_url ends in /v1, and a caller holding only base_url
    # should reach the control routes too: everything answers with and without /v1.
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", sim.chat)
        app.router.add_get(f"{prefix}/models", sim.models)
        app.router.add_get(f"{prefix}/sim/stats", sim.get_stats)
        app.router.add_post(f"{prefix}/sim/reset", sim.reset)
        app.router.add_get(f"{prefix}/sim/options", sim.get_options)
        app.router.add_post(f"{prefix}/sim/options", sim.set_options)
    return app


async def start_simulator(options: SimOptions | None = None, host: str = "127.0.0.1", port: int = 0) -> SimulatorHandle:
    """Serve in the running event loop; port 0 picks a free port (see handle.port)."""
    sim = Simulator(options if options is not None else SimOptions())
    # handler_cancellation: a client that gives up on a hung request frees its handler
    runner = web.AppRunner(_make_app(sim), access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    logger.debug("simulator listening on %s:%s", host, bound)
    return SimulatorHandle(sim, runner, host, bound)


def serve_forever(options: SimOptions, host: str = "127.0.0.1", port: int = 8089) -> None:
    """Block serving until SIGINT/SIGTERM (for `evalrun serve-sim`)."""

    async def main() -> None:
        handle = await start_simulator(options, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
                pass
        # The one line a user (or a benchmark script) waits for before sending traffic.
        print(f"evalrun simulator listening on {handle.base_url}", flush=True)
        try:
            await stop.wait()
        finally:
            await handle.close()

    run: Callable[[Coroutine[object, object, None]], None]
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(main())
    except KeyboardInterrupt:
        pass
